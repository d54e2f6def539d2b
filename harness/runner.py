"""The main job: run scenario suites through pytest and the harness plugin, show it live, leave a report.

    result = run_suite(RunOptions(paths=("scenarios",), profile="spec", seed=1))
    result.exit_status            # pytest's: 0 all good (known defects xfailed included), 1 failures...
    result.report_dir             # junit.xml, report.json, pytest.log, events.jsonl

pytest runs in a child process (a crash or a hung scenario cannot take the runner down, and every
suite gets fresh imports); `harness.run_observer` in the child streams each scenario's start and end
to a file the runner follows for the live display. pytest's own output goes to `pytest.log` in the
report directory. At the end the runner writes the run record (`harness.report`), stamps the run's
provenance into the JUnit XML and prints the summary table and where the report is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from harness.report import (
    RunRecord,
    ScenarioResult,
    host_provenance,
    merge_dut_provenance,
    properties_of,
    stamp_junit,
    write_record,
)
from harness.run_observer import EVENTS_VARIABLE
from protocol.errors import DocumentError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = REPO / "scenarios"
JUNIT_FILE = "junit.xml"
LOG_FILE = "pytest.log"
EVENTS_FILE = "events.jsonl"
POLL_S = 0.1  # how often the runner looks at the child's events (real seconds)
KEY_MEASUREMENTS = 3  # measurements shown per scenario in the summary table
KNOWN_DEFECT = re.compile(r"known defect of [^:]+: (.+?\))")  # harness.known_defects' reason: quirk (section)

VERDICT_STYLES = {
    "passed": ("PASS", "green"),
    "failed": ("FAIL", "bold red"),
    "error": ("ERROR", "bold red"),
    "timed_out": ("TIMED OUT", "bold red"),
    "skipped": ("SKIP", "dim"),
    "xfailed": ("KNOWN DEFECT", "yellow"),
    "xpassed": ("XPASS", "bold magenta"),
}


@dataclass(frozen=True)
class RunOptions:
    paths: tuple[str, ...] = ()  # empty: the default suite (scenarios/)
    dut: str = "emu"
    port: str | None = None
    board_host: str | None = None  # what a board on Wi-Fi reaches this machine at
    profile: str = "spec"
    seed: int = 1
    time: str = "virtual"
    report_dir: Path | None = None  # None: reports/<UTC time>-<profile>
    keyword: str | None = None  # pytest -k
    cloud_db: str | None = None
    pytest_args: tuple[str, ...] = ()  # anything else for pytest

    def suite(self) -> list[Path]:
        return [Path(p).resolve() for p in self.paths] or [DEFAULT_SUITE]

    def harness_args(self) -> list[str]:
        """The harness plugin's options for these settings."""
        args = ["--dut", self.dut, "--profile", self.profile, "--seed", str(self.seed), "--time", self.time]
        if self.port:
            args += ["--port", self.port]
        if self.board_host:
            args += ["--board-host", self.board_host]
        if self.cloud_db:
            args += ["--cloud-db", self.cloud_db]
        return args


@dataclass
class RunResult:
    exit_status: int
    record: RunRecord
    report_dir: Path
    record_path: Path


def default_report_dir(profile: str, now: datetime | None = None) -> Path:
    moment = now or datetime.now(UTC)
    return Path("reports") / f"{moment:%Y%m%d-%H%M%S}-{profile}"


def _rootdir(paths: list[Path]) -> Path:
    """The repository when the suite lives in it (node ids as people know them), else the suite's own
    directory."""
    if all(p == REPO or REPO in p.parents for p in paths):
        return REPO
    common = Path(os.path.commonpath([str(p) for p in paths]))
    return common if common.is_dir() else common.parent


def pytest_command(options: RunOptions, report_dir: Path) -> list[str]:
    """The child's command line: pytest on the suite with the harness options and the observer."""
    paths = options.suite()
    command = [sys.executable, "-m", "pytest", *map(str, paths), "-p", "harness.run_observer",
               "--rootdir", str(_rootdir(paths)), "--junitxml", str(report_dir / JUNIT_FILE),
               "--report", str(report_dir), "--color=no", "-ra", *options.harness_args()]
    config = REPO / "pyproject.toml"
    if config.is_file():  # asyncio mode, markers and timeouts apply to suites outside the repository too
        command += ["-c", str(config)]
    if options.keyword:
        command += ["-k", options.keyword]
    return command + list(options.pytest_args)


class EventFollower:
    """Reads the JSON lines the observer appends, as they arrive (a partial last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as stream:
                stream.seek(self._offset)
                chunk = stream.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events


def _scenario(event: dict[str, Any]) -> ScenarioResult:
    try:
        measurements, provenance = properties_of(event.get("properties") or [])
    except DocumentError as error:
        measurements, provenance = [], {"unreadable_properties": str(error)}
    return ScenarioResult(
        str(event.get("nodeid")), str(event.get("verdict")), float(event.get("duration_s") or 0.0),
        bool(event.get("ok")), str(event.get("reason") or ""), str(event.get("details") or ""),
        tuple(measurements), provenance,
    )


class LiveView:
    """The live progress display: a bar over the collected scenarios, one line per finished one."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)
        self.task = self.progress.add_task("collecting scenarios", total=None)
        self.finished = 0

    @contextlib.contextmanager
    def shown(self) -> Iterator[LiveView]:
        with self.progress:
            yield self

    def on_event(self, event: dict[str, Any]) -> ScenarioResult | None:
        kind = event.get("kind")
        if kind == "collected":
            self.progress.update(self.task, total=len(event.get("nodeids") or []), description="running")
        elif kind == "started":
            self.progress.update(self.task, description=ScenarioResult(str(event.get("nodeid")), "passed").name)
        elif kind == "finished":
            scenario = _scenario(event)
            self.finished += 1
            self.progress.update(self.task, completed=self.finished)
            label, style = VERDICT_STYLES[scenario.verdict]
            line = Text.assemble((f"{label:>12} ", style), scenario.name, (f"  {scenario.duration_s:.1f} s", "dim"))
            if scenario.reason and scenario.verdict != "passed":
                line.append(f"  {scenario.reason[:120]}", style="dim")
            self.progress.console.print(line)
            return scenario
        return None


def summary_table(record: RunRecord) -> Table:
    table = Table(title="EcoWatt HIL run", show_lines=False)
    table.add_column("scenario", overflow="fold")
    table.add_column("verdict")
    table.add_column("time (s)", justify="right")
    table.add_column("key measurements", overflow="fold")
    for scenario in record.scenarios:
        label, style = VERDICT_STYLES[scenario.verdict]
        shown = [f"{m} [{m.limits_text()}]" if m.verdict != "info" else str(m)
                 for m in scenario.measurements[:KEY_MEASUREMENTS]]
        if scenario.verdict in ("xfailed", "skipped") and scenario.reason:
            known = KNOWN_DEFECT.match(scenario.reason)  # the quirk and its section say enough here
            shown.append(known.group(1) if known else scenario.reason[:100])
        # Text, not str: node ids carry "[param]", which rich would take for markup
        table.add_row(Text(scenario.name), Text(label, style=style), f"{scenario.duration_s:.1f}",
                      Text("\n".join(shown)))
    return table


def board_facts(port: str) -> dict[str, Any]:
    """The board's MAC and chip, asked once before the suite runs (esptool resets the board; a
    scenario asking would disturb its own run). Never raises: a failure is recorded instead."""
    try:
        from esptool.cmds import detect_chip

        from harness.serial_urls import install

        install()  # rfc2217:// without pyserial's needless renegotiations (~9 s less per run)
        esp = detect_chip(port, connect_attempts=3)
        try:
            mac = ":".join(f"{b:02x}" for b in esp.read_mac())
            chip = esp.get_chip_description()
        finally:
            with contextlib.suppress(Exception):
                esp.hard_reset()
            with contextlib.suppress(Exception):
                esp._port.close()
    except Exception as error:  # esptool raises its own and the OS's errors for a port that does not answer
        return {"board_query_error": " ".join(str(error).split())[:300] or type(error).__name__}
    return {"board_mac": mac, "board_chip": chip}


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _interrupt(child: subprocess.Popen[bytes]) -> None:
    """Ctrl-C: let pytest end as it does on Ctrl-C (it still writes its JUnit XML), then insist."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def run_suite(options: RunOptions, console: Console | None = None) -> RunResult:
    """Run the suite, show it live, write the report; the exit status is pytest's."""
    console = console or Console()
    report_dir = (options.report_dir or default_report_dir(options.profile)).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    events_path = report_dir / EVENTS_FILE
    events_path.write_bytes(b"")
    command = pytest_command(options, report_dir)
    environment = {**os.environ, EVENTS_VARIABLE: str(events_path)}
    follower = EventFollower(events_path)
    view = LiveView(console)
    finished: dict[str, ScenarioResult] = {}
    exit_status: int | None = None
    started = time.time()  # the runner is a tool, not a component: wall time is what a report says

    def drain() -> None:
        nonlocal exit_status
        for event in follower.read():
            scenario = view.on_event(event)
            if scenario is not None:
                finished[scenario.nodeid] = scenario
            if event.get("kind") == "session_finished":
                exit_status = int(event.get("exit_status", 1))

    console.print(f"[bold]ecowatt run[/]: {', '.join(str(p) for p in options.suite())} "
                  f"(dut {options.dut}, profile {options.profile}, seed {options.seed}, time {options.time})")
    board = board_facts(options.port) if options.dut == "board" and options.port else {}
    with (report_dir / LOG_FILE).open("wb") as log, view.shown():
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=Path.cwd())
        try:
            while child.poll() is None:
                drain()
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            _interrupt(child)
        drain()
    status = child.returncode if exit_status is None else exit_status
    if child.returncode not in (0, status):  # the child died after pytest finished (or before)
        status = child.returncode
    ended = time.time()

    scenarios = list(finished.values())
    provenance: dict[str, Any] = {
        "profile": options.profile, "seed": options.seed, "dut": options.dut, "port": options.port,
        "time": options.time, "suite": [str(p) for p in options.suite()],
        **merge_dut_provenance(scenarios), **host_provenance(REPO),
    }
    provenance.update({key: value for key, value in board.items() if value is not None})
    files = {"log": LOG_FILE, "events": EVENTS_FILE}
    junit = report_dir / JUNIT_FILE
    if junit.is_file():
        with contextlib.suppress(Exception):  # a half-written XML (killed child) keeps its content
            stamp_junit(junit, provenance)
        files["junit"] = JUNIT_FILE
    record = RunRecord(_iso(started), _iso(ended), ended - started, command, status, provenance, scenarios, files)
    record_path = write_record(record, report_dir)
    _print_summary(console, record, report_dir, record_path)
    return RunResult(status, record, report_dir, record_path)


def _print_summary(console: Console, record: RunRecord, report_dir: Path, record_path: Path) -> None:
    if record.scenarios:
        console.print(summary_table(record))
    counts = ", ".join(f"{n} {verdict.replace('_', ' ')}" for verdict, n in record.summary().items() if n)
    verdict = "[green]passed[/]" if record.exit_status == 0 else f"[red]failed (exit status {record.exit_status})[/]"
    console.print(f"{counts or 'no scenarios'} in {record.duration_s:.1f} s: {verdict}")
    console.print(f"report: {report_dir}")
    console.print(f"  record: {record_path}")
    for name in ("junit", "log"):
        if name in record.files:
            console.print(f"  {name}: {report_dir / record.files[name]}")
