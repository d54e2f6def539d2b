"""The run record: what `ecowatt run` leaves behind besides the JUnit XML.

One JSON document per run (`report.json`): every scenario with its verdict and its measurements
(value, unit, limits, pass/fail), and the run's provenance (firmware version and image hash, profile,
seed, DUT and port, board MAC, esptool version, git commit), so a result can be traced back to what
produced it long after the run.

Scenarios record measurements and provenance on their pytest item (`record_measurement`,
`record_provenance`); they travel as `user_properties` with the test reports, so they reach the JUnit
XML as `<property>` elements and the runner as report data, also across pytest processes.

    measurement = record_measurement(request.node, "compression_ratio", 3.1, "x", low=1.5)
    measurement.check()        # AssertionError naming value and limits when outside them

`parse_record(bytes)` reads a record back (DocumentError for anything that is not one).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from protocol.errors import DocumentError

SCHEMA = "ecowatt-hil/run-record/1"
RECORD_FILE = "report.json"
# Property names: `measurement:<name>` (the plugin's `hil_measure` writes the same), `ecowatt.provenance`,
# and the plugin's `hil_<fact>` facts about the stack (profile, seed, logs directory...).
MEASUREMENT_PREFIX = "measurement:"
PROVENANCE_PROPERTY = "ecowatt.provenance"
STACK_FACT_PREFIX = "hil_"

# Verdicts of a scenario, as pytest ends it; "timed_out" is a failure that ran out of (device) time.
VERDICTS = ("passed", "failed", "error", "timed_out", "skipped", "xfailed", "xpassed")
# Provenance that scenarios report about their DUT; the run merges them into one value (or a list).
DUT_PROVENANCE = ("firmware_version", "firmware_sha256", "firmware_profile", "board_mac", "device_id")


# --- measurements ---------------------------------------------------------------------------------


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DocumentError(f"{what} must be a finite number", value)
    return float(value)


def _limit(value: Any, what: str) -> float | None:
    return None if value is None else _number(value, what)


@dataclass(frozen=True)
class Measurement:
    """A named value with its unit and, optionally, the limits it must stay within (inclusive)."""

    name: str
    value: float
    unit: str
    low: float | None = None
    high: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DocumentError("a measurement needs a name", self.name)
        if not isinstance(self.unit, str) or not isinstance(self.description, str):
            raise DocumentError("unit and description must be text", (self.unit, self.description))
        object.__setattr__(self, "value", _number(self.value, f"measurement {self.name}"))
        object.__setattr__(self, "low", _limit(self.low, f"low limit of {self.name}"))
        object.__setattr__(self, "high", _limit(self.high, f"high limit of {self.name}"))
        if self.low is not None and self.high is not None and self.low > self.high:
            raise DocumentError(f"limits of {self.name} are inverted", (self.low, self.high))

    @property
    def verdict(self) -> str:
        """"pass" within the limits, "fail" outside them, "info" when there are none."""
        if self.low is None and self.high is None:
            return "info"
        inside = (self.low is None or self.value >= self.low) and (self.high is None or self.value <= self.high)
        return "pass" if inside else "fail"

    def limits_text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.low is not None and self.high is not None:
            return f"{self.low:g}..{self.high:g}{unit}"
        if self.low is not None:
            return f">= {self.low:g}{unit}"
        if self.high is not None:
            return f"<= {self.high:g}{unit}"
        return "no limits"

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.name} = {self.value:.4g}{unit}"

    def check(self) -> Measurement:
        """Itself when within its limits; AssertionError naming the value and the limits otherwise."""
        if self.verdict == "fail":
            raise AssertionError(f"{self} is outside {self.limits_text()}"
                                 + (f" ({self.description})" if self.description else ""))
        return self

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "low": self.low, "high": self.high,
                "verdict": self.verdict, "description": self.description}

    @classmethod
    def from_json(cls, doc: Any) -> Measurement:
        if not isinstance(doc, Mapping):
            raise DocumentError("a measurement must be an object", doc)
        try:
            return cls(doc["name"], doc["value"], doc.get("unit", ""), doc.get("low"), doc.get("high"),
                       doc.get("description", ""))
        except KeyError as missing:
            raise DocumentError(f"a measurement needs {missing.args[0]}", doc) from None


def record_measurement(node: Any, name: str, value: float, unit: str = "", *, low: float | None = None,
                       high: float | None = None, description: str = "") -> Measurement:
    """Attach a measurement to a pytest item (`request.node`); returns it (call `.check()` to enforce)."""
    measurement = Measurement(name, value, unit, low, high, description)
    node.user_properties.append((MEASUREMENT_PREFIX + name, json.dumps(measurement.to_json(), sort_keys=True)))
    return measurement


def record_provenance(node: Any, **facts: Any) -> None:
    """Attach facts about what the scenario ran against (firmware version and hash, board MAC...)."""
    plain = {key: value for key, value in facts.items() if value is not None}
    node.user_properties.append((PROVENANCE_PROPERTY, json.dumps(plain, sort_keys=True, default=str)))


def properties_of(pairs: Iterable[Any]) -> tuple[list[Measurement], dict[str, Any]]:
    """Measurements and merged provenance from `user_properties` pairs; other properties are ignored,
    unreadable ones raise DocumentError."""
    measurements: list[Measurement] = []
    provenance: dict[str, Any] = {}
    for pair in pairs:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise DocumentError("a property must be a (name, value) pair", pair)
        name, value = pair
        if not isinstance(name, str):
            continue
        if name.startswith(MEASUREMENT_PREFIX):
            measurements.append(Measurement.from_json(_json(value, name)))
        elif name == PROVENANCE_PROPERTY:
            doc = _json(value, name)
            if not isinstance(doc, Mapping):
                raise DocumentError("provenance must be an object", doc)
            provenance.update(doc)
        elif name.startswith(STACK_FACT_PREFIX):
            provenance.setdefault(name.removeprefix(STACK_FACT_PREFIX), str(value))
    return measurements, provenance


def _json(text: Any, what: str) -> Any:
    if not isinstance(text, str | bytes):
        raise DocumentError(f"{what} must be JSON text", text)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise DocumentError(f"{what} is not JSON: {error}", text[:200]) from None


# --- scenarios and the run ------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioResult:
    nodeid: str
    verdict: str
    duration_s: float = 0.0
    ok: bool = True  # False for anything that makes the run fail (a strict XPASS included)
    reason: str = ""  # skip/xfail reason, or the failure's one-line message
    details: str = ""  # the failure's longer text (truncated)
    measurements: tuple[Measurement, ...] = ()
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise DocumentError(f"unknown verdict (known: {', '.join(VERDICTS)})", self.verdict)

    @property
    def name(self) -> str:
        """The scenario as people say it: module and test, without directories."""
        path, sep, rest = self.nodeid.partition("::")
        return f"{Path(path).stem}::{rest}" if sep else Path(path).stem

    def to_json(self) -> dict[str, Any]:
        return {"nodeid": self.nodeid, "name": self.name, "verdict": self.verdict, "ok": self.ok,
                "duration_s": round(self.duration_s, 6), "reason": self.reason, "details": self.details,
                "measurements": [m.to_json() for m in self.measurements], "provenance": dict(self.provenance)}

    @classmethod
    def from_json(cls, doc: Any) -> ScenarioResult:
        if not isinstance(doc, Mapping):
            raise DocumentError("a scenario must be an object", doc)
        nodeid, verdict = doc.get("nodeid"), doc.get("verdict")
        if not isinstance(nodeid, str) or not isinstance(verdict, str):
            raise DocumentError("a scenario needs a nodeid and a verdict", doc)
        measurements = doc.get("measurements", [])
        provenance = doc.get("provenance", {})
        if not isinstance(measurements, list) or not isinstance(provenance, Mapping):
            raise DocumentError("measurements must be a list and provenance an object", doc)
        reason, details = doc.get("reason", ""), doc.get("details", "")
        ok = doc.get("ok", True)
        if not isinstance(reason, str) or not isinstance(details, str) or not isinstance(ok, bool):
            raise DocumentError("reason and details must be text, ok a boolean", doc)
        return cls(nodeid, verdict, _number(doc.get("duration_s", 0.0), "duration_s"), ok, reason, details,
                   tuple(Measurement.from_json(m) for m in measurements), dict(provenance))


@dataclass
class RunRecord:
    started_at: str  # ISO 8601, UTC
    finished_at: str
    duration_s: float
    argv: list[str]
    exit_status: int
    provenance: dict[str, Any]
    scenarios: list[ScenarioResult]
    files: dict[str, str] = field(default_factory=dict)  # what else the report directory holds

    def summary(self) -> dict[str, int]:
        counts = Counter(s.verdict for s in self.scenarios)
        return {verdict: counts.get(verdict, 0) for verdict in VERDICTS}

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "started_at": self.started_at, "finished_at": self.finished_at,
                "duration_s": round(self.duration_s, 3), "argv": self.argv, "exit_status": self.exit_status,
                "summary": self.summary(), "provenance": self.provenance,
                "scenarios": [s.to_json() for s in self.scenarios], "files": self.files}


def parse_record(data: bytes | str) -> RunRecord:
    """A run record from its JSON text; DocumentError if it is not one."""
    doc = _json(data, "the run record")
    if not isinstance(doc, Mapping) or doc.get("schema") != SCHEMA:
        raise DocumentError(f"not a run record ({SCHEMA})", doc if not isinstance(doc, Mapping) else doc.get("schema"))
    scenarios, provenance = doc.get("scenarios"), doc.get("provenance")
    argv, files = doc.get("argv", []), doc.get("files", {})
    if not isinstance(scenarios, list) or not isinstance(provenance, Mapping):
        raise DocumentError("a run record needs scenarios (a list) and provenance (an object)", None)
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or not isinstance(files, Mapping):
        raise DocumentError("argv must be a list of text and files an object", None)
    started, finished, status = doc.get("started_at"), doc.get("finished_at"), doc.get("exit_status")
    if not isinstance(started, str) or not isinstance(finished, str):
        raise DocumentError("started_at and finished_at must be text", (started, finished))
    if isinstance(status, bool) or not isinstance(status, int):
        raise DocumentError("exit_status must be an integer", status)
    return RunRecord(started, finished, _number(doc.get("duration_s", 0.0), "duration_s"), list(argv), status,
                     dict(provenance), [ScenarioResult.from_json(s) for s in scenarios],
                     {str(k): str(v) for k, v in files.items()})


def write_record(record: RunRecord, directory: Path) -> Path:
    """Write `report.json` into `directory` (atomically: a reader never sees half a record)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RECORD_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record.to_json(), indent=2, sort_keys=False, default=str) + "\n")
    os.replace(partial, path)
    return path


# --- provenance -----------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str | None:
    try:
        # --no-optional-locks: reading the state must not rewrite the index of a tree others work in
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def host_provenance(repo: Path) -> dict[str, Any]:
    """What the machine running the harness contributes: versions and the git commit."""
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "esptool_version": _version("esptool"),
        "harness_version": _version("ecowatt-hil"),
        "pytest_version": _version("pytest"),
        "python": platform.python_version(),
        "platform": f"{sys.platform} {platform.machine()}",
    }


def merge_dut_provenance(scenarios: Iterable[ScenarioResult]) -> dict[str, Any]:
    """One value per DUT fact when every scenario agrees, a sorted list when they differ, None when
    no scenario said."""
    seen: dict[str, set[str]] = {key: set() for key in DUT_PROVENANCE}
    for scenario in scenarios:
        for key in DUT_PROVENANCE:
            value = scenario.provenance.get(key)
            if value is not None:
                seen[key].add(str(value))
    merged: dict[str, Any] = {}
    for key, values in seen.items():
        merged[key] = None if not values else next(iter(values)) if len(values) == 1 else sorted(values)
    return merged


def stamp_junit(path: Path, provenance: Mapping[str, Any]) -> None:
    """Add the run's provenance as `<properties>` of every `<testsuite>` of a JUnit XML file."""
    tree = ET.parse(path)
    root = tree.getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for suite in suites:
        properties = suite.find("properties")
        if properties is None:
            properties = ET.Element("properties")
            suite.insert(0, properties)
        for name, value in provenance.items():
            if value is None:
                continue
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            properties.append(ET.Element("property", name=f"ecowatt.{name}", value=text))
    tree.write(path, encoding="utf-8", xml_declaration=True)
