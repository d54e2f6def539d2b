"""The pytest plugin seen from a test suite: capability skips, the virtual-time loop, invariants and
measurements after the test body, fail patterns that stop a test at once (pytest run with pytester)."""

from __future__ import annotations

import pytest

# Imported here, once: pytester's in-process runs forget modules they imported themselves, and the
# stack's dependencies (cryptography's bindings, pvlib) cannot be imported twice in one process.
import device_emulator.device  # noqa: F401
import harness.stack  # noqa: F401
import sim_inverter.service  # noqa: F401

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".ini", pytest=INI)
    return pytester


def test_tests_needing_what_the_dut_lacks_are_skipped_with_the_reason(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.requires_board
        def test_board_only(): pass

        @pytest.mark.requires("flash")
        def test_flash(): pass

        @pytest.mark.requires_power_cut
        def test_cut(): pass
        """
    )
    emulated = suite.runpytest("-rs")
    emulated.assert_outcomes(passed=1, skipped=2)
    emulated.stdout.fnmatch_lines(["*needs a real board (--dut board --port PORT)*",
                                   "*the in-process emulator DUT lacks flash*"])
    board = suite.runpytest("-rs", "--dut", "board", "--port", "/dev/null", "-k", "cut or board")
    board.assert_outcomes(passed=1, skipped=1)
    board.stdout.fnmatch_lines(["*the board DUT lacks power_cut*"])


def test_hil_tests_run_on_virtual_time_and_others_on_the_ordinary_loop(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import asyncio, time
        import pytest
        from harness.virtual_time import VirtualTimeLoop

        async def test_plain():
            assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)

        @pytest.mark.hil
        async def test_marked():
            started = time.monotonic()
            await asyncio.sleep(3600)
            assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
            assert time.monotonic() - started < 5
        """
    )
    suite.runpytest().assert_outcomes(passed=2)


BROKEN = """
import pytest

@pytest.mark.hil(upload=30, quirks={"drop_every_third_upload": True})
async def test_loses_uploads(hil_clock):
    await hil_clock.advance(minutes=2)

@pytest.mark.hil(upload=30, quirks={"drop_every_third_upload": True})
@pytest.mark.xfail(strict=True, reason="known defect: loses uploads")
async def test_known_defect(hil_clock):
    await hil_clock.advance(minutes=2)
"""


def test_an_invariant_violation_fails_the_test_itself_so_xfail_covers_it(suite: pytest.Pytester) -> None:
    suite.makepyfile(BROKEN)
    result = suite.runpytest()
    result.assert_outcomes(failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*InvariantViolation: invariants violated:*",
                                 "*[[]conservation[]] ESP32_EcoWatt_Smart: * samples the device accepted are not in the cloud*",
                                 "*seq * at t=*"])


def test_measurements_carry_units_and_limits_into_junit(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        def test_in_limits(hil_measure):
            hil_measure("compression_ratio", 3.2, "ratio", low=2.0)

        def test_out_of_limits(hil_measure):
            hil_measure("average_current", 81.5, "mA", high=60)
        """
    )
    result = suite.runpytest("--junitxml=report.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*average_current = 81.5 mA is outside <= 60 mA*"])
    xml = (suite.path / "report.xml").read_text()
    assert 'name="measurement:compression_ratio"' in xml and "&quot;unit&quot;: &quot;ratio&quot;" in xml


def test_a_fail_pattern_on_the_console_stops_the_test_at_once(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        async def test_panics(hil_dut, hil_clock):
            await hil_clock.advance(seconds=5)
            hil_dut.device.console.log("main", "Guru Meditation Error: Core 1 panic'ed (LoadProhibited)", "E")
            await hil_clock.advance(hours=1000)
            raise AssertionError("not stopped")
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*DutFatal: ESP32_EcoWatt_Smart died: *Guru Meditation Error*",
                                 "*--- full log: *ESP32_EcoWatt_Smart.console.log"])
    result.stdout.no_fnmatch_line("*not stopped*")
