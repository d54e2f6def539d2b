"""A pytest plugin that tells `ecowatt run` what happens, as it happens (`-p harness.run_observer`).

The runner starts pytest in a child process with `ECOWATT_RUN_EVENTS=<file>`; this plugin appends one
JSON line per event to that file, which the runner follows for its live display and its record:

    {"kind": "collected", "nodeids": [...]}
    {"kind": "started", "nodeid": ...}
    {"kind": "finished", "nodeid": ..., "verdict": ..., "ok": ..., "duration_s": ..., "reason": ...,
     "details": ..., "properties": [[name, value], ...]}
    {"kind": "session_finished", "exit_status": N}

Without the variable the plugin does nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import IO, Any

import pytest

EVENTS_VARIABLE = "ECOWATT_RUN_EVENTS"
DETAILS_LIMIT = 4000
TIMEOUT_MARKERS = ("DeviceTimeoutError", "Failed: Timeout >")  # device time ran out; pytest-timeout
STRICT_XPASS = "[XPASS(strict)]"


@dataclass
class _Phases:
    reports: list[pytest.TestReport] = field(default_factory=list)


def _reason(report: pytest.TestReport) -> tuple[str, str]:
    """A one-line reason and the longer text of a report."""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: "), ""
    text = report.longreprtext or ""
    crash = getattr(report.longrepr, "reprcrash", None)
    line = crash.message if crash is not None else (text.strip().splitlines() or [""])[-1]
    return " ".join(str(line).split())[:300], text[-DETAILS_LIMIT:]


def verdict_of(reports: list[pytest.TestReport]) -> dict[str, Any]:
    """The scenario's verdict from its setup/call/teardown reports."""
    by_phase = {r.when: r for r in reports}
    call = by_phase.get("call")
    setup = by_phase.get("setup")
    duration = sum(r.duration for r in reports)
    properties = [list(p) for r in reports for p in r.user_properties]
    properties = [p for i, p in enumerate(properties) if p not in properties[:i]]  # phases repeat them
    main = call if call is not None else setup
    verdict, ok, reason, details = "passed", True, "", ""
    if main is not None and hasattr(main, "wasxfail"):
        verdict = "xfailed" if main.skipped else "xpassed"
        ok = not main.failed
        reason = str(main.wasxfail) if main.skipped else f"XPASS: {main.wasxfail}"
        if main.failed:
            reason, details = _reason(main)
    elif main is not None and main.skipped:
        verdict = "skipped"
        reason, _ = _reason(main)
    elif main is not None and main.failed and main.longreprtext.startswith(STRICT_XPASS):
        # xfail(strict=True) that passed: the expected defect did not show (fixed, or the scenario broke)
        verdict, ok, reason = "xpassed", False, main.longreprtext
    elif main is not None and main.failed:
        verdict = "failed" if main.when == "call" else "error"
        ok = False
        reason, details = _reason(main)
        if any(marker in main.longreprtext for marker in TIMEOUT_MARKERS):
            verdict = "timed_out"
    broken_teardown = by_phase.get("teardown")
    if broken_teardown is not None and broken_teardown.failed and ok:
        verdict, ok = "error", False
        reason, details = _reason(broken_teardown)
    return {"verdict": verdict, "ok": ok, "duration_s": duration, "reason": reason, "details": details,
            "properties": properties}


class RunObserver:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.phases: dict[str, _Phases] = {}

    def emit(self, **event: Any) -> None:
        self.stream.write(json.dumps(event, default=str) + "\n")
        self.stream.flush()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.emit(kind="collected", nodeids=[item.nodeid for item in session.items])

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.emit(kind="started", nodeid=nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.phases.setdefault(report.nodeid, _Phases()).reports.append(report)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        phases = self.phases.pop(nodeid, _Phases())
        self.emit(kind="finished", nodeid=nodeid, **verdict_of(phases.reports))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, exitstatus: int) -> None:
        self.emit(kind="session_finished", exit_status=int(exitstatus))

    def pytest_unconfigure(self) -> None:
        self.stream.close()


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(EVENTS_VARIABLE)
    if path and not hasattr(config, "workerinput"):  # xdist workers report through the controller
        stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed at pytest_unconfigure
        config.pluginmanager.register(RunObserver(stream), "ecowatt-run-observer")
