"""Scenario files: what QA writes is checked before anything starts (file, line, reason), runs against a
stack on virtual time, and is collected by pytest beside the Python scenarios."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.clocks import parse_time
from harness.fault_schedule import ScheduledFault, parse_duration
from harness.scenario_file import (
    Limits,
    Scenario,
    ScenarioFileError,
    is_scenario_text,
    load_scenario,
    parse_scenario,
    run_in_new_stack,
)
from harness.stack import StackOptions
from protocol.errors import DocumentError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "scenarios" / "yaml").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_example_scenarios_are_valid(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.steps and scenario.horizon() >= 60


def test_a_scenario_reads_into_steps_in_device_time() -> None:
    scenario = parse_scenario(
        "version: 1\nname: demo\nstack: {upload: 30, poll: 5}\nsteps:\n"
        "  - advance: 1h30m\n"
        "  - expect_upload: {count: 2, within: 90s}\n"
        "  - queue_command: {type: set_power, params: {power_value: 40}, as: p}\n"
        "  - expect_command_result: {command: p, status: completed}\n"
        "  - inject: {network: latency, link: sim, latency: 300, after: 10, duration: 2m}\n"
        "  - power_cut: {point: upload.sent, off: 5s}\n", "demo.yaml")
    assert [s.kind for s in scenario.steps] == ["advance", "expect_upload", "queue_command",
                                                "expect_command_result", "inject", "power_cut"]
    assert [s.line for s in scenario.steps] == [5, 6, 7, 8, 9, 10]
    assert scenario.steps[0].args["seconds"] == 5400
    assert scenario.steps[1].args == {"count": 2, "within": 90.0}
    fault = scenario.steps[4].args["fault"]
    assert (fault.family, fault.kind, fault.after, fault.duration) == ("network", "latency", 10.0, 120.0)
    assert fault.parameters == {"link": "sim", "latency": 300}
    assert scenario.steps[5].args["fault"].parameters == {"point": "upload.sent", "off": "5s"}
    assert scenario.options(StackOptions()).upload_s == 30


BAD = [
    ("version: 1\nsteps:\n  - advance: 1m\ncolour: red\n", 4, "unknown key 'colour'"),
    ("version: 2\nsteps:\n  - advance: 1m\n", 1, "version must be 1"),
    ("version: 1\nsteps:\n  - advance: 1m\n  - wait: 5\n", 4, "unknown step 'wait'"),
    ("version: 1\nsteps:\n  - advance: soon\n", 3, "advance is seconds or text"),
    ("version: 1\nsteps:\n  - advance: -4\n", 3, "between 0 and a year"),
    ("version: 1\nsteps:\n  - expect_upload: {count: 0}\n", 3, "count must be a whole number"),
    ("version: 1\nsteps:\n  - expect_upload: {cuont: 2}\n", 3, "unknown key 'cuont' in expect_upload"),
    ("version: 1\nsteps:\n  - set_config:\n      registers: [Vac1, Watts]\n", 4, "no such register"),
    ("version: 1\nsteps:\n  - advance: 1m\n  - expect_command_result: {command: x}\n", 4, "no command 'x'"),
    ("version: 1\nsteps:\n  - expect_console: {pattern: 'up(load'}\n", 3, "not a regular expression"),
    ("version: 1\nsteps:\n  - inject: {network: earthquake}\n", 3, "network fault is a toxic"),
    ("version: 1\nsteps:\n  - inject: {bus: CRC_ERROR, network: latency}\n", 3, "exactly one family"),
    ("version: 1\nsteps:\n  - inject: {bus: CRC_ERROR, count: 0}\n", 3, "count must be a number"),
    ("version: 1\nsteps:\n  - power_cut: {at: 5, point: upload.sent}\n", 3, "not both"),
    ("version: 1\nsteps:\n  - assert_measurement: {value: happiness}\n", 3, "not one of"),
    ("version: 1\nsteps:\n  - assert_measurement:\n      value: uploads\n      limits: {low: 5, high: 1}\n",
     5, "inverted"),
    ("version: 1\nsteps:\n  - assert_measurement:\n      value: uploads\n      limits: {low: 1, high: 3, marginal: 2}\n",
     5, "marginal band covers"),
    ("version: 1\nstack: {profile: beta}\nsteps:\n  - advance: 1m\n", 2, "profile is one of"),
    ("version: 1\nstack: {dut: board}\nsteps:\n  - advance: 1m\n", 2, "unknown key 'dut' in stack"),
    ("version: 1\nstack:\n  timings: {colour: 2}\nsteps:\n  - advance: 1m\n", 3, "unknown key 'colour' in timings"),
    ("version: 1\nrequires: [teleport]\nsteps:\n  - advance: 1m\n", 2, "not a capability"),
    ("version: 1\nmarkers:\n  - smoke\n  - not ok\nsteps:\n  - advance: 1m\n", 4, "is not a name"),
    ("version: 1\nsteps: []\n", 2, "non-empty list"),
    ("version: 1\nsteps:\n  - advance: 1m\n    expect_upload: {}\n", 3, "one key"),
    ("version: 1\nsteps:\n  - advance: [1m\n", 4, "not YAML"),
    ("", 0, "empty"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD, ids=[b[2] for b in BAD])
def test_a_bad_file_is_refused_with_its_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(ScenarioFileError) as refused:
        parse_scenario(text, "qa.yaml")
    assert refused.value.line == line, str(refused.value)
    assert reason in refused.value.reason
    assert str(refused.value).startswith(f"qa.yaml:{line}: " if line else "qa.yaml: ")
    assert isinstance(refused.value, DocumentError)


def test_a_missing_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioFileError, match="cannot read"):
        load_scenario(tmp_path / "nope.yaml")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text_is_a_scenario_or_a_typed_error(text: str) -> None:
    try:
        assert isinstance(parse_scenario(text, "fuzz.yaml"), Scenario)
    except ScenarioFileError as error:
        assert error.path == "fuzz.yaml"


_KEYS = st.sampled_from(["version", "steps", "stack", "advance", "expect_upload", "inject", "count", "within",
                         "network", "bus", "link", "limits", "low", "high", "marginal", "value", "power_cut",
                         "assert_measurement", "set_config", "registers", "upload", "after", "duration"])
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.sampled_from(["1m", "5s", "x", "cloud", "latency", "uploads", "CRC_ERROR", "Vac1", ""]))
_DOCS = st.recursive(_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(_KEYS, inner, max_size=4)), max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _DOCS, max_size=4), st.booleans())
def test_arbitrary_yaml_documents_are_a_scenario_or_a_typed_error(doc: dict[str, object], versioned: bool) -> None:
    if versioned:
        doc = {"version": 1, **doc}
    text = yaml.safe_dump(doc)
    try:
        parse_scenario(text, "fuzz.yaml")
    except ScenarioFileError as error:
        assert error.line >= 0


def test_durations_and_marginal_limits() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25 and parse_duration(7) == 7
    with pytest.raises(DocumentError):
        parse_duration(True)
    limits = Limits(low=10, high=20, marginal_low=12, marginal_high=18)
    assert [limits.verdict(v) for v in (9.9, 10, 11, 15, 19, 20, 20.1)] == \
        ["fail", "marginal", "marginal", "pass", "marginal", "marginal", "fail"]


def test_a_fault_round_trips_through_its_written_form() -> None:
    fault = ScheduledFault.from_json({"cloud": "http_503", "probability": 0.5, "after": "1m", "duration": 30})
    assert ScheduledFault.from_json(fault.to_json()) == fault
    assert fault.after == 60


def test_only_yaml_with_steps_is_a_scenario() -> None:
    assert is_scenario_text("version: 1\nsteps: []\n")
    assert not is_scenario_text("version: 1\nprofile: spec\ndefects: []\n")


def test_a_scenario_runs_against_the_stack_on_virtual_time(tmp_path: Path) -> None:
    scenario = parse_scenario(
        "version: 1\nstack: {upload: 60, poll: 5}\nsteps:\n"
        "  - expect_upload: {count: 2, within: 4m}\n"
        "  - inject: {network: partition, link: cloud, duration: 2m}\n"
        "  - advance: 3m\n"
        "  - expect_upload: {count: 1, within: 3m}\n"
        "  - assert_measurement: {name: accepted, value: uploads, limits: {low: 1, high: 1000, marginal_low: 100}}\n"
        "  - assert_measurement: {value: faults_injected, limits: {low: 1}}\n", "run.yaml")
    recorded = []
    clock = parse_time("virtual")
    loop = clock.new_event_loop()
    try:
        outcome = loop.run_until_complete(run_in_new_stack(scenario, StackOptions(), tmp_path, clock,
                                                           measure=recorded.append))
    finally:
        loop.close()
    assert outcome.result.failure is None and outcome.result.steps_run == 6
    assert outcome.violations == []
    accepted, faults = outcome.result.measurements
    assert accepted.value >= 3 and accepted.verdict == "marginal"  # inside 1..1000 but below the band at 100
    assert faults.value >= 1 and faults.verdict == "pass"
    assert recorded == outcome.result.measurements
    assert any(f.family == "network" and f.what == "partition" for f in outcome.faults)


def test_a_failed_expectation_names_the_step(tmp_path: Path) -> None:
    scenario = parse_scenario("version: 1\nstack: {upload: 600}\nsteps:\n  - advance: 10s\n"
                              "  - expect_upload: {count: 1, within: 60}\n", "late.yaml")
    clock = parse_time("virtual")
    loop = clock.new_event_loop()
    try:
        outcome = loop.run_until_complete(run_in_new_stack(scenario, StackOptions(), tmp_path, clock,
                                                           check_invariants=False))
    finally:
        loop.close()
    assert outcome.result.steps_run == 1
    assert outcome.result.failure is not None and outcome.result.failure.startswith("late.yaml:5: expect_upload")
    assert not outcome.result.passed


# Once registered as a pytest11 entry point it loads by itself; naming it again would register it twice.
_YAML_PLUGIN = () if any(e.value == "harness.yaml_plugin" for e in entry_points(group="pytest11")) \
    else ("-p", "harness.yaml_plugin")


def test_pytest_collects_scenario_files_and_reports_bad_ones_by_line(tmp_path: Path) -> None:
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "good.yaml").write_text(
        "version: 1\nname: quick upload\nmarkers: [smoke]\nstack: {upload: 30, poll: 5}\nsteps:\n"
        "  - expect_upload: {count: 1, within: 2m}\n"
        "  - assert_measurement: {value: uploads, limits: {low: 1, marginal: 50}}\n", encoding="utf-8")
    (tmp_path / "scenarios" / "bad.yaml").write_text(
        "version: 1\nsteps:\n  - advance: 1m\n  - expect_upload: {count: many}\n", encoding="utf-8")
    (tmp_path / "scenarios" / "known_defects.yaml").write_text("version: 1\ndefects: []\n", encoding="utf-8")
    ran = subprocess.run([sys.executable, "-m", "pytest", *_YAML_PLUGIN, "-p", "no:cacheprovider",
                          "-rA", "--continue-on-collection-errors", "--junitxml", str(tmp_path / "junit.xml"),
                          "scenarios"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = ran.stdout
    assert "PASSED scenarios/good.yaml::quick_upload" in out, out[-3000:]
    assert "bad.yaml:4: count must be a whole number" in out
    assert "known_defects" not in out
    assert re.search(r"1 passed, .*1 error", out)
    junit = (tmp_path / "junit.xml").read_text()
    assert "measurement:uploads" in junit and "marginal" in junit  # the measurement reached the report
