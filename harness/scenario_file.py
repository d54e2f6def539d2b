"""Scenario files for QA: a YAML format, validated before anything starts, run against the HIL stack.

    version: 1
    name: upload cycle
    stack: {upload: 60, poll: 5}          # StackOptions for this scenario (upload/poll/sim_offset in seconds)
    markers: [slow]                       # pytest markers; `requires: [power_cut]` for DUT capabilities
    steps:
      - advance: 5m                       # device time
      - expect_upload: {count: 2, within: 3m}
      - expect_console: {pattern: "upload", within: 2m}
      - set_config: {poll: 5, upload: 30, registers: [Vac1, Pac]}
      - queue_command: {type: set_power, params: {value: 50}, as: cut}
      - expect_command_result: {command: cut, status: completed, within: 5m}
      - start_ota: {version: 1.2.0}
      - inject: {network: partition, link: cloud, duration: 2m}   # any fault: see harness.fault_schedule
      - power_cut: {point: upload.sent, off: 5s}
      - assert_measurement: {name: uploads, value: uploads, unit: count,
                             limits: {low: 3, high: 20, marginal: 1}}

Durations are seconds or text (`90s`, `5m`, `1h30m`). Every problem in a file (an unknown key, a bad
value, a step referring to a command not queued before) is reported before the stack starts, as a
`ScenarioFileError` naming the file, the line and the reason.

`assert_measurement` limits are inclusive; `marginal` (or `marginal_low` / `marginal_high`) is a band
inside them: a value within it passes but is marked "marginal" (OpenHTF's habit), so QA sees drift before
it fails. Measurements go to the caller's `measure` callback (the pytest item records them for the report).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cloud.operator_client import OperatorError
from harness.fault_schedule import FaultSchedule, ScheduledFault, inject, parse_duration
from protocol.errors import DocumentError, EcoWattError
from protocol.registers import resolve

STEP_KINDS = ("advance", "expect_upload", "expect_console", "set_config", "queue_command",
              "expect_command_result", "start_ota", "inject", "power_cut", "assert_measurement")
TOP_KEYS = frozenset({"version", "name", "description", "stack", "markers", "requires", "steps"})
# `stack:` keys: the `hil` marker's names (harness.pytest_plugin), plus skip_invariants.
STACK_ALIASES = {"upload": "upload_s", "poll": "poll_s", "sim_offset": "sim_offset_s"}
STACK_FROM_COMMAND_LINE = frozenset({"dut", "port", "processes", "cloud_db"})
COMMAND_STATUSES = ("completed", "failed", "timed_out", "delivered", "queued")
FINAL_STATUSES = frozenset({"completed", "failed", "timed_out"})
DEFAULT_WITHIN = 600.0  # device seconds an expect step waits when the file does not say
POLL_EVERY = 5.0  # device seconds between looks at the cloud while expecting
MAX_STEPS = 10_000


class ScenarioFileError(DocumentError):
    """A scenario (or fault profile) file that cannot run: `path`, `line` (1-based, 0 unknown), `reason`."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")
        self.value = reason


class ScenarioStepFailed(AssertionError):
    """A step's expectation did not hold (the message names the file, line and step)."""


@dataclass(frozen=True)
class Step:
    kind: str
    args: Mapping[str, Any]
    line: int

    def where(self, scenario: Scenario) -> str:
        return f"{scenario.path}:{self.line}: {self.kind}"


@dataclass(frozen=True)
class Scenario:
    path: str
    name: str
    steps: tuple[Step, ...]
    description: str = ""
    stack: Mapping[str, Any] = field(default_factory=dict)  # StackOptions field -> value
    skip_invariants: Mapping[str, str] = field(default_factory=dict)
    markers: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()

    def horizon(self) -> float:
        """The device time the steps let pass (advance steps and expect windows): where faults may go."""
        total = 0.0
        for step in self.steps:
            if step.kind == "advance":
                total += step.args["seconds"]
            elif "within" in step.args:
                total += step.args["within"] / 2  # an expectation is usually met before its deadline
        return max(total, 60.0)

    def options(self, base: Any) -> Any:
        """`base` StackOptions with this scenario's `stack:` settings."""
        return base.replace(**self.stack) if self.stack else base


# --- reading and checking the file ------------------------------------------------------------------


class _Reader:
    """Walks the composed YAML nodes, so every complaint carries the node's line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, node: yaml.Node | None, reason: str) -> ScenarioFileError:
        line = node.start_mark.line + 1 if node is not None and node.start_mark is not None else 0
        return ScenarioFileError(self.path, line, reason)

    def value(self, node: yaml.Node) -> Any:
        """The plain Python value of a node (SafeLoader's types)."""
        try:
            return yaml.SafeLoader("").construct_document(node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as error:
            raise self.fail(node, f"bad value ({type(error).__name__}: {error})") from None

    def mapping(self, node: yaml.Node, what: str, allowed: Iterable[str]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Key -> (key node, value node) of a mapping whose keys are all in `allowed`."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        allowed = tuple(allowed)
        result: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key not in allowed:
                raise self.fail(key_node, f"unknown key {key!r} in {what} (known: {', '.join(sorted(allowed))})")
            if key in result:
                raise self.fail(key_node, f"{key!r} given twice in {what}")
            result[key] = (key_node, value_node)
        return result

    def text(self, node: yaml.Node, what: str) -> str:
        value = self.value(node)
        if not isinstance(value, str | int | float) or isinstance(value, bool) or value == "":
            raise self.fail(node, f"{what} must be text")
        return str(value)

    def number(self, node: yaml.Node, what: str, low: float, high: float, *, integer: bool = False) -> float:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high \
                or (integer and not float(value).is_integer()):
            kind = "a whole number" if integer else "a number"
            raise self.fail(node, f"{what} must be {kind} in {low:g}..{high:g}, not {value!r}")
        return int(value) if integer else float(value)

    def duration(self, node: yaml.Node, what: str) -> float:
        try:
            return parse_duration(self.value(node), what)
        except DocumentError as error:
            raise self.fail(node, str(error)) from None

    def strings(self, node: yaml.Node, what: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return tuple(self.text(item, what) for item in node.value)


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; ScenarioFileError (file, line, reason) if it cannot run."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioFileError(str(path), 0, f"cannot read the file ({error})") from None
    return parse_scenario(text, str(path))


def parse_scenario(text: str, path: str = "<scenario>") -> Scenario:
    """A Scenario from YAML text, or ScenarioFileError: whatever the text is."""
    reader = _Reader(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        raise ScenarioFileError(path, mark.line + 1 if mark else 0, f"not YAML: {error.problem or error}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as error:
        raise ScenarioFileError(path, 0, f"not YAML: {error}") from None
    if root is None:
        raise ScenarioFileError(path, 0, "the file is empty")
    try:
        return _scenario(reader, root)
    except RecursionError:
        raise ScenarioFileError(path, 0, "nested too deeply") from None


def is_scenario_text(text: str) -> bool:
    """Whether a YAML file means to be a scenario (a top-level mapping with `steps`), without checking it."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError, ValueError):
        return bool(re.search(r"^steps\s*:", text, re.MULTILINE))
    return isinstance(root, yaml.MappingNode) and any(
        isinstance(k, yaml.ScalarNode) and k.value == "steps" for k, _ in root.value)


def _scenario(reader: _Reader, root: yaml.Node) -> Scenario:
    top = reader.mapping(root, "the scenario", TOP_KEYS)
    for required in ("version", "steps"):
        if required not in top:
            raise reader.fail(root, f"a scenario needs `{required}`")
    version_node = top["version"][1]
    if reader.value(version_node) != 1 or isinstance(reader.value(version_node), bool):
        raise reader.fail(version_node, f"version must be 1, not {reader.value(version_node)!r}")
    name = reader.text(top["name"][1], "name") if "name" in top else Path(reader.path).stem
    description = reader.text(top["description"][1], "description") if "description" in top else ""
    stack, skip = _stack(reader, top["stack"][1]) if "stack" in top else ({}, {})
    markers: tuple[str, ...] = ()
    if "markers" in top:
        markers_node = top["markers"][1]
        markers = reader.strings(markers_node, "markers")
        for marker_node, marker in zip(markers_node.value, markers, strict=True):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", marker):
                raise reader.fail(marker_node, f"marker {marker!r} is not a name")
    requires = _requires(reader, top["requires"][1]) if "requires" in top else ()
    steps_node = top["steps"][1]
    if not isinstance(steps_node, yaml.SequenceNode) or not steps_node.value:
        raise reader.fail(steps_node, "steps must be a non-empty list")
    if len(steps_node.value) > MAX_STEPS:
        raise reader.fail(steps_node, f"more than {MAX_STEPS} steps")
    commands: set[str] = set()
    steps = tuple(_step(reader, node, commands) for node in steps_node.value)
    return Scenario(reader.path, name, steps, description, stack, skip, markers, requires)


def _stack(reader: _Reader, node: yaml.Node) -> tuple[dict[str, Any], dict[str, str]]:
    from harness.stack import StackOptions

    fields = {f.name for f in dataclasses.fields(StackOptions)} - STACK_FROM_COMMAND_LINE
    allowed = (fields - set(STACK_ALIASES.values())) | set(STACK_ALIASES) | {"skip_invariants"}
    entries = reader.mapping(node, "stack", allowed)
    changes: dict[str, Any] = {}
    skip: dict[str, str] = {}
    for key, (_, value_node) in entries.items():
        if key in ("upload", "poll"):
            value: Any = reader.number(value_node, key, 0.1, 86400)
        elif key == "sim_offset":
            value = reader.duration(value_node, key)
        elif key == "devices":
            value = reader.number(value_node, key, 1, 1000, integer=True)
        elif key == "skip_invariants":
            raw = reader.value(value_node)
            if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
                raise reader.fail(value_node, "skip_invariants maps a checker name to the reason")
            skip = raw
            continue
        elif key == "timings":
            value = _timings(reader, value_node)
        else:
            value = reader.value(value_node)
            if key == "device_ids" and isinstance(value, list):
                value = tuple(value)
        changes[STACK_ALIASES.get(key, key)] = value
    try:
        StackOptions(**changes)
    except (ValueError, TypeError) as error:
        raise reader.fail(node, f"stack: {error}") from None
    return changes, skip


def _timings(reader: _Reader, node: yaml.Node) -> dict[str, float | int]:
    """Overrides of the firmware's periods and timeouts (device_emulator.profiles.Timings fields)."""
    from device_emulator.profiles import Timings

    whole = {f.name: isinstance(f.default, int) for f in dataclasses.fields(Timings)
             if isinstance(f.default, int | float)}
    entries = reader.mapping(node, "timings", whole)
    return {key: reader.number(value, key, 0, 86400, integer=whole[key]) for key, (_, value) in entries.items()}


def _requires(reader: _Reader, node: yaml.Node) -> tuple[str, ...]:
    from harness.dut import CAPABILITIES

    names = reader.strings(node, "requires")
    for item, name in zip(node.value, names, strict=True):
        if name not in CAPABILITIES:
            raise reader.fail(item, f"requires: {name!r} is not a capability ({', '.join(CAPABILITIES)})")
    return names


def _step(reader: _Reader, node: yaml.Node, commands: set[str]) -> Step:
    if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
        raise reader.fail(node, f"a step is a mapping with one key among {', '.join(STEP_KINDS)}")
    key_node, body = node.value[0]
    kind = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
    if kind not in STEP_KINDS:
        raise reader.fail(key_node, f"unknown step {kind!r} (steps: {', '.join(STEP_KINDS)})")
    line = key_node.start_mark.line + 1
    args = _STEP_READERS[kind](reader, body, commands)
    return Step(kind, args, line)


def _device(reader: _Reader, entries: Mapping[str, tuple[yaml.Node, yaml.Node]]) -> dict[str, Any]:
    return {"device": reader.text(entries["device"][1], "device")} if "device" in entries else {}


def _advance(reader: _Reader, node: yaml.Node, _: set[str]) -> dict[str, Any]:
    return {"seconds": reader.duration(node, "advance")}


def _within(reader: _Reader, entries: Mapping[str, tuple[yaml.Node, yaml.Node]]) -> float:
    return reader.duration(entries["within"][1], "within") if "within" in entries else DEFAULT_WITHIN


def _expect_upload(reader: _Reader, node: yaml.Node, _: set[str]) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode) and node.value == "":
        return {"count": 1, "within": DEFAULT_WITHIN}
    entries = reader.mapping(node, "expect_upload", ("count", "within", "device"))
    count = reader.number(entries["count"][1], "count", 1, 100_000, integer=True) if "count" in entries else 1
    return {"count": count, "within": _within(reader, entries), **_device(reader, entries)}


def _expect_console(reader: _Reader, node: yaml.Node, _: set[str]) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        entries = {"pattern": (node, node)}
    else:
        entries = reader.mapping(node, "expect_console", ("pattern", "within", "device"))
    if "pattern" not in entries:
        raise reader.fail(node, "expect_console needs a pattern")
    pattern = reader.text(entries["pattern"][1], "pattern")
    try:
        re.compile(pattern)
    except re.error as error:
        raise reader.fail(entries["pattern"][1], f"pattern is not a regular expression: {error}") from None
    return {"pattern": pattern, "within": _within(reader, entries), **_device(reader, entries)}


def _set_config(reader: _Reader, node: yaml.Node, _: set[str]) -> dict[str, Any]:
    entries = reader.mapping(node, "set_config", ("poll", "upload", "registers", "device"))
    if not set(entries) - {"device"}:
        raise reader.fail(node, "set_config needs poll, upload or registers")
    args: dict[str, Any] = _device(reader, entries)
    for key in ("poll", "upload"):
        if key in entries:
            args[key] = reader.number(entries[key][1], key, 0, 10**7, integer=True)
    if "registers" in entries:
        registers_node = entries["registers"][1]
        value = reader.value(registers_node)
        if not isinstance(value, list) or not value:
            raise reader.fail(registers_node, "registers is a non-empty list of names or addresses")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise reader.fail(registers_node, f"register {item!r} is not a name or address")
        for item in value:
            try:
                resolve(item)
            except EcoWattError as error:
                raise reader.fail(registers_node, str(error)) from None
        args["registers"] = value
    return args


def _queue_command(reader: _Reader, node: yaml.Node, commands: set[str]) -> dict[str, Any]:
    entries = reader.mapping(node, "queue_command", ("type", "params", "as", "device"))
    if "type" not in entries:
        raise reader.fail(node, "queue_command needs a type (set_power, write_register, ...)")
    params: Any = {}
    if "params" in entries:
        params = reader.value(entries["params"][1])
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise reader.fail(entries["params"][1], "params is a mapping")
    name = reader.text(entries["as"][1], "as") if "as" in entries else "last"
    commands.add(name)
    return {"type": reader.text(entries["type"][1], "type"), "params": params, "as": name,
            **_device(reader, entries)}


def _expect_command_result(reader: _Reader, node: yaml.Node, commands: set[str]) -> dict[str, Any]:
    entries = reader.mapping(node, "expect_command_result", ("command", "status", "within"))
    name = reader.text(entries["command"][1], "command") if "command" in entries else "last"
    if name not in commands:
        where = entries["command"][1] if "command" in entries else node
        raise reader.fail(where, f"no command {name!r} is queued before this step")
    status = reader.text(entries["status"][1], "status") if "status" in entries else "completed"
    if status not in COMMAND_STATUSES:
        raise reader.fail(entries["status"][1], f"status is one of {', '.join(COMMAND_STATUSES)}")
    return {"command": name, "status": status, "within": _within(reader, entries)}


def _start_ota(reader: _Reader, node: yaml.Node, _: set[str]) -> dict[str, Any]:
    entries = reader.mapping(node, "start_ota", ("version", "profile", "size", "device"))
    if "version" not in entries:
        raise reader.fail(node, "start_ota needs a version")
    version = reader.text(entries["version"][1], "version")
    if not re.fullmatch(r"\d+\.\d+\.\d+[-+.\w]*", version):
        raise reader.fail(entries["version"][1], f"version {version!r} is not like 1.2.0")
    args: dict[str, Any] = {"version": version, **_device(reader, entries)}
    if "profile" in entries:
        from harness.stack import PROFILES

        profile = reader.text(entries["profile"][1], "profile")
        if profile not in PROFILES:
            raise reader.fail(entries["profile"][1], f"profile is one of {', '.join(PROFILES)}")
        args["profile"] = profile
    if "size" in entries:
        args["size"] = reader.number(entries["size"][1], "size", 1024, 4 << 20, integer=True)
    return args


def _fault(reader: _Reader, node: yaml.Node, doc: Any) -> ScheduledFault:
    try:
        return ScheduledFault.from_json(doc)
    except DocumentError as error:
        raise reader.fail(node, str(error)) from None


def _inject(reader: _Reader, node: yaml.Node, _: set[str]) -> dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise reader.fail(node, "inject is a mapping like {network: latency, link: cloud, duration: 1m}")
    return {"fault": _fault(reader, node, reader.value(node))}


def _power_cut(reader: _Reader, node: yaml.Node, _: set[str]) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode) and node.value == "":
        return {"fault": ScheduledFault("power", "cut")}
    entries = reader.mapping(node, "power_cut", ("at", "point", "off", "skip", "device"))
    doc: dict[str, Any] = {"power": "cut"}
    if "at" in entries:
        doc["after"] = reader.duration(entries["at"][1], "at")
    for key in ("point", "off", "skip", "device"):
        if key in entries:
            doc[key] = reader.value(entries[key][1])
    if "at" in entries and "point" in entries:
        raise reader.fail(node, "a power cut is at a time or at a point, not both")
    return {"fault": _fault(reader, node, doc)}


@dataclass(frozen=True)
class Limits:
    low: float | None = None
    high: float | None = None
    marginal_low: float | None = None  # values below it (and >= low) are marginal
    marginal_high: float | None = None

    def text(self) -> str:
        low = "" if self.low is None else f"{self.low:g} <= "
        high = "" if self.high is None else f" <= {self.high:g}"
        return f"{low}x{high}" if low or high else "no limits"

    def verdict(self, value: float) -> str:
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return "fail"
        if (self.marginal_low is not None and value < self.marginal_low) or \
                (self.marginal_high is not None and value > self.marginal_high):
            return "marginal"
        return "pass"


def _limits(reader: _Reader, node: yaml.Node) -> Limits:
    entries = reader.mapping(node, "limits", ("low", "high", "marginal", "marginal_low", "marginal_high"))
    got = {k: reader.number(v, k, -1e15, 1e15) for k, (_, v) in entries.items()}
    low, high = got.get("low"), got.get("high")
    if low is None and high is None:
        raise reader.fail(node, "limits need low, high or both")
    if low is not None and high is not None and low > high:
        raise reader.fail(node, f"limits are inverted: low {low:g} > high {high:g}")
    band = got.get("marginal")
    if band is not None and band < 0:
        raise reader.fail(entries["marginal"][1], "marginal is a band width, not negative")
    m_low = got.get("marginal_low", None if band is None or low is None else low + band)
    m_high = got.get("marginal_high", None if band is None or high is None else high - band)
    if m_low is not None and m_high is not None and m_low > m_high:
        raise reader.fail(node, "the marginal band covers the whole range")
    for value, bound, name in ((m_low, low, "marginal_low"), (m_high, high, "marginal_high")):
        if value is not None and bound is None:
            raise reader.fail(node, f"{name} needs the matching limit")
    if (m_low is not None and low is not None and not low <= m_low) or \
            (m_high is not None and high is not None and not m_high <= high):
        raise reader.fail(node, "the marginal band must lie inside the limits")
    return Limits(low, high, m_low, m_high)


def _assert_measurement(reader: _Reader, node: yaml.Node, _: set[str]) -> dict[str, Any]:
    entries = reader.mapping(node, "assert_measurement", ("name", "value", "unit", "limits", "device"))
    if "value" not in entries:
        raise reader.fail(node, f"assert_measurement needs a value among {', '.join(METRICS)}")
    value = reader.text(entries["value"][1], "value")
    if value not in METRICS:
        raise reader.fail(entries["value"][1], f"value {value!r} is not one of {', '.join(METRICS)}")
    unit = reader.text(entries["unit"][1], "unit") if "unit" in entries else METRICS[value][1]
    limits = _limits(reader, entries["limits"][1]) if "limits" in entries else Limits()
    name = reader.text(entries["name"][1], "name") if "name" in entries else value
    return {"name": name, "value": value, "unit": unit, "limits": limits, **_device(reader, entries)}


_STEP_READERS: dict[str, Callable[[_Reader, yaml.Node, set[str]], dict[str, Any]]] = {
    "advance": _advance, "expect_upload": _expect_upload, "expect_console": _expect_console,
    "set_config": _set_config, "queue_command": _queue_command, "expect_command_result": _expect_command_result,
    "start_ota": _start_ota, "inject": _inject, "power_cut": _power_cut, "assert_measurement": _assert_measurement,
}


# --- measurements a file can assert ---------------------------------------------------------------------


async def _accepted(stack: Any, device: str) -> list[dict[str, Any]]:
    return [u for u in await stack.cloud.uploads(device) if u.get("verdict") == "accepted"]


async def _uploads(stack: Any, device: str) -> float:
    return float(len(await _accepted(stack, device)))


async def _samples(stack: Any, device: str) -> float:
    return float(sum(int(u.get("samples") or 0) for u in await _accepted(stack, device)))


async def _upload_bytes(stack: Any, device: str) -> float:
    uploads = await _accepted(stack, device)
    return sum(int(u.get("bytes") or 0) for u in uploads) / len(uploads) if uploads else 0.0


async def _compression_ratio(stack: Any, device: str) -> float:
    """Raw register bytes (2 per stored value) over the bytes of the decoded packets that carried them."""
    packets = [p for p in await stack.cloud.packets(device) if p.get("status") == "decoded"]
    packed = sum(len(str(p.get("raw_hex") or "")) // 2 for p in packets)
    rows = await stack.cloud.telemetry(device)
    return 2.0 * len(rows) / packed if packed else 0.0


async def _commands_completed(stack: Any, device: str) -> float:
    return float(sum(1 for c in await stack.cloud.commands(device) if c.get("status") == "completed"))


async def _device_time(stack: Any, device: str) -> float:
    return float(stack.clock.now())


async def _faults_injected(stack: Any, device: str) -> float:
    return float(len(stack.faults.log))


METRICS: dict[str, tuple[Callable[[Any, str], Awaitable[float]], str]] = {
    "uploads": (_uploads, "count"),
    "samples": (_samples, "count"),
    "upload_bytes": (_upload_bytes, "B"),
    "compression_ratio": (_compression_ratio, "ratio"),
    "commands_completed": (_commands_completed, "count"),
    "device_time": (_device_time, "s"),
    "faults_injected": (_faults_injected, "count"),
}


# --- running a scenario ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasurementResult:
    name: str
    value: float
    unit: str
    limits: Limits
    verdict: str  # pass, marginal, fail

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "verdict": self.verdict,
                **{k: v for k, v in dataclasses.asdict(self.limits).items() if v is not None}}


@dataclass
class ScenarioResult:
    scenario: str
    steps_run: int = 0
    failure: str | None = None  # the failed step's file:line and why
    measurements: list[MeasurementResult] = field(default_factory=list)
    device_time: float = 0.0

    @property
    def passed(self) -> bool:
        return self.failure is None and all(m.verdict != "fail" for m in self.measurements)

    def raise_for_failure(self) -> None:
        if self.failure is not None:
            raise ScenarioStepFailed(self.failure)
        failed = [m for m in self.measurements if m.verdict == "fail"]
        if failed:
            raise ScenarioStepFailed("measurements outside their limits: " + "; ".join(
                f"{m.name} = {m.value:g} {m.unit} (limits {m.limits.text()})" for m in failed))

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "passed": self.passed, "steps_run": self.steps_run,
                "failure": self.failure, "device_time": self.device_time,
                "measurements": [m.to_json() for m in self.measurements]}


Measure = Callable[[MeasurementResult], object]


class _Run:
    def __init__(self, scenario: Scenario, stack: Any, measure: Measure | None) -> None:
        self.scenario = scenario
        self.stack = stack
        self.measure = measure
        self.commands: dict[str, str] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.result = ScenarioResult(scenario.name)

    def device(self, args: Mapping[str, Any]) -> str:
        device = args.get("device") or self.stack.dut.device_id
        if device not in self.stack.duts:
            raise ScenarioStepFailed(f"no device {device!r} in this stack ({', '.join(self.stack.duts)})")
        return str(device)

    async def until(self, predicate: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
        from harness.clocks import DeviceTimeoutError

        async def reachable() -> Any:
            try:
                return await predicate()
            except OperatorError as error:
                if error.status is not None:  # a refusal, not an unreachable (e.g. killed) cloud
                    raise
                return None

        try:
            return await self.stack.clock.until(reachable, timeout=within, poll=POLL_EVERY)
        except DeviceTimeoutError:
            raise ScenarioStepFailed(f"{what} not within {within:g} s of device time") from None

    async def advance(self, a: Mapping[str, Any]) -> None:
        await self.stack.clock.advance(seconds=a["seconds"])

    async def expect_upload(self, a: Mapping[str, Any]) -> None:
        device = self.device(a)
        target: int = len(await _accepted(self.stack, device)) + int(a["count"])

        async def enough() -> bool:
            return len(await _accepted(self.stack, device)) >= target

        await self.until(enough, a["within"], f"{a['count']} accepted upload(s) from {device}")

    async def expect_console(self, a: Mapping[str, Any]) -> None:
        console = self.stack.duts[self.device(a)].console
        try:
            await console.expect(a["pattern"], timeout=a["within"])
        except TimeoutError as error:
            raise ScenarioStepFailed(str(error)) from None

    async def set_config(self, a: Mapping[str, Any]) -> None:
        await self.stack.cloud.set_config(self.device(a), poll=a.get("poll"), upload=a.get("upload"),
                                          registers=a.get("registers"))

    async def queue_command(self, a: Mapping[str, Any]) -> None:
        answer = await self.stack.cloud.queue_command(self.device(a), a["type"], **a["params"])
        self.commands[a["as"]] = str(answer["command_id"])

    async def expect_command_result(self, a: Mapping[str, Any]) -> None:
        command_id = self.commands[a["command"]]
        wanted = a["status"]

        async def status() -> str | None:
            view = (await self.stack.cloud.command_status(command_id)).get("status") or {}
            now = str(view.get("status"))
            return now if now == wanted or now in FINAL_STATUSES else None

        final = await self.until(status, a["within"], f"command {a['command']} {wanted}")
        if final != wanted:
            raise ScenarioStepFailed(f"command {a['command']} ended {final}, expected {wanted}")

    async def start_ota(self, a: Mapping[str, Any]) -> None:
        await self.stack.cloud.publish_firmware(a["version"], profile=a.get("profile", self.stack.options.profile),
                                                size=a.get("size"))
        await self.stack.cloud.rollout(a["version"], [self.device(a)])

    async def inject(self, a: Mapping[str, Any]) -> None:
        self.start(a["fault"])

    power_cut = inject

    def start(self, fault: ScheduledFault) -> None:
        self.tasks.append(asyncio.ensure_future(inject(fault, self.stack.faults, self.stack.clock)))

    async def assert_measurement(self, a: Mapping[str, Any]) -> None:
        compute, _ = METRICS[a["value"]]
        value = await compute(self.stack, self.device(a))
        limits: Limits = a["limits"]
        measurement = MeasurementResult(a["name"], value, a["unit"], limits, limits.verdict(value))
        self.result.measurements.append(measurement)
        if self.measure is not None:
            self.measure(measurement)

    async def check_faults(self) -> None:
        """A fault that could not be injected is the scenario's failure, not a silent no-op."""
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                error = task.exception()
                raise ScenarioStepFailed(f"a fault could not be injected: {type(error).__name__}: {error}")


async def run_scenario(scenario: Scenario, stack: Any, *, extra_faults: Iterable[ScheduledFault] = (),
                       measure: Measure | None = None) -> ScenarioResult:
    """Run the steps against a started stack (harness.stack.Stack). `extra_faults` are scheduled from the
    start, in device time (a campaign's schedule). A failed expectation ends the run; the result says
    which step and why. Faults still pending are cancelled (a toxic with no duration stays until the
    stack's faults are cleared)."""
    run = _Run(scenario, stack, measure)
    for fault in FaultSchedule(tuple(extra_faults)):
        run.start(fault)
    try:
        for step in scenario.steps:
            try:
                await getattr(run, step.kind)(step.args)
                await run.check_faults()
            except ScenarioStepFailed as error:
                run.result.failure = f"{step.where(scenario)}: {error}"
                break
            except DocumentError as error:
                run.result.failure = f"{step.where(scenario)}: refused: {error}"
                break
            except OperatorError as error:  # the cloud refused the step's request
                run.result.failure = f"{step.where(scenario)}: {error}"
                break
            run.result.steps_run += 1
    finally:
        for task in run.tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*run.tasks, return_exceptions=True)
        run.result.device_time = stack.clock.now()
    return run.result


@dataclass
class StackRun:
    """A scenario run in a stack of its own: the steps' result and the invariants' violations."""

    result: ScenarioResult
    violations: list[Any]
    faults: list[Any]  # what HilFaults injected (InjectedFault)


async def run_in_new_stack(scenario: Scenario, options: Any, directory: Path, clock: Any, *,
                           extra_faults: Iterable[ScheduledFault] = (), measure: Measure | None = None,
                           check_invariants: bool = True) -> StackRun:
    """Start a stack of `options` (with the scenario's own settings) on `clock`'s running loop, run the
    scenario, clear the faults, check the invariants, stop the stack."""
    from harness.stack import Stack

    stack = Stack(scenario.options(options), clock, directory)
    await stack.start()
    try:
        for name, reason in scenario.skip_invariants.items():
            stack.invariants.skip(name, reason)
        result = await run_scenario(scenario, stack, extra_faults=extra_faults, measure=measure)
        await stack.faults.clear()
        violations = list(await stack.invariants.check()) if check_invariants else []
        return StackRun(result, violations, list(stack.faults.log))
    finally:
        await stack.stop()
