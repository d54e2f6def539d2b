"""The known-defects file: what it accepts, what it refuses (with the reason), and that the suite's own
file is valid and names real scenarios and real quirks."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.known_defects import load_known_defects, mark_known_defects, parse_known_defects
from protocol.errors import DocumentError

SUITE = Path(__file__).resolve().parents[2] / "scenarios"

VALID = """
version: 1
profile: reference-1.0.4
defects:
  - scenario: test_config.py::test_applied_without_reboot
    quirk: config_never_applied_at_runtime
    spec: "§5.3, §11.2.9"
    why: applied only after a reboot
  - scenario: test_power.py::test_average_current[managed]
    quirk: profile.power_policy
    spec: "§8.1"
    why: no power management
"""


def test_a_valid_file_names_scenarios_quirks_and_sections(tmp_path: Path) -> None:
    known = parse_known_defects(VALID, tmp_path)
    assert known.profile == "reference-1.0.4"
    first, second = known.defects
    assert (first.module, first.test, first.quirk) == ("test_config.py", "test_applied_without_reboot",
                                                        "config_never_applied_at_runtime")
    assert "config_never_applied_at_runtime" in first.reason(known.profile)
    assert "§5.3, §11.2.9" in first.reason(known.profile)
    assert first.matches("test_applied_without_reboot") and first.matches("test_applied_without_reboot[x]")
    assert second.matches("test_average_current[managed]") and not second.matches("test_average_current[on]")


@pytest.mark.parametrize(("text", "complaint"), [
    ("version: 2\nprofile: reference-1.0.4\ndefects: []", "version must be 1"),
    ("version: 1\nprofile: nightly\ndefects: []", "profile must be one of"),
    ("version: 1\nprofile: reference-1.0.4\ndefects: []\nextra: 1", "unknown keys"),
    ("version: 1\nprofile: reference-1.0.4\ndefects:\n - scenario: a.py::t\n   quirk: no_such_quirk\n"
     "   spec: x\n   why: y", "no quirk 'no_such_quirk'"),
    ("version: 1\nprofile: spec\ndefects:\n - scenario: a.py::t\n   quirk: base64_unpadded\n"
     "   spec: x\n   why: y", "is off in profile spec"),
    ("version: 1\nprofile: reference-1.0.4\ndefects:\n - scenario: a.py\n   quirk: base64_unpadded\n"
     "   spec: x\n   why: y", "MODULE.py::TEST"),
    ("version: 1\nprofile: reference-1.0.4\ndefects:\n - scenario: ../a.py::t\n   quirk: base64_unpadded\n"
     "   spec: x\n   why: y", "inside the suite"),
    ("version: 1\nprofile: reference-1.0.4\ndefects:\n - scenario: a.py::t\n   quirk: base64_unpadded\n"
     "   why: y", "`spec` must be non-empty text"),
    ("version: 1\nprofile: reference-1.0.4\ndefects:\n - scenario: a.py::t\n   quirk: profile.colour\n"
     "   spec: x\n   why: y", "no profile field 'colour'"),
    ("version: 1\nprofile: reference-1.0.4\ndefects:\n - {scenario: a.py::t, quirk: base64_unpadded, spec: x,"
     " why: y}\n - {scenario: a.py::t, quirk: base64_unpadded, spec: x, why: y}", "listed twice"),
    ("[1, 2", "not YAML"),
])
def test_a_bad_file_is_refused_with_its_reason(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(DocumentError, match=complaint.replace("(", r"\(").replace("[", r"\[")):
        parse_known_defects(text, tmp_path)


@given(st.binary(max_size=200))
def test_any_bytes_give_known_defects_or_a_document_error(data: bytes) -> None:
    with contextlib.suppress(DocumentError):
        parse_known_defects(data, Path("."))


def test_a_module_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "known_defects.yaml"
    path.write_text(VALID)
    with pytest.raises(DocumentError, match="no module test_config.py"):
        load_known_defects(path)


def _item(path: Path, name: str) -> SimpleNamespace:
    item = SimpleNamespace(path=path, name=name, markers=[])
    item.add_marker = item.markers.append
    return item


def test_items_are_marked_strict_xfail_only_on_the_files_profile(tmp_path: Path) -> None:
    known = parse_known_defects(VALID, tmp_path)
    applied = _item(tmp_path / "test_config.py", "test_applied_without_reboot")
    other = _item(tmp_path / "test_config.py", "test_idempotent")
    assert mark_known_defects([applied, other], known, "spec") == []
    assert mark_known_defects([applied, other], known, "reference-1.0.4") == [applied]
    xfail = next(m for m in applied.markers if m.name == "xfail")
    assert xfail.kwargs["strict"] is True and "config_never_applied_at_runtime" in xfail.kwargs["reason"]
    assert other.markers == []


def test_a_renamed_scenario_is_an_error_not_a_vanished_defect(tmp_path: Path) -> None:
    known = parse_known_defects(VALID, tmp_path)
    renamed = _item(tmp_path / "test_config.py", "test_applied_at_once")
    with pytest.raises(DocumentError, match="test_config.py::test_applied_without_reboot"):
        mark_known_defects([renamed], known, "reference-1.0.4")


def test_the_suites_file_is_valid() -> None:
    known = load_known_defects(SUITE / "known_defects.yaml")
    assert known.profile == "reference-1.0.4" and known.defects
