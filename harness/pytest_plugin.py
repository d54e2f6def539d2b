"""The EcoWatt HIL pytest plugin (entry point `pytest11`): options, markers, fixtures, invariants, measurements.

Fixtures (all function-scoped, namespaced `hil_`):

    hil_stack     the whole system wired on loopback (harness.stack.Stack), started for the test
    hil_sim       hil_stack.sim (the first device's simulator: its .ledger, .faults)
    hil_cloud     hil_stack.cloud (harness.hil_cloud.HilCloud, an operator-API client)
    hil_dut       hil_stack.dut (harness.dut.Dut)
    hil_clock     hil_stack.clock: await advance(hours=..), await until(pred, timeout=..), now()
    hil_faults    hil_stack.faults (harness.hil_faults.HilFaults)
    hil_measure   hil_measure(name, value, unit, low=None, high=None): a measurement with limits
    hil_options   the StackOptions the stack is built from (command line + the test's `hil` marker)

Markers:

    @pytest.mark.hil(upload=60, poll=2, devices=3, profile="spec", transport="modbus-tcp",
                     sim_offset=3600, timings={...}, skip_invariants={"conservation": "why"})
    @pytest.mark.requires_board, @pytest.mark.requires_power_cut, @pytest.mark.requires("flash", ...)
    @pytest.mark.slow

A test needing a capability the chosen DUT lacks is skipped with that reason.

Time: with `--time virtual` (the default) every async test that uses a `hil_` fixture runs on a new
virtual-time loop (the `pytest_asyncio_loop_factories` hook), so a device-hour passes in real seconds;
other async tests get the ordinary loop. `--time real|scale:X` runs the stack's parts as subprocesses on
real or scaled time; `--dut board` implies real time (or scaled, for an emulated board started with the
same scale), with the simulator and cloud in this process on that clock.

After the test body passes, the stack's invariants are checked on the same loop, and measurements
outside their limits are reported: either fails the test itself (so `xfail(strict=True)` covers them).
If the DUT prints a fail pattern (panic, brownout, watchdog reset, abort) the test is stopped at once and
fails with the console tail and the log path.

Measurements and provenance go into the test's `user_properties` (so into JUnit XML) and into
`config.stash[MEASUREMENTS]` (nodeid, Measurement) for the run's report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import CodeType
from typing import Any

import pytest
import pytest_asyncio

from harness.clocks import Clock, parse_time
from harness.report import Measurement, record_measurement, record_provenance

MEASUREMENTS: pytest.StashKey[list[tuple[str, Measurement]]] = pytest.StashKey()
_ITEM_MEASUREMENTS: pytest.StashKey[list[Measurement]] = pytest.StashKey()
_ITEM_STACK: pytest.StashKey[Any] = pytest.StashKey()
HIL_FIXTURES = frozenset({"hil_stack", "hil_sim", "hil_cloud", "hil_dut", "hil_clock", "hil_faults"})
# `hil` marker keywords that name a StackOptions field differently.
MARKER_ALIASES = {"upload": "upload_s", "poll": "poll_s", "sim_offset": "sim_offset_s"}

_CLOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Clock] = weakref.WeakKeyDictionary()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ecowatt", "EcoWatt HIL")
    group.addoption("--dut", choices=("emu", "board"), default="emu", help="device under test")
    group.addoption("--port", default=None, help="serial port of the board (with --dut board)")
    group.addoption("--board-host", default="127.0.0.1",
                    help="address the board reaches this machine at (its Wi-Fi); the proxies listen there")
    group.addoption(
        "--profile", choices=("spec", "reference-1.0.4"), default="spec", help="emulated firmware"
    )
    group.addoption("--time", default="virtual", help="virtual | real | scale:X")
    group.addoption("--seed", type=int, default=1, help="seed of the simulator and fault schedules")
    group.addoption("--report", default=None, help="directory for the run's report")
    group.addoption("--cloud-db", default=None, help="database URL of the cloud (default SQLite)")


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "hil(**options): stack options for this test (upload, poll, devices, profile, transport, "
        "sim_offset, timings, skip_invariants, ...)",
        "requires_board: needs a real ESP32 board (--dut board --port PORT)",
        "requires_power_cut: needs a DUT that can be power-cut",
        "requires(*capabilities): needs DUT capabilities (power_cut, tagged_power_cut, reset, flash, events, board)",
        "slow: long soak tests, out of the default run",
    ):
        config.addinivalue_line("markers", line)
    config.stash[MEASUREMENTS] = []
    try:
        time_mode(config)
    except ValueError as error:
        raise pytest.UsageError(f"--time: {error}") from None
    if config.getoption("dut") == "board" and not config.getoption("port"):
        raise pytest.UsageError("--dut board needs --port (the board's serial port)")


def time_mode(config: pytest.Config) -> str:
    """The effective --time: a board runs on real time."""
    spec = str(config.getoption("time"))
    parse_time(spec)  # validates
    if config.getoption("dut") == "board" and spec.strip().lower() == "virtual":
        return "real"
    return spec


# --- the event loop --------------------------------------------------------------------------------------


class ClockLoopFactory:
    """A loop factory for pytest-asyncio: each loop gets a new clock of the --time mode."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def __call__(self) -> asyncio.AbstractEventLoop:
        clock = parse_time(self.spec)
        loop = clock.new_event_loop()
        _CLOCKS[loop] = clock
        return loop


def _uses_hil(item: Any) -> bool:
    names = set(getattr(item, "fixturenames", ()) or ())
    return bool(names & HIL_FIXTURES) or item.get_closest_marker("hil") is not None


@pytest.hookimpl(trylast=True)
def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Callable[[], Any]]:
    if _uses_hil(item):
        return {"hil": ClockLoopFactory(time_mode(config))}
    return {"asyncio": asyncio.new_event_loop}


def clock_of(loop: asyncio.AbstractEventLoop) -> Clock:
    """The clock of a loop made by the plugin (else a real clock bound to it)."""
    clock = _CLOCKS.get(loop)
    if clock is None:
        clock = parse_time("real")
        clock.bind(loop)
        _CLOCKS[loop] = clock
    return clock


# --- capabilities ----------------------------------------------------------------------------------------


def dut_capabilities(config: pytest.Config) -> tuple[str, frozenset[str]]:
    """The kind of DUT this run uses and its capabilities."""
    from harness.dut import EmulatedDut, ProcessDut, SerialBoardDut

    if config.getoption("dut") == "board":
        return "board", SerialBoardDut.capabilities
    if time_mode(config).strip().lower() == "virtual":
        return "in-process emulator", EmulatedDut.capabilities
    return "emulator process", ProcessDut.capabilities


def skip_reason(item: pytest.Item) -> str | None:
    """Why this test cannot run with the chosen DUT (None: it can)."""
    from harness.dut import POWER_CUT, capability_reason

    config = item.config
    if item.get_closest_marker("requires_board") and config.getoption("dut") != "board":
        return "needs a real board (--dut board --port PORT)"
    kind, have = dut_capabilities(config)
    needed: set[str] = set()
    if item.get_closest_marker("requires_power_cut"):
        needed.add(POWER_CUT)
    for marker in item.iter_markers("requires"):
        needed.update(str(a) for a in marker.args)
    return capability_reason(kind, needed, have)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = skip_reason(item)
    if reason is not None:
        pytest.skip(reason)


# --- the stack -------------------------------------------------------------------------------------------


def stack_options(config: pytest.Config, marker: pytest.Mark | None) -> Any:
    """StackOptions from the command line, overridden by the test's `hil` marker."""
    from harness.stack import StackOptions

    mode = time_mode(config).strip().lower()
    dut = config.getoption("dut")
    options = StackOptions(
        profile=config.getoption("profile"),
        seed=config.getoption("seed"),
        dut=dut,
        port=config.getoption("port"),
        board_host=config.getoption("board_host"),
        # A board brings its own process; its simulator and cloud run here, on the run's (scaled) clock,
        # so what the cloud stamps is device time, as the board's periods are.
        processes=mode != "virtual" and dut != "board",
        cloud_db=config.getoption("cloud_db"),
    )
    if marker is None:
        return options
    fields = {f.name for f in dataclasses.fields(StackOptions)}
    changes = {}
    for key, value in marker.kwargs.items():
        if key == "skip_invariants":
            continue
        name = MARKER_ALIASES.get(key, key)
        if name not in fields:
            raise pytest.UsageError(f"@pytest.mark.hil: unknown option {key!r}")
        changes[name] = tuple(value) if name == "device_ids" else value
    return options.replace(**changes)


@pytest.fixture
def hil_options(request: pytest.FixtureRequest) -> Any:
    return stack_options(request.config, request.node.get_closest_marker("hil"))


@pytest_asyncio.fixture
async def hil_stack(request: pytest.FixtureRequest, hil_options: Any, tmp_path: Path) -> AsyncIterator[Any]:
    from harness.stack import Stack

    loop = asyncio.get_running_loop()
    clock = clock_of(loop)
    stack = Stack(hil_options, clock, tmp_path / "hil")
    marker = request.node.get_closest_marker("hil")
    await stack.start()
    for name, reason in dict((marker.kwargs if marker else {}).get("skip_invariants") or {}).items():
        stack.invariants.skip(name, reason)
    item = request.node
    item.stash[_ITEM_STACK] = stack
    code = getattr(getattr(item, "function", None), "__code__", None)
    for dut in stack.duts.values():
        dut.console.on_fatal.append(lambda line, loop=loop, code=code: _stop_test(loop, code))
    _provenance(item, stack)
    try:
        yield stack
    finally:
        item.stash[_ITEM_STACK] = None
        await stack.stop()


def _provenance(item: pytest.Item, stack: Any) -> None:
    from harness.dut import SerialBoardDut

    options = stack.options
    item.user_properties += [
        ("hil_profile", options.profile), ("hil_seed", str(options.seed)), ("hil_dut", options.dut),
        ("hil_time", stack.clock.mode), ("hil_devices", ",".join(stack.device_ids)),
        ("hil_logs", str(stack.logs_dir)),
    ]
    if isinstance(stack.dut, SerialBoardDut):  # what esptool and the board's banner said at provisioning
        record_provenance(item, **stack.dut.provenance())


def _stop_test(loop: asyncio.AbstractEventLoop, code: CodeType | None) -> None:
    """A fail pattern appeared: cancel the test's task (from any thread)."""

    def cancel() -> None:
        for task in asyncio.all_tasks(loop):
            if code is not None and _runs(task, code):
                task.cancel("the DUT printed a fail pattern")

    loop.call_soon_threadsafe(cancel)


def _runs(task: asyncio.Task[Any], code: CodeType) -> bool:
    coroutine: Any = task.get_coro()
    for _ in range(20):  # the test's coroutine, or one it awaits
        if coroutine is None:
            return False
        if getattr(coroutine, "cr_code", None) is code:
            return True
        coroutine = getattr(coroutine, "cr_await", None)
    return False


@pytest.fixture
def hil_sim(hil_stack: Any) -> Any:
    return hil_stack.sim


@pytest.fixture
def hil_cloud(hil_stack: Any) -> Any:
    return hil_stack.cloud


@pytest.fixture
def hil_dut(hil_stack: Any) -> Any:
    return hil_stack.dut


@pytest.fixture
def hil_clock(hil_stack: Any) -> Clock:
    clock: Clock = hil_stack.clock
    return clock


@pytest.fixture
def hil_faults(hil_stack: Any) -> Any:
    return hil_stack.faults


# --- measurements ----------------------------------------------------------------------------------------


@pytest.fixture
def hil_measure(request: pytest.FixtureRequest) -> Callable[..., Measurement]:
    """Record a measurement (harness.report's, in the item's user_properties): `hil_measure(
    "compression_ratio", 3.1, "ratio", low=2.0)`. One outside its limits fails the test when its body
    ends (after every measurement of the test was taken)."""
    item = request.node
    session = request.config.stash[MEASUREMENTS]

    def measure(name: str, value: float, unit: str, low: float | None = None, high: float | None = None,
                description: str = "") -> Measurement:
        measurement = record_measurement(item, name, value, unit, low=low, high=high, description=description)
        item.stash.setdefault(_ITEM_MEASUREMENTS, []).append(measurement)
        session.append((item.nodeid, measurement))
        return measurement

    return measure


# --- after the test body: invariants and limits -----------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    stack = pyfuncitem.stash.get(_ITEM_STACK, None)
    try:
        result = yield
    except BaseException as error:
        fatal = _fatal(stack)
        if fatal is not None:
            from harness.dut import DutFatal

            raise DutFatal(fatal) from error
        raise
    fatal = _fatal(stack)
    if fatal is not None:
        from harness.dut import DutFatal

        raise DutFatal(fatal)
    failed = [m for m in pyfuncitem.stash.get(_ITEM_MEASUREMENTS, []) if m.verdict == "fail"]
    if stack is not None:
        from harness.invariants import InvariantViolation

        loop = stack.clock.loop
        violations = loop.run_until_complete(stack.invariants.check())
        if violations:
            raise InvariantViolation(violations)
    if failed:
        raise AssertionError("measurements outside their limits:\n" + "\n".join(
            f"  {m} is outside {m.limits_text()}" for m in failed))
    return result


def _fatal(stack: Any) -> str | None:
    if stack is None:
        return None
    for dut in stack.duts.values():
        if dut.console.fatal is not None:
            return str(dut.console.fatal_message())
    return None
