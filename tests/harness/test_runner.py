"""`ecowatt run` on a tiny scenario directory: the live lines, the summary table, the exit status, the
JUnit XML and the JSON record with measurements, limits and provenance; known defects as strict xfails."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import pytest

from harness.report import parse_record

REPO = Path(__file__).resolve().parents[2]

PASSING = '''
from harness.report import record_measurement, record_provenance


def test_compression(request):
    record_provenance(request.node, firmware_version="1.1.0", firmware_sha256="ab" * 32,
                      board_mac="24:0a:c4:00:00:01")
    record_measurement(request.node, "compression_ratio", 2.5, "x", low=1.5).check()


async def test_on_the_loop():
    import asyncio
    await asyncio.sleep(0)
'''

FAILING = '''
from harness.report import record_measurement


def test_too_much_current(request):
    record_measurement(request.node, "average_current", 42.0, "mA", high=30.0).check()
'''

KNOWN = '''
def test_defect_shows():
    assert False, "the configuration waits for a reboot"


def test_defect_fixed():
    pass


def test_unrelated():
    pass
'''

DEFECTS = '''
version: 1
profile: reference-1.0.4
defects:
  - scenario: test_known.py::test_defect_shows
    quirk: config_never_applied_at_runtime
    spec: "§5.3, §11.2.9"
    why: applied only after a reboot
  - scenario: test_known.py::test_defect_fixed
    quirk: ota_restarts_from_chunk_0
    spec: "§7.3"
    why: no resume
'''

CONFTEST = '''
from pathlib import Path

import pytest

from harness.known_defects import load_known_defects, mark_known_defects


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    known = load_known_defects(Path(__file__).parent / "known_defects.yaml")
    mark_known_defects(items, known, config.getoption("--profile"))
'''


def ecowatt_run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "harness.run_cli", "run", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=environment, check=False)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    directory = tmp_path / "suite"
    directory.mkdir()
    (directory / "test_upload.py").write_text(PASSING)
    return directory


def test_a_passing_suite_exits_0_with_summary_junit_and_record(tmp_path: Path, suite: Path) -> None:
    report = tmp_path / "report"
    done = ecowatt_run(suite, "--report", report, "--seed", "7")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "test_upload::test_compression" in out and "PASS" in out
    assert "compression_ratio = 2.5 x [>= 1.5 x]" in out  # the key measurement in the summary table
    assert f"report: {report}" in out and "2 passed" in out

    suites = ET.parse(report / "junit.xml").getroot()
    cases = [c.get("name") for c in suites.iter("testcase")]
    assert cases == ["test_compression", "test_on_the_loop"]
    properties = {p.get("name"): p.get("value") for p in suites.iter("property")}
    assert properties["ecowatt.seed"] == "7" and properties["ecowatt.board_mac"] == "24:0a:c4:00:00:01"
    assert '"compression_ratio"' in properties["measurement:compression_ratio"]

    record = parse_record((report / "report.json").read_bytes())
    assert record.exit_status == 0 and record.summary()["passed"] == 2
    provenance = record.provenance
    assert (provenance["profile"], provenance["seed"], provenance["dut"]) == ("spec", 7, "emu")
    assert provenance["firmware_version"] == "1.1.0" and provenance["firmware_sha256"] == "ab" * 32
    assert provenance["esptool_version"] == metadata.version("esptool")
    head = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    assert provenance["git_commit"] == (head or None)
    measured = record.scenarios[0].measurements[0]
    assert (measured.name, measured.value, measured.unit, measured.low, measured.verdict) == (
        "compression_ratio", 2.5, "x", 1.5, "pass")
    assert (report / "pytest.log").read_text().count("passed") >= 1


def test_a_measurement_outside_its_limits_fails_the_run(tmp_path: Path, suite: Path) -> None:
    (suite / "test_power.py").write_text(FAILING)
    report = tmp_path / "report"
    done = ecowatt_run(suite, "--report", report)
    assert done.returncode == 1
    assert "FAIL" in done.stdout and "average_current = 42 mA is outside <= 30 mA" in done.stdout
    record = parse_record((report / "report.json").read_bytes())
    failed = next(s for s in record.scenarios if s.verdict == "failed")
    assert failed.name == "test_power::test_too_much_current" and not failed.ok
    assert failed.measurements[0].verdict == "fail"
    assert "outside" in failed.reason


def test_known_defects_are_strict_xfails_on_their_profile_only(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_known.py").write_text(KNOWN)
    (suite / "known_defects.yaml").write_text(DEFECTS)
    (suite / "conftest.py").write_text(CONFTEST)

    report = tmp_path / "reference"
    done = ecowatt_run(suite, "--profile", "reference-1.0.4", "--report", report)
    verdicts = {s.name: s.verdict for s in parse_record((report / "report.json").read_bytes()).scenarios}
    assert verdicts == {"test_known::test_defect_shows": "xfailed",  # the defect showed: expected
                        "test_known::test_defect_fixed": "xpassed",  # it did not: the run fails
                        "test_known::test_unrelated": "passed"}
    assert done.returncode == 1
    assert "KNOWN DEFECT" in done.stdout and "config_never_applied_at_runtime" in done.stdout

    report = tmp_path / "spec"
    done = ecowatt_run(suite, "--profile", "spec", "--report", report)
    verdicts = {s.name: s.verdict for s in parse_record((report / "report.json").read_bytes()).scenarios}
    assert verdicts["test_known::test_defect_shows"] == "failed" and done.returncode == 1


def test_a_missing_path_is_refused_before_anything_runs(tmp_path: Path) -> None:
    done = ecowatt_run(tmp_path / "nowhere")
    assert done.returncode == 2 and "no such scenario path" in done.stderr


def test_an_empty_suite_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = ecowatt_run(tmp_path / "empty", "--report", tmp_path / "report")
    assert done.returncode == 5  # pytest: no tests collected
    assert "no scenarios" in done.stdout


def test_with_a_board_the_record_names_its_mac_asked_once_through_esptool(tmp_path: Path, suite: Path) -> None:
    """The emulator's serial endpoint stands in for the board: the runner asks it (real esptool over
    rfc2217) for its MAC before the suite runs."""
    mac = "24:0a:c4:12:34:56"
    board = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "device", "run", "--cloud", "http://127.0.0.1:9",
         "--inverter", "http://127.0.0.1:9", "--serial", "rfc2217://127.0.0.1:0", "--mac", mac,
         "--state-dir", str(tmp_path / "board"), "--quiet"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert board.stdout is not None
        port = None
        for _ in range(20):
            line = board.stdout.readline()
            if line.startswith("listening on rfc2217://"):
                port = line.removeprefix("listening on ").strip()
                break
        assert port, "the emulator's serial endpoint did not come up"
        report = tmp_path / "report"
        done = ecowatt_run(suite, "--dut", "board", "--port", port, "--report", report)
    finally:
        board.terminate()
        board.wait(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    provenance = parse_record((report / "report.json").read_bytes()).provenance
    assert provenance["board_mac"] == mac and provenance["port"] == port
    assert provenance["board_chip"].startswith("ESP32")
