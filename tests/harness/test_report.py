"""The run record: measurements with limits, provenance merging, JUnit stamping, and reading a record
back from bytes (a value or a DocumentError, whatever the bytes)."""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.report import (
    Measurement,
    RunRecord,
    ScenarioResult,
    merge_dut_provenance,
    parse_record,
    properties_of,
    record_measurement,
    record_provenance,
    stamp_junit,
    write_record,
)
from protocol.errors import DocumentError


def test_a_measurement_outside_its_limits_fails_with_value_and_limits() -> None:
    inside = Measurement("compression_ratio", 3.2, "x", low=1.5)
    assert inside.verdict == "pass" and inside.check() is inside
    outside = Measurement("average_current", 42.0, "mA", high=30.0, description="power-managed")
    assert outside.verdict == "fail"
    with pytest.raises(AssertionError, match=r"average_current = 42 mA is outside <= 30 mA \(power-managed\)"):
        outside.check()
    assert Measurement("uploads", 12, "").verdict == "info"
    assert Measurement("x", 5.0, "V", low=5.0, high=5.0).verdict == "pass"  # limits are inclusive


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "3", True, None])
def test_a_measurement_must_be_a_finite_number(value: object) -> None:
    with pytest.raises(DocumentError):
        Measurement("x", value, "V")  # type: ignore[arg-type]


def test_inverted_limits_are_refused() -> None:
    with pytest.raises(DocumentError, match="inverted"):
        Measurement("x", 1.0, "V", low=2.0, high=1.0)


def test_measurements_and_provenance_travel_as_user_properties() -> None:
    node = SimpleNamespace(user_properties=[("other", "kept out"), ("hil_seed", "7")])
    record_measurement(node, "ratio", 2.5, "x", low=1.0)
    record_provenance(node, firmware_version="1.1.0", board_mac=None)
    record_provenance(node, board_mac="24:0a:c4:00:00:01")
    # what the plugin's hil_measure writes: the same property name, its own extra fields
    node.user_properties.append(("measurement:current", json.dumps(
        {"name": "current", "value": 12.0, "unit": "mA", "low": None, "high": 30.0, "passed": True,
         "limits": "x <= 30"})))
    measurements, provenance = properties_of(node.user_properties)
    assert measurements == [Measurement("ratio", 2.5, "x", low=1.0), Measurement("current", 12.0, "mA", high=30.0)]
    assert provenance == {"firmware_version": "1.1.0", "board_mac": "24:0a:c4:00:00:01", "seed": "7"}


def test_the_run_states_dut_facts_once_when_scenarios_agree_and_all_of_them_when_not() -> None:
    scenarios = [
        ScenarioResult("a.py::t1", "passed", provenance={"firmware_version": "1.1.0", "board_mac": "m"}),
        ScenarioResult("a.py::t2", "passed", provenance={"firmware_version": "1.2.0", "board_mac": "m"}),
        ScenarioResult("a.py::t3", "skipped"),
    ]
    merged = merge_dut_provenance(scenarios)
    assert merged["board_mac"] == "m"
    assert merged["firmware_version"] == ["1.1.0", "1.2.0"]
    assert merged["firmware_sha256"] is None


def _record() -> RunRecord:
    scenario = ScenarioResult("scenarios/test_upload.py::test_ratio", "passed", 1.5, True,
                              measurements=(Measurement("ratio", 2.0, "x", low=1.2),),
                              provenance={"firmware_version": "1.1.0"})
    known = ScenarioResult("scenarios/test_config.py::test_applied", "xfailed", 0.5, True,
                           reason="known defect of reference-1.0.4: config_never_applied_at_runtime")
    return RunRecord("2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z", 60.0, ["pytest"], 0,
                     {"profile": "spec", "seed": 1}, [scenario, known], {"junit": "junit.xml"})


def test_a_written_record_reads_back_the_same(tmp_path: Path) -> None:
    record = _record()
    path = write_record(record, tmp_path / "report")
    again = parse_record(path.read_bytes())
    assert again.to_json() == record.to_json()
    assert again.summary()["passed"] == 1 and again.summary()["xfailed"] == 1
    assert again.scenarios[0].name == "test_upload::test_ratio"
    assert json.loads(path.read_text())["scenarios"][0]["measurements"][0]["verdict"] == "pass"


def test_not_a_record_is_a_document_error() -> None:
    with pytest.raises(DocumentError, match="not a run record"):
        parse_record(b'{"schema": "something else"}')
    broken = _record().to_json()
    broken["scenarios"][0]["verdict"] = "great"
    with pytest.raises(DocumentError, match="unknown verdict"):
        parse_record(json.dumps(broken))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=300))
def test_any_bytes_give_a_record_or_a_document_error(data: bytes) -> None:
    with contextlib.suppress(DocumentError):
        parse_record(data)


@given(json_values)
def test_any_json_gives_a_record_or_a_document_error(doc: object) -> None:
    with contextlib.suppress(DocumentError):
        parse_record(json.dumps(doc))


@given(st.dictionaries(st.sampled_from(["schema", "scenarios", "provenance", "argv", "files", "started_at",
                                         "finished_at", "exit_status", "duration_s"]), json_values))
def test_a_record_with_any_field_values_is_read_or_refused(fields: dict[str, object]) -> None:
    doc = {**_record().to_json(), **fields}
    with contextlib.suppress(DocumentError):
        parse_record(json.dumps(doc))


@given(st.lists(st.tuples(st.sampled_from(["measurement:x", "ecowatt.provenance", "hil_seed", "x"]),
                          st.text(max_size=40) | json_values.map(json.dumps)), max_size=5))
def test_any_properties_give_values_or_a_document_error(pairs: list[tuple[str, str]]) -> None:
    with contextlib.suppress(DocumentError):
        properties_of(pairs)


def test_junit_gets_the_runs_provenance(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="1">'
                     '<testcase classname="a" name="t"/></testsuite></testsuites>')
    stamp_junit(junit, {"git_commit": "abc123", "seed": 7, "board_mac": None})
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties == {"ecowatt.git_commit": "abc123", "ecowatt.seed": "7"}
    assert suite.find("testcase") is not None
