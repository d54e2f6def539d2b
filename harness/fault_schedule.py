"""Faults in device time: one fault (`ScheduledFault`), a run's list of them (`FaultSchedule`), and the
campaign's fault profiles (`FaultMix`) that draw seeded random schedules.

A fault is written the same way in a scenario file's `inject` step, in a schedule file and in a profile:

    {network: latency, link: cloud, after: 30, duration: 120, latency: 800, jitter: 200}
    {bus: CRC_ERROR, count: 3}                     one-shot flags on the next reads
    {bus: CORRUPT, duration: 5m, probability: 0.2} a seeded bus profile for a while
    {power: cut, off: 10s}   {power: cut, point: upload.sent}   {power: reset}
    {cloud: http_503, probability: 0.5, duration: 5m}   {cloud: kill, duration: 30s}

`after` is device seconds from when the schedule starts, `duration` how long the fault lasts (absent:
one-shot, or until the run ends). Everything goes through the stack's `HilFaults`, so the same schedule
works on the emulator, in processes and on a board (as far as the DUT can take it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.toxics import TOXIC_TYPES, toxic_from_spec
from protocol.errors import DocumentError

FAMILIES = ("bus", "network", "power", "cloud")
BUS_KINDS = ("EXCEPTION", "CRC_ERROR", "CORRUPT", "PACKET_DROP", "DELAY")
POWER_KINDS = ("cut", "reset")
CLOUD_KINDS = ("delay", "http_500", "http_503", "drop", "truncate", "corrupt_chunk", "wrong_hash", "kill")
LINKS = ("cloud", "sim")
SLAVE_DEVICE_FAILURE = 4  # the Modbus exception an EXCEPTION fault answers unless told otherwise
# Keys a fault may carry besides its family, per family (the rest of a fault are its parameters).
COMMON_KEYS = frozenset({"after", "duration", "device"})
PARAMETERS: dict[str, frozenset[str]] = {
    "bus": frozenset({"count", "probability", "exception_code", "delay_ms", "seed"}),
    "network": frozenset({"link", "stream", "toxicity"}),  # plus the toxic's own attributes
    "power": frozenset({"at_point", "point", "skip", "off"}),
    "cloud": frozenset({"probability"}),  # plus the cloud fault's parameters
}
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*)+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_TOXIC_NAMES = itertools.count(1)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any, what: str = "a duration") -> float:
    """Device seconds from a number of seconds or text like `90s`, `5m`, `1h30m`, `250ms`."""
    if isinstance(value, bool):
        raise DocumentError(f"{what} is seconds or text like 5m, not a boolean", value)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value):
        seconds = sum(float(n) * _UNIT[u] for n, u in _PART.findall(value))
    else:
        raise DocumentError(f"{what} is seconds or text like 90s, 5m, 1h30m", value)
    if not math.isfinite(seconds) or seconds < 0 or seconds > 365 * 86400:
        raise DocumentError(f"{what} must be between 0 and a year", value)
    return seconds


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise DocumentError(f"{what} must be a number in {low:g}..{high:g}", value)
    return float(value)


def _json_value(value: Any, what: str, depth: int = 0) -> Any:
    """`value` if it is plain JSON data (so a schedule round-trips through a file)."""
    if depth > 8:
        raise DocumentError(f"{what} is nested too deeply", None)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DocumentError(f"{what} must be finite", value)
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v, what, depth + 1) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, what, depth + 1) for k, v in value.items()}
    raise DocumentError(f"{what} must be plain data (numbers, text, lists, mappings)", value)


@dataclass(frozen=True)
class ScheduledFault:
    """One fault: `family` (bus, network, power, cloud) and `kind` in it, `after` device seconds from the
    schedule's start, lasting `duration` (None: one-shot / until the end), with its parameters."""

    family: str
    kind: str
    after: float = 0.0
    duration: float | None = None
    device: str | None = None
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.params)

    @classmethod
    def from_json(cls, doc: Any) -> ScheduledFault:
        """Parse the written form (see the module docstring); DocumentError says what is wrong."""
        if not isinstance(doc, Mapping):
            raise DocumentError("a fault is a mapping like {network: latency, link: cloud, ...}", doc)
        families = [f for f in FAMILIES if f in doc]
        if len(families) != 1:
            raise DocumentError(f"a fault names exactly one family among {', '.join(FAMILIES)}",
                                sorted(str(k) for k in doc))
        family = families[0]
        kind = doc[family]
        if not isinstance(kind, str):
            raise DocumentError(f"{family}: the kind of fault is text", kind)
        after = parse_duration(doc.get("after", 0), "after")
        duration = None if doc.get("duration") is None else parse_duration(doc["duration"], "duration")
        device = doc.get("device")
        if device is not None and not isinstance(device, str):
            raise DocumentError("device is a device id", device)
        params = {str(k): _json_value(v, f"{family} {k}") for k, v in doc.items()
                  if k != family and k not in COMMON_KEYS}
        fault = cls(family, kind, after, duration, device, tuple(sorted(params.items())))
        fault.validate()
        return fault

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {self.family: self.kind}
        if self.after:
            doc["after"] = self.after
        if self.duration is not None:
            doc["duration"] = self.duration
        if self.device is not None:
            doc["device"] = self.device
        doc.update(self.params)
        return doc

    def validate(self) -> None:
        """Check kind and parameters before anything runs (DocumentError naming the problem)."""
        p = self.parameters
        if self.family == "bus":
            if self.kind.upper() not in BUS_KINDS:
                raise DocumentError(f"bus fault is one of {', '.join(BUS_KINDS)}", self.kind)
            _known(p, PARAMETERS["bus"], "bus fault")
            if "count" in p:
                _number(p["count"], "count", 1, 10_000)
            if "probability" in p:
                _number(p["probability"], "probability", 0, 1)
            if "delay_ms" in p:
                _number(p["delay_ms"], "delay_ms", 0, 600_000)
        elif self.family == "network":
            if self.kind not in TOXIC_TYPES:
                raise DocumentError(f"network fault is a toxic among {', '.join(sorted(TOXIC_TYPES))}", self.kind)
            if p.get("link", "cloud") not in LINKS:
                raise DocumentError(f"link is one of {', '.join(LINKS)}", p.get("link"))
            self.toxic_spec()  # the toxic's own checks
        elif self.family == "power":
            if self.kind not in POWER_KINDS:
                raise DocumentError(f"power fault is one of {', '.join(POWER_KINDS)}", self.kind)
            _known(p, PARAMETERS["power"], "power fault")
            if "point" in p and not isinstance(p["point"], str):
                raise DocumentError("point is a tagged point name like upload.sent", p["point"])
            if "off" in p:
                parse_duration(p["off"], "off")
            if "skip" in p:
                _number(p["skip"], "skip", 0, 1000)
        elif self.family == "cloud":
            if self.kind not in CLOUD_KINDS:
                raise DocumentError(f"cloud fault is one of {', '.join(CLOUD_KINDS)}", self.kind)
            if "probability" in p:
                _number(p["probability"], "probability", 0, 1)
        else:
            raise DocumentError(f"fault family is one of {', '.join(FAMILIES)}", self.family)

    def toxic_spec(self) -> dict[str, Any]:
        """The Toxiproxy spec of a network fault."""
        p = self.parameters
        common: dict[str, Any] = {k: p[k] for k in ("stream", "toxicity") if k in p}
        attributes = {k: v for k, v in p.items() if k not in ("link", "stream", "toxicity")}
        spec: dict[str, Any] = {"type": self.kind, **common, "attributes": attributes}
        try:
            toxic_from_spec(spec)
        except DocumentError:
            raise
        except (TypeError, ValueError, KeyError) as error:
            raise DocumentError(f"{self.kind}: {error}", attributes) from None
        return spec

    def shortened(self, duration: float) -> ScheduledFault:
        return replace(self, duration=duration)

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.params)
        span = f" for {self.duration:g} s" if self.duration is not None else ""
        return f"t+{self.after:g} s {self.family}:{self.kind}{span}{' ' + extra if extra else ''}"


def _known(params: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise DocumentError(f"{what}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})",
                            unknown)


# --- running faults ----------------------------------------------------------------------------------


async def inject(fault: ScheduledFault, faults: Any, clock: Any) -> None:
    """Wait `fault.after` device seconds, inject it through HilFaults, and end it after its duration."""
    if fault.after > 0:
        await asyncio.sleep(clock.loop_delay(fault.after))
    p = fault.parameters
    device = fault.device
    if fault.family == "bus":
        kind = fault.kind.upper()
        options = {k: int(p[k]) for k in ("exception_code", "delay_ms") if k in p}
        if kind == "EXCEPTION":
            options.setdefault("exception_code", SLAVE_DEVICE_FAILURE)
        if fault.duration is None:
            await faults.bus(kind, device_id=device, count=int(p.get("count", 1)), **options)
            return
        await faults.bus_profile({kind: float(p.get("probability", 1.0))}, seed=int(p.get("seed", 1)),
                                 device_id=device, **options)
        try:
            await asyncio.sleep(clock.loop_delay(fault.duration))
        finally:  # also when the run ends first: the next run must not inherit it
            await faults.bus_profile(None, device_id=device)
    elif fault.family == "network":
        # A name of its own: a schedule may overlap two toxics of the same type on one link.
        spec = {**fault.toxic_spec(), "name": f"{fault.kind}-{next(_TOXIC_NAMES)}"}
        faults.network(str(p.get("link", "cloud")), spec, device_id=device, duration=fault.duration)
    elif fault.family == "power":
        off = parse_duration(p.get("off", fault.duration or 0.0), "off")
        if fault.kind == "reset":
            await faults.reset(device_id=device)
        elif "point" in p:
            await faults.power_cut(point=str(p["point"]), skip=int(p.get("skip", 0)), off_s=off, device_id=device)
        else:
            await faults.power_cut(off_s=off, device_id=device)
    elif fault.kind == "kill":
        await faults.kill_cloud()
        try:
            await asyncio.sleep(clock.loop_delay(fault.duration or 0.0))
        finally:  # a run never ends with its cloud dead
            await faults.restart_cloud()
    else:
        probability = p.pop("probability", None)
        await faults.cloud(fault.kind, probability=probability, duration_s=fault.duration, device_id=device, **p)


@dataclass(frozen=True)
class FaultSchedule:
    """The faults of one run, in the order they start."""

    faults: tuple[ScheduledFault, ...] = ()

    def __len__(self) -> int:
        return len(self.faults)

    def __iter__(self) -> Any:
        return iter(self.faults)

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.faults]

    @classmethod
    def from_json(cls, doc: Any) -> FaultSchedule:
        if isinstance(doc, Mapping) and "schedule" in doc:
            doc = doc["schedule"]
        if not isinstance(doc, list):
            raise DocumentError("a fault schedule is a list of faults", doc)
        return cls(tuple(sorted((ScheduledFault.from_json(f) for f in doc), key=lambda f: f.after)))

    @classmethod
    def load(cls, path: Path) -> FaultSchedule:
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DocumentError(f"{path}: not a readable JSON fault schedule ({error})", str(path)) from None

    def start(self, faults: Any, clock: Any) -> list[asyncio.Task[None]]:
        """Start every fault's timer now; the caller cancels the tasks when the run ends."""
        return [asyncio.ensure_future(inject(f, faults, clock)) for f in self.faults]


# --- campaign fault profiles ---------------------------------------------------------------------------


Range = tuple[float, float]


@dataclass(frozen=True)
class FaultChoice:
    """A fault a profile may draw: the fault (its `after` and `duration` are drawn), its weight, the range
    of its duration (None: one-shot) and ranges for parameters (`{latency: [200, 2000]}`)."""

    template: ScheduledFault
    weight: float = 1.0
    duration: Range | None = (10.0, 120.0)
    ranges: tuple[tuple[str, Range], ...] = ()

    def draw(self, rng: random.Random, after: float, longest: float) -> ScheduledFault:
        params = dict(self.template.params)
        for name, (low, high) in self.ranges:
            whole = float(low).is_integer() and float(high).is_integer()
            params[name] = rng.randint(int(low), int(high)) if whole else round(rng.uniform(low, high), 3)
        duration = None
        if self.duration is not None:
            low, high = self.duration
            duration = round(min(rng.uniform(low, high), max(longest, low)), 1)
        return replace(self.template, after=round(after, 1), duration=duration,
                       params=tuple(sorted(params.items())))


@dataclass(frozen=True)
class FaultMix:
    """A campaign's fault profile: how many faults a run gets and which, drawn by seed.

    Faults start within the first `window` fraction of the scenario's device time and end before
    `heal` of it, so the system has time to recover before the invariants are checked."""

    name: str
    choices: tuple[FaultChoice, ...]
    count: tuple[int, int] = (1, 4)
    window: float = 0.6
    heal: float = 0.85

    def schedule(self, seed: int, horizon: float) -> FaultSchedule:
        """The schedule of run `seed` for a scenario lasting `horizon` device seconds: a pure function."""
        rng = random.Random(f"{self.name}/{seed}/{horizon:.3f}")
        if not self.choices:
            return FaultSchedule()
        drawn = []
        for _ in range(rng.randint(*self.count)):
            choice = rng.choices(self.choices, weights=[c.weight for c in self.choices])[0]
            after = rng.uniform(0.0, self.window * horizon)
            drawn.append(choice.draw(rng, after, self.heal * horizon - after))
        return FaultSchedule(tuple(sorted(drawn, key=lambda f: f.after)))

    @classmethod
    def from_json(cls, doc: Any, name: str = "custom") -> FaultMix:
        """`{version: 1, name:, count: [1, 4], window: 0.6, heal: 0.85, faults: [{weight:, duration: [a, b],
        ranges: {key: [a, b]}, <fault>...}]}`."""
        if not isinstance(doc, Mapping):
            raise DocumentError("a fault profile is a mapping", doc)
        unknown = sorted(set(doc) - {"version", "name", "count", "window", "heal", "faults"})
        if unknown:
            raise DocumentError(f"fault profile: unknown key(s) {', '.join(map(str, unknown))}", unknown)
        if doc.get("version", 1) != 1:
            raise DocumentError("fault profile version must be 1", doc.get("version"))
        faults = doc.get("faults")
        if not isinstance(faults, list):
            raise DocumentError("fault profile: faults is a list", faults)
        count = _pair(doc.get("count", [1, 4]), "count", 0, 100)
        choices = tuple(_choice(f) for f in faults)
        mix_name = doc.get("name", name)
        if not isinstance(mix_name, str) or not mix_name:
            raise DocumentError("fault profile: name is text", mix_name)
        return cls(mix_name, choices, (int(count[0]), int(count[1])),
                   _number(doc.get("window", 0.6), "window", 0, 1), _number(doc.get("heal", 0.85), "heal", 0, 1))


def _pair(value: Any, what: str, low: float, high: float) -> Range:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise DocumentError(f"{what} is a range [low, high]", value)
    a, b = (_number(v, what, low, high) for v in value)
    if a > b:
        raise DocumentError(f"{what}: low above high", value)
    return a, b


def _choice(doc: Any) -> FaultChoice:
    if not isinstance(doc, Mapping):
        raise DocumentError("a profile's fault is a mapping", doc)
    rest = {k: v for k, v in doc.items() if k not in ("weight", "duration", "ranges")}
    ranges = doc.get("ranges", {})
    if not isinstance(ranges, Mapping):
        raise DocumentError("ranges is a mapping of parameter -> [low, high]", ranges)
    pairs = tuple(sorted((str(k), _pair(v, f"range of {k}", -1e9, 1e9)) for k, v in ranges.items()))
    template = ScheduledFault.from_json({**rest, **{k: lo for k, (lo, _) in pairs}})
    duration = doc.get("duration", [10, 120])
    span = None if duration is None else tuple(parse_duration(d, "duration") for d in _pair_list(duration))
    return FaultChoice(template, _number(doc.get("weight", 1), "weight", 0, 1e6),
                       None if span is None else (span[0], span[1]), pairs)


def _pair_list(value: Any) -> list[Any]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise DocumentError("duration is a range [low, high] (or null: one-shot)", value)
    if parse_duration(value[0]) > parse_duration(value[1]):
        raise DocumentError("duration: low above high", value)
    return list(value)


def _c(doc: dict[str, Any], weight: float = 1.0, duration: Range | None = (10.0, 120.0),
       **ranges: Range) -> FaultChoice:
    return FaultChoice(ScheduledFault.from_json(doc), weight, duration, tuple(sorted(ranges.items())))


_NETWORK = (
    _c({"network": "latency", "link": "cloud", "latency": 500, "jitter": 100}, 2, latency=(100, 3000)),
    _c({"network": "partition", "link": "cloud"}, 2, (10.0, 240.0)),
    _c({"network": "ack_loss", "link": "cloud", "toxicity": 0.5}, 2, toxicity=(0.1, 1.0)),
    _c({"network": "reset_peer", "link": "cloud", "timeout": 0}, 1),
    _c({"network": "duplicate_request", "link": "cloud"}, 1),
    _c({"network": "latency", "link": "sim", "latency": 300}, 1, latency=(50, 2000)),
    _c({"network": "partition", "link": "sim"}, 1, (5.0, 60.0)),
)
_BUS = (
    _c({"bus": "CRC_ERROR", "probability": 0.3}, 1, probability=(0.05, 0.6)),
    _c({"bus": "CORRUPT", "probability": 0.3}, 1, probability=(0.05, 0.6)),
    _c({"bus": "PACKET_DROP", "probability": 0.2, "delay_ms": 100}, 1, probability=(0.05, 0.4)),
    _c({"bus": "EXCEPTION", "probability": 0.3}, 1, probability=(0.05, 0.6)),
    _c({"bus": "DELAY", "probability": 0.3, "delay_ms": 800}, 1, delay_ms=(100, 3000)),
)
_POWER = (_c({"power": "cut"}, 1, (0.0, 30.0)),)
_CLOUD = (
    _c({"cloud": "http_503", "probability": 0.5}, 1, probability=(0.1, 1.0)),
    _c({"cloud": "http_500", "probability": 0.5}, 1, probability=(0.1, 1.0)),
    _c({"cloud": "kill"}, 1, (1.0, 60.0)),
)
BUILTIN_MIXES: dict[str, FaultMix] = {
    "none": FaultMix("none", (), (0, 0)),
    "network": FaultMix("network", _NETWORK),
    "bus": FaultMix("bus", _BUS),
    "power": FaultMix("power", _POWER, (1, 2)),
    "cloud": FaultMix("cloud", _CLOUD, (1, 2)),
    "mixed": FaultMix("mixed", _NETWORK + _BUS + _POWER + _CLOUD, (1, 5)),
}
DEFAULT_MIX = "mixed"


def load_mix(name_or_path: str) -> FaultMix:
    """A built-in fault profile by name, or one from a YAML file."""
    if name_or_path in BUILTIN_MIXES:
        return BUILTIN_MIXES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise DocumentError(f"no fault profile {name_or_path!r}: a file, or one of {', '.join(BUILTIN_MIXES)}",
                            name_or_path)
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DocumentError(f"{path}: unreadable fault profile ({error})", str(path)) from None
    return FaultMix.from_json(doc, path.stem)


def merge(*schedules: Iterable[ScheduledFault]) -> FaultSchedule:
    return FaultSchedule(tuple(sorted((f for s in schedules for f in s), key=lambda f: f.after)))


__all__ = ["BUILTIN_MIXES", "FaultChoice", "FaultMix", "FaultSchedule", "ScheduledFault", "inject",
           "load_mix", "parse_duration"]
