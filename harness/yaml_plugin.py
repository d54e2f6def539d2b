"""pytest plugin: scenario files (YAML, `version: 1` with `steps`) under a `scenarios/` directory are
collected as test items beside the Python modules, and run with the same options (--profile, --time,
--seed, --dut ...) and the same invariants as `hil_stack` tests.

A file that cannot run is a collection error naming its file, line and reason, before any scenario
starts. Other YAML files there (known_defects.yaml) are not scenarios and are left alone. A scenario's
`markers` become pytest markers (so `-m "not slow"` and known-defect marking apply) and its `requires`
the DUT capabilities the harness plugin checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.scenario_file import (
    MeasurementResult,
    Scenario,
    ScenarioFileError,
    ScenarioStepFailed,
    is_scenario_text,
    load_scenario,
)

SUFFIXES = (".yaml", ".yml")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in SUFFIXES or "scenarios" not in file_path.parts:
        return None
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not is_scenario_text(text):
        return None
    collector: pytest.Collector = ScenarioFile.from_parent(parent, path=file_path)
    return collector


class ScenarioFile(pytest.File):
    def collect(self) -> list[pytest.Item]:
        try:
            scenario = load_scenario(self.path)
        except ScenarioFileError as error:
            raise self.CollectError(str(error)) from None
        return [ScenarioItem.from_parent(self, name=_slug(scenario.name), scenario=scenario)]


def _slug(name: str) -> str:
    return "_".join(name.split()) or "scenario"


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: Scenario, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        for marker in scenario.markers:
            self.add_marker(marker)
        if scenario.requires:
            self.add_marker(pytest.mark.requires(*scenario.requires))

    def runtest(self) -> None:
        from harness.invariants import InvariantViolation
        from harness.pytest_plugin import ClockLoopFactory, clock_of, stack_options, time_mode
        from harness.scenario_file import run_in_new_stack

        loop = ClockLoopFactory(time_mode(self.config))()
        clock = clock_of(loop)
        options = stack_options(self.config, None)
        # pytest's per-run temp directory (what tmp_path uses), for an item without fixtures
        directory = self.config._tmp_path_factory.mktemp(self.name[:40])  # type: ignore[attr-defined]
        try:
            outcome = loop.run_until_complete(
                run_in_new_stack(self.scenario, options, directory / "hil", clock, measure=self._record))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        self.user_properties += [("hil_profile", self.scenario.options(options).profile),
                                 ("hil_seed", str(options.seed)), ("hil_time", clock.mode)]
        outcome.result.raise_for_failure()
        if outcome.violations:
            raise InvariantViolation(outcome.violations)

    def _record(self, measurement: MeasurementResult) -> None:
        from harness.report import record_measurement

        limits = measurement.limits
        note = "marginal: inside the limits but in the marginal band" if measurement.verdict == "marginal" else ""
        record_measurement(self, measurement.name, measurement.value, measurement.unit, low=limits.low,
                           high=limits.high, description=note)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from harness.invariants import InvariantViolation

        if isinstance(excinfo.value, ScenarioStepFailed | InvariantViolation):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario: {self.scenario.name}"
