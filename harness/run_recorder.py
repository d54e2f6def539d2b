"""What one scenario's stack did, on one time axis, kept for the HTML report (`harness.html_report`).

    recorder = RunRecorder.attach(stack, scenario=item.nodeid)   # right after stack.start()
    ...                                                         # the scenario runs
    await recorder.collect(stack)                               # before stack.stop()
    recorder.write(report_dir / TRACES_DIR)                     # traces/<scenario>.json

Every time is device seconds of the stack's clock. `attach` stamps console lines as they are printed
(the console keeps them without times); `collect` pulls what the stack keeps anyway: the simulators'
ledgers (Modbus transactions and the register values served), the fault log of `HilFaults` and of the
fault proxies, the device's event stream (uploads, OTA progress, boots and power cuts), the cloud's
uploads and packets (sizes and compression ratios) and the device's power meter (energy per state).
Anything else can be fed by hand with the `record_*` methods; the trace is plain JSON (`to_json`,
`load`), so a recorder in another process can write one too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import DocumentError, RegisterError
from protocol.registers import by_address

SCHEMA = "ecowatt-hil/run-trace/1"
TRACES_DIR = "traces"
# Lanes of a DUT's timeline, top to bottom.
LANES = ("serial", "modbus", "http", "fault", "power", "ota")
STATUSES = ("ok", "warn", "error")
CONSOLE_POLL_S = 0.25  # real seconds between looks at a console fed from another process or a port
REGISTER_SAMPLE_S = 60.0  # one register point per DUT per minute of device time is plenty for a plot


@dataclass(frozen=True)
class TimelineEvent:
    t: float  # device seconds
    lane: str
    dut: str | None  # None: the whole stack (a cloud fault)
    label: str
    status: str = "ok"
    detail: str = ""
    end: float | None = None  # a span (a toxic active for a while), else a point


@dataclass(frozen=True)
class RegisterPoint:
    dut: str
    t: float
    values: dict[str, float]  # register name -> scaled value
    sim_time: float | None = None  # the simulator's time of day (seconds since its midnight)


@dataclass(frozen=True)
class UploadPoint:
    dut: str
    t: float
    size: int  # bytes on the wire (the secured envelope)
    ratio: float | None  # original / compressed bytes of the packets it carried
    samples: int = 0
    verdict: str = "accepted"


@dataclass(frozen=True)
class EnergyShare:
    dut: str
    state: str
    seconds: float
    milliamps: float

    @property
    def charge_mah(self) -> float:
        return self.seconds * self.milliamps / 3600.0


@dataclass(frozen=True)
class OtaPoint:
    dut: str
    t: float
    percent: float
    phase: str = "progress"  # started, progress, verified, confirmed, failed, rolled_back
    version: str = ""


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DocumentError(f"{what} must be a finite number", value)
    return float(value)


@dataclass
class RunRecorder:
    """A trace of one scenario (see the module docstring)."""

    scenario: str = ""
    duts: list[str] = field(default_factory=list)
    events: list[TimelineEvent] = field(default_factory=list)
    registers: list[RegisterPoint] = field(default_factory=list)
    uploads: list[UploadPoint] = field(default_factory=list)
    energy: list[EnergyShare] = field(default_factory=list)
    ota: list[OtaPoint] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # profile, seed, time mode...
    _consoles: dict[str, list[tuple[float, str]]] = field(default_factory=dict, repr=False)
    _unsubscribe: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _pollers: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    # --- feeding it by hand ---------------------------------------------------------------------------

    def _dut(self, dut: str | None) -> None:
        if dut is not None and dut not in self.duts:
            self.duts.append(dut)

    def record(self, event: TimelineEvent) -> None:
        if event.lane not in LANES:
            raise DocumentError(f"a lane is one of {LANES}", event.lane)
        if event.status not in STATUSES:
            raise DocumentError(f"a status is one of {STATUSES}", event.status)
        self._dut(event.dut)
        self.events.append(event)

    def record_serial(self, dut: str, line: str, t: float) -> None:
        self.record(TimelineEvent(t, "serial", dut, line, _console_status(line)))

    def record_modbus(self, dut: str, t: float, operation: str, start: int, count: int, outcome: str,
                      values: Iterable[int] = ()) -> None:
        shown = list(values)
        label = f"{operation} {start}+{count}" + (f" -> {outcome}" if outcome != "ok" else "")
        status = "ok" if outcome in ("ok", "delay") else "warn" if outcome == "refused" else "error"
        self.record(TimelineEvent(t, "modbus", dut, label, status, f"values {shown}" if shown else ""))

    def record_http(self, dut: str, t: float, method: str, path: str, status: int | str, *,
                    size: int | None = None, detail: str = "") -> None:
        code = int(status) if isinstance(status, int) or str(status).isdigit() else None
        level = "ok" if code is not None and code < 400 else "warn" if code is not None and code < 500 else "error"
        extra = ", ".join(x for x in (f"{size} B" if size is not None else "", detail) if x)
        self.record(TimelineEvent(t, "http", dut, f"{method} {path} {status}", level, extra))

    def record_fault(self, t: float, family: str, what: str, dut: str | None = None, detail: str = "", *,
                     end: float | None = None) -> None:
        self.record(TimelineEvent(t, "fault", dut, f"{family}: {what}", "error", detail, end))

    def record_power(self, dut: str, t: float, state: str, detail: str = "") -> None:
        self.record(TimelineEvent(t, "power", dut, state, "error" if state in ("off", "cut") else "ok", detail))

    def record_register(self, dut: str, t: float, values: Mapping[str, float], sim_time: float | None = None) -> None:
        self._dut(dut)
        self.registers.append(RegisterPoint(dut, t, {str(k): float(v) for k, v in values.items()}, sim_time))

    def record_upload(self, dut: str, t: float, size: int, ratio: float | None, *, samples: int = 0,
                      verdict: str = "accepted") -> None:
        self._dut(dut)
        self.uploads.append(UploadPoint(dut, t, int(size), ratio, int(samples), verdict))

    def record_energy(self, dut: str, state: str, seconds: float, milliamps: float) -> None:
        self._dut(dut)
        self.energy.append(EnergyShare(dut, state, float(seconds), float(milliamps)))

    def record_ota(self, dut: str, t: float, percent: float, phase: str = "progress", version: str = "") -> None:
        self._dut(dut)
        self.ota.append(OtaPoint(dut, t, float(percent), phase, version))
        status = "error" if phase in ("failed", "rolled_back") else "ok"
        self.record(TimelineEvent(t, "ota", dut, f"{phase} {percent:g}%" + (f" {version}" if version else ""), status))

    # --- from a stack ---------------------------------------------------------------------------------

    @classmethod
    def attach(cls, stack: Any, scenario: str = "") -> RunRecorder:
        """A recorder that stamps every DUT's console lines with device time from now on (lines printed
        before, the boot banner, get the attach time). Call `collect` before the stack stops."""
        options = stack.options
        recorder = cls(scenario, info={"profile": options.profile, "seed": options.seed, "dut": options.dut,
                                       "time": stack.clock.mode, "devices": len(stack.duts)})
        for device_id, dut in stack.duts.items():
            recorder._dut(device_id)
            lines = recorder._consoles.setdefault(device_id, [])
            now = stack.clock.now()
            lines += [(now, line) for line in dut.console.lines]
            device = dut.device
            if device is not None:  # in this process: stamped as each line is printed
                recorder._unsubscribe.append(
                    device.console.subscribe(lambda line, lines=lines: lines.append((stack.clock.now(), line))))
            else:  # another process or a serial port: look now and then
                recorder._pollers.append(asyncio.ensure_future(_poll_console(dut.console, stack.clock, lines)))
        return recorder

    def detach(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for task in self._pollers:
            task.cancel()
        self._pollers.clear()

    async def collect(self, stack: Any) -> RunRecorder:
        """Everything the stack kept (see the module docstring), into this trace; stops watching."""
        self.detach()
        for device_id, lines in self._consoles.items():
            for t, line in lines:
                self.record_serial(device_id, line, t)
        self._consoles.clear()
        clock = stack.clock
        for device_id, sim in stack.sims.items():
            with contextlib.suppress(Exception):  # a simulator that died takes its ledger with it
                self._ledger(device_id, await sim.ledger())
        faults = getattr(stack, "faults", None)
        for fault in getattr(faults, "log", []):
            if fault.family != "network" or fault.what == "heal":  # toxics: the proxies log when they act
                self.record_fault(fault.time, fault.family, fault.what, fault.device_id, fault.detail)
        for (link, device_id), proxy in stack.proxies.items():
            self._proxy_log(link, device_id, proxy.log)
        for device_id, dut in stack.duts.items():
            with contextlib.suppress(Exception):
                self._device_events(device_id, dut.events(), clock)
            self._power_spans(device_id, getattr(faults, "log", []))
            device = dut.device
            if device is not None and device.power is not None:
                for state, seconds in device.energy().seconds.items():
                    if seconds > 0:
                        self.record_energy(device_id, state.label, seconds, state.milliamps)
            if stack.cloud is not None:
                with contextlib.suppress(Exception):  # a cloud killed by the scenario answers nothing
                    await self._cloud_uploads(device_id, stack.cloud, clock)
        self.events.sort(key=lambda e: (e.t, LANES.index(e.lane)))
        return self

    def _ledger(self, device_id: str, reads: Iterable[Any]) -> None:
        last_point = -math.inf
        for read in reads:
            self.record_modbus(device_id, read.time, read.operation, read.start, read.count, read.outcome,
                               read.values if read.operation == "write" else ())
            if read.operation != "read" or not read.delivered or read.time - last_point < REGISTER_SAMPLE_S:
                continue
            values: dict[str, float] = {}
            for offset, raw in enumerate(read.values):
                with contextlib.suppress(RegisterError):
                    register = by_address(read.start + offset)
                    values[register.name] = register.scaled(raw)
            if values:
                last_point = read.time
                self.record_register(device_id, read.time, values, read.sim_time % 86400.0)

    def _proxy_log(self, link: str, device_id: str, log: Iterable[Any]) -> None:
        """A span per toxic, with what it did to the traffic counted in its detail (a latency toxic acts on
        every message: one mark each would bury everything else)."""
        started: dict[str, tuple[Any, dict[str, int]]] = {}
        spans: list[tuple[Any, float, dict[str, int]]] = []
        for record in log:
            if record.action == "start":
                started[record.toxic] = (record, defaultdict(int))
            elif record.action == "stop" and record.toxic in started:
                first, actions = started.pop(record.toxic)
                spans.append((first, record.time, actions))
            elif record.toxic in started:
                started[record.toxic][1][record.action] += 1
            else:
                self.record(TimelineEvent(record.time, "fault", device_id, f"{link} link: {record.type} {record.action}",
                                          "warn", f"{record.direction}, {record.nbytes} B {record.detail}".strip()))
        spans += [(first, math.inf, actions) for first, actions in started.values()]  # still active at the end
        for first, end, actions in spans:
            did = ", ".join(f"{n} {action}" for action, n in sorted(actions.items()))
            self.record_fault(first.time, f"{link} link", first.type, device_id,
                              f"{first.toxic} {first.direction}" + (f": {did}" if did else ""), end=end)

    def _device_events(self, device_id: str, events: Iterable[Any], clock: Any) -> None:
        for event in events:
            t = clock.device_time_at(event.wall)
            label = event.kind.label
            details = dict(event.details)
            if label == "boot":
                self.record_power(device_id, t, "boot", str(details.get("reason", "")))
            elif label == "ota_started":
                self.record_ota(device_id, t, 0.0, "started", str(details.get("version", event.message)))
            elif label == "ota_progress":
                total = details.get("total") or 0
                percent = 100.0 * float(details.get("chunks", 0)) / float(total) if total else 0.0
                self.record_ota(device_id, t, percent)
            elif label in ("ota_verified", "ota_confirmed"):
                self.record_ota(device_id, t, 100.0, label.removeprefix("ota_"), str(details.get("version", "")))
            elif label in ("ota_failed", "ota_rolled_back"):
                self.record_ota(device_id, t, self._last_percent(device_id), label.removeprefix("ota_"),
                                str(details.get("reason", event.message)))
            elif label in ("upload_ok", "upload_failed"):
                ok = label == "upload_ok"
                self.record(TimelineEvent(t, "http", device_id, "POST /process " + ("ok" if ok else "failed"),
                                          "ok" if ok else "error", event.message or json.dumps(details, default=str)))
            elif label.startswith(("command_", "config_")):
                self.record(TimelineEvent(t, "http", device_id, label.replace("_", " "),
                                          "ok" if event.level.value == "INFO" else "warn",
                                          event.message or json.dumps(details, default=str)))

    def _power_spans(self, device_id: str, log: Iterable[Any]) -> None:
        """Power off from each cut until the boot that followed it."""
        boots = sorted(e.t for e in self.events if e.lane == "power" and e.dut == device_id and e.label == "boot")
        for fault in log:
            if fault.family == "power" and fault.what == "cut" and fault.device_id == device_id and "at point" not in fault.detail:
                end = next((t for t in boots if t >= fault.time), math.inf)
                self.record(TimelineEvent(fault.time, "power", device_id, "off", "error", fault.detail, end))

    def _last_percent(self, device_id: str) -> float:
        return next((p.percent for p in reversed(self.ota) if p.dut == device_id), 0.0)

    async def _cloud_uploads(self, device_id: str, cloud: Any, clock: Any) -> None:
        uploads = await cloud.uploads(device_id)
        packets = await cloud.packets(device_id)
        rows = await cloud.telemetry(device_id)
        values_per_packet: dict[tuple[Any, Any], int] = defaultdict(int)
        for row in rows:
            values_per_packet[(row.get("boot_id"), row.get("packet_ts"))] += 1
        original: dict[Any, int] = defaultdict(int)
        compressed: dict[Any, int] = defaultdict(int)
        for packet in packets:
            original[packet.get("upload_id")] += 2 * values_per_packet.get((packet.get("boot_id"), packet.get("packet_ts")), 0)
            compressed[packet.get("upload_id")] += len(str(packet.get("raw_hex") or "")) // 2
        for upload in uploads:
            ident = upload.get("id")
            ratio = original[ident] / compressed[ident] if compressed.get(ident) and original.get(ident) else None
            t = clock.device_time_at(float(upload.get("received_at") or 0.0))
            self.record_upload(device_id, t, int(upload.get("bytes") or 0), ratio,
                               samples=int(upload.get("samples") or 0), verdict=str(upload.get("verdict")))

    # --- JSON -----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def plain(items: Iterable[Any]) -> list[dict[str, Any]]:
            return [_jsonable(asdict(item)) for item in items]

        return {"schema": SCHEMA, "scenario": self.scenario, "duts": list(self.duts), "info": self.info,
                "events": plain(self.events), "registers": plain(self.registers), "uploads": plain(self.uploads),
                "energy": plain(self.energy), "ota": plain(self.ota)}

    @classmethod
    def from_json(cls, doc: Any) -> RunRecorder:
        """A trace from its JSON form; DocumentError for anything else."""
        if not isinstance(doc, Mapping) or doc.get("schema") != SCHEMA:
            raise DocumentError(f"not a run trace ({SCHEMA})", doc.get("schema") if isinstance(doc, Mapping) else doc)
        recorder = cls(str(doc.get("scenario", "")), info=dict(_mapping(doc.get("info", {}), "info")))
        duts = doc.get("duts", [])
        if not isinstance(duts, list):
            raise DocumentError("duts must be a list", duts)
        for dut in duts:
            recorder._dut(str(dut))
        try:
            for e in _items(doc, "events"):
                end = e.get("end")
                recorder.record(TimelineEvent(_finite(e["t"], "t"), str(e["lane"]), _opt_text(e.get("dut")),
                                              str(e["label"]), str(e.get("status", "ok")), str(e.get("detail", "")),
                                              None if end is None else math.inf if end == "inf" else _finite(end, "end")))
            for r in _items(doc, "registers"):
                values = {str(k): _finite(v, "a register value") for k, v in _mapping(r["values"], "values").items()}
                sim = r.get("sim_time")
                recorder.record_register(str(r["dut"]), _finite(r["t"], "t"), values,
                                         None if sim is None else _finite(sim, "sim_time"))
            for u in _items(doc, "uploads"):
                ratio = u.get("ratio")
                recorder.record_upload(str(u["dut"]), _finite(u["t"], "t"), int(_finite(u["size"], "size")),
                                       None if ratio is None else _finite(ratio, "ratio"),
                                       samples=int(_finite(u.get("samples", 0), "samples")),
                                       verdict=str(u.get("verdict", "accepted")))
            for s in _items(doc, "energy"):
                recorder.record_energy(str(s["dut"]), str(s["state"]), _finite(s["seconds"], "seconds"),
                                       _finite(s["milliamps"], "milliamps"))
            for o in _items(doc, "ota"):
                recorder._dut(str(o["dut"]))
                recorder.ota.append(OtaPoint(str(o["dut"]), _finite(o["t"], "t"), _finite(o["percent"], "percent"),
                                             str(o.get("phase", "progress")), str(o.get("version", ""))))
        except KeyError as missing:
            raise DocumentError(f"a trace entry needs {missing.args[0]}", None) from None
        except (TypeError, AttributeError, ValueError, OverflowError) as error:
            raise DocumentError(f"a trace entry is malformed: {error}", None) from None
        return recorder

    def write(self, directory: Path) -> Path:
        """`directory/<scenario>.json` (atomically)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{trace_name(self.scenario)}.json"
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: Path) -> RunRecorder:
        try:
            doc = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as error:
            raise DocumentError(f"{path} is not JSON: {error}", str(path)) from None
        return cls.from_json(doc)


def trace_name(scenario: str) -> str:
    """A file name for a scenario's node id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", scenario).strip("_.")[:150] or "scenario"


def _console_status(line: str) -> str:
    if re.match(r"\[\s*\d+\]\[E\]|E \(\d+\)", line) or "Guru Meditation" in line or "abort()" in line:
        return "error"
    if re.match(r"\[\s*\d+\]\[W\]|W \(\d+\)", line):
        return "warn"
    return "ok"


async def _poll_console(console: Any, clock: Any, lines: list[tuple[float, str]]) -> None:
    seen = len(lines)
    while True:
        await asyncio.sleep(CONSOLE_POLL_S)
        current = console.lines
        now = clock.now()
        lines += [(now, line) for line in current[seen:]]
        seen = len(current)


def _jsonable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in doc.items()}


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DocumentError(f"{what} must be an object", value)
    return value


def _items(doc: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = doc.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise DocumentError(f"{key} must be a list of objects", key)
    return items


def _opt_text(value: Any) -> str | None:
    return None if value is None else str(value)
