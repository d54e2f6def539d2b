"""Virtual time: an asyncio event loop whose clock jumps to the next timer when nothing else can happen.

Simulator, emulator and cloud run in one loop and schedule only with `loop.time()`, `asyncio.sleep`
and `call_later`. `VirtualTimeLoop` keeps `loop.time()` still while there is work and, when every
task is waiting and no I/O is in flight, moves it straight to the next timer. A device-day then takes
seconds, and a run is reproducible for a seed: what happens at which device time never depends on
the speed of the machine.

When the loop would sleep, it first polls its selector with a zero timeout (data already sent over
loopback between components of this loop is ready by then) and jumps only when nothing is ready and
no callback is queued. Work outside the loop keeps time still until it is done:

* executor jobs: every `run_in_executor` job (the default executor or an explicit one, so
  `asyncio.to_thread` and `getaddrinfo` too) holds time from submission until its result is back;
* libraries with worker threads of their own that complete futures with `call_soon_threadsafe`
  (aiosqlite): a pending future created by such a package holds time. The packages are declared
  (`THREAD_BOUND_PACKAGES`) and learnt: once a thread completes a future of this loop through
  `call_soon_threadsafe`, the package of the code that did it is added for the rest of the run;
* anything else (a thread signalling an asyncio.Event, a process the loop talks to): the component
  holds time itself, without importing the harness, by duck typing:

      hold = getattr(asyncio.get_running_loop(), "hold_time", None)
      with hold("flash write") if hold else contextlib.nullcontext():
          await work_done_outside_the_loop()

  `hold_time()` returns a `TimeHold` (a context manager, sync or async, or `.release()` it from any
  thread); `loop.io_pending()` counts what holds time now and `loop.pending_work()` names it. A hold
  must only cover work that finishes without device time passing: time cannot move until it ends
  (a hold that lasts `stall_warning` real seconds is logged with its reason).

Peers outside the process (a PostgreSQL server, a cloud in a subprocess) are not seen: their replies
arrive in real time, so hold time around such requests or use real/scaled time. `settle` (real
seconds to keep listening before each jump) is the last resort for I/O that may reach the loop late
(a pty's data is handed over by a kernel worker); it costs that much real time per jump (see
bench/virtual_time.py).

Use: `run_virtual(main())` like asyncio.run, or a `VirtualClock` (`clock.run(main())`, or
`clock.new_event_loop` as the loop factory of asyncio.Runner or of pytest-asyncio's
`pytest_asyncio_loop_factories` hook) with, in device time, `now()`, `wall()` (components'
`wall_clock`), `await advance(hours=6)` (everything due up to and at the end included),
`await until(predicate, timeout=...)` (a plain predicate is checked at every idle point, so it is
met at the exact device time) and `await idle()` (everything possible at this instant has happened).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import selectors
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar, TypeVarTuple

from harness.clocks import DEFAULT_EPOCH, Clock, DeviceTimeoutError, Predicate

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

log = logging.getLogger(__name__)

# Packages whose pending futures are completed by a worker thread of their own.
THREAD_BOUND_PACKAGES: tuple[str, ...] = ("aiosqlite",)

# Never learnt as thread-bound: asyncio completes executor results this way, and those are counted
# exactly; learning it would make every asyncio.sleep hold time.
_NOT_LEARNT = frozenset({"asyncio", "concurrent", "threading", __name__.partition(".")[0]})


class TimeHold:
    """Virtual time stands still from creation until `release()` (idempotent, from any thread).

    A thread that hands a result to the loop releases after posting it (call_soon_threadsafe), so
    the result is queued before time may move."""

    def __init__(self, loop: VirtualTimeLoop, reason: str) -> None:
        self.loop = loop
        self.reason = reason
        self._released = False
        loop._add_hold(self)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.loop._drop_hold(self)

    def __enter__(self) -> TimeHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> TimeHold:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<TimeHold {self.reason!r}{' released' if self._released else ''}>"


class _JobRecorder(concurrent.futures.Executor):
    """Submits to `executor` and keeps the concurrent future, which asyncio does not hand back."""

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self._executor = executor
        self.job: concurrent.futures.Future[Any] | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        job = self._executor.submit(fn, *args, **kwargs)
        self.job = job
        return job


class _VirtualSelector(selectors.BaseSelector):
    """The loop's selector: real readiness, virtual waiting (the loop decides in `_wait`)."""

    def __init__(self, wait: Callable[[float | None], list[tuple[selectors.SelectorKey, int]]]) -> None:
        self.real = selectors.DefaultSelector()
        self._wait = wait

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self.real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return self._wait(timeout)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self.real.get_key(fileobj)

    def get_map(self) -> Any:
        return self.real.get_map()

    def close(self) -> None:
        self.real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time (see the module docstring).

    `start` is loop.time() at creation; `settle` real seconds of listening before each jump (0: none);
    `thread_bound_packages` as THREAD_BOUND_PACKAGES; `stall_warning` real seconds a hold may last
    before it is logged. `jumps` and `skipped` count the jumps and the device seconds they skipped.
    """

    def __init__(
        self,
        *,
        start: float = 0.0,
        settle: float = 0.0,
        thread_bound_packages: Iterable[str] = THREAD_BOUND_PACKAGES,
        stall_warning: float = 10.0,
    ) -> None:
        self._now = float(start)
        self._settle = settle
        self._stall_warning = stall_warning
        self._thread_bound = set(thread_bound_packages)
        self._bound_futures: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()
        self._bound_modules: dict[str, bool] = {}  # module name -> its futures hold time
        self._holds: dict[TimeHold, None] = {}  # ordered, for pending_work()
        self._holds_lock = threading.Lock()
        self._idle_watchers: list[Callable[[], bool]] = []
        self._owner: int | None = None  # thread running the loop
        self._default_pool: concurrent.futures.Executor | None = None
        self.jumps = 0
        self.skipped = 0.0
        self._selector_proxy = _VirtualSelector(self._wait)
        super().__init__(self._selector_proxy)

    # --- the clock ----------------------------------------------------------------------------------

    def time(self) -> float:
        return self._now

    def _wait(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        """The loop's select(): real I/O first; time jumps only when nothing is ready or in flight."""
        real = self._selector_proxy.real
        events = real.select(0)
        if events or timeout == 0:
            return events
        if self._time_is_held():
            events = real.select(self._stall_warning)
            if not events and self._time_is_held():
                log.warning("virtual time held for %g s of real time by %s", self._stall_warning,
                            "; ".join(self.pending_work()))
            return events
        if self._notify_idle():
            return []
        if self._settle > 0:
            events = real.select(self._settle)
            if events:
                return events
        if timeout is None:
            return real.select(None)  # no timer at all: only the outside world can wake the loop
        self._now += timeout
        self.jumps += 1
        self.skipped += timeout
        return []

    def watch_idle(self, check: Callable[[], bool]) -> Callable[[], None]:
        """Call `check()` whenever the loop is about to move time on; it returns True when it scheduled
        work (time then stays). Returns the function that stops watching."""
        self._idle_watchers.append(check)

        def unwatch() -> None:
            if check in self._idle_watchers:
                self._idle_watchers.remove(check)

        return unwatch

    def _notify_idle(self) -> bool:
        busy = False
        for check in list(self._idle_watchers):
            busy = check() or busy
        return busy

    # --- work in flight -----------------------------------------------------------------------------

    def hold_time(self, reason: str = "") -> TimeHold:
        """Keep virtual time still until the returned hold is released (a context manager)."""
        return TimeHold(self, reason)

    def _time_is_held(self) -> bool:
        # The fast path of io_pending(), run before every jump.
        return bool(self._holds) or (bool(self._bound_futures) and self.io_pending() > 0)

    def io_pending(self) -> int:
        """How many things hold virtual time now: holds, executor jobs, thread-bound futures."""
        with self._holds_lock:
            holds = len(self._holds)
        return holds + sum(1 for future in self._bound_futures if not future.done())

    def pending_work(self) -> list[str]:
        """What holds virtual time now, in words."""
        with self._holds_lock:
            reasons = [hold.reason or "a time hold" for hold in self._holds]
        return reasons + [f"pending future {future!r}" for future in self._bound_futures if not future.done()]

    def _add_hold(self, hold: TimeHold) -> None:
        with self._holds_lock:
            self._holds[hold] = None

    def _drop_hold(self, hold: TimeHold) -> None:
        if self._owner is None or self._owner == threading.get_ident():
            self._forget_hold(hold)
            return
        try:
            # Through the loop, so whatever the thread posted before releasing is queued first.
            self.call_soon_threadsafe(self._forget_hold, hold)
        except RuntimeError:  # the loop is closed: nobody waits on it any more
            self._forget_hold(hold)

    def _forget_hold(self, hold: TimeHold) -> None:
        with self._holds_lock:
            self._holds.pop(hold, None)

    def create_future(self) -> asyncio.Future[Any]:
        future = super().create_future()
        # Called for every await on the loop: the caller's module is looked up in a cache (a frame
        # walk and a dict hit) rather than its package worked out each time.
        module = sys._getframe(1).f_globals.get("__name__", "")
        cache = self._bound_modules
        bound = cache.get(module)
        if bound is None:
            bound = cache[module] = module.partition(".")[0] in self._thread_bound
        if bound:
            self._bound_futures.add(future)
            future.add_done_callback(self._bound_futures.discard)
        return future

    def call_soon_threadsafe(
        self, callback: Callable[[*Ts], object], *args: *Ts, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        handle = super().call_soon_threadsafe(callback, *args, context=context)
        if self._owner is not None and threading.get_ident() != self._owner:
            package = _caller_package()
            if package not in _NOT_LEARNT and package not in self._thread_bound and any(
                isinstance(arg, asyncio.Future) and arg.get_loop() is self for arg in args
            ):
                log.info("virtual time: futures created by %r now hold time (completed from a thread)", package)
                self._thread_bound.add(package)
                self._bound_modules = {}  # replaced, not cleared: the loop thread may be filling the old one
        return handle

    def run_in_executor(
        self, executor: concurrent.futures.Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        if executor is None:
            if self._default_pool is None:
                self.set_default_executor(concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio"))
            assert self._default_pool is not None
            executor = self._default_pool
        hold = self.hold_time(f"executor job {getattr(func, '__qualname__', func)!r}")
        recorder = _JobRecorder(executor)
        try:
            result = super().run_in_executor(recorder, func, *args)
        except BaseException:
            hold.release()
            raise
        assert recorder.job is not None
        # Added after asyncio's own callback, which posts the result to the loop: the release is
        # queued behind the result, so time cannot move between the two.
        recorder.job.add_done_callback(lambda _: hold.release())
        return result

    def set_default_executor(self, executor: concurrent.futures.Executor) -> None:
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")  # as asyncio's own check
        super().set_default_executor(executor)
        self._default_pool = executor

    async def shutdown_default_executor(self, *args: Any) -> None:
        with self.hold_time("shutting down the default executor"):
            await super().shutdown_default_executor(*args)

    def run_forever(self) -> None:
        self._owner = threading.get_ident()
        try:
            super().run_forever()
        finally:
            self._owner = None


def _caller_package() -> str:
    """Top-level package of the code that called the caller of this function."""
    return str(sys._getframe(2).f_globals.get("__name__", "")).partition(".")[0]


class VirtualClock(Clock):
    """Device time on a VirtualTimeLoop: one loop second is one device second, timestamps from `epoch`."""

    mode = "virtual"
    time_scale = 1.0

    def __init__(
        self,
        *,
        epoch: float = DEFAULT_EPOCH,
        settle: float = 0.0,
        thread_bound_packages: Iterable[str] = THREAD_BOUND_PACKAGES,
        stall_warning: float = 10.0,
    ) -> None:
        super().__init__()
        self.epoch = epoch
        self._loop_options: dict[str, Any] = {
            "settle": settle,
            "thread_bound_packages": tuple(thread_bound_packages),
            "stall_warning": stall_warning,
        }

    def _create_loop(self) -> VirtualTimeLoop:
        return VirtualTimeLoop(**self._loop_options)

    def _start_epoch(self) -> float:
        return self.epoch

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if not isinstance(loop, VirtualTimeLoop):
            raise TypeError(f"a VirtualClock needs a VirtualTimeLoop, not {type(loop).__name__}")
        super().bind(loop)

    async def advance(
        self, *, seconds: float = 0.0, minutes: float = 0.0, hours: float = 0.0, days: float = 0.0
    ) -> None:
        """Let everything run for that much device time, including all that is due at the end of it."""
        await super().advance(seconds=seconds, minutes=minutes, hours=hours, days=days)
        await self.idle()

    async def idle(self) -> None:
        """Return once everything that can happen at the current device time has happened."""
        loop = self._running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        settled: asyncio.Future[None] = loop.create_future()

        def check() -> bool:
            if settled.done():
                return False
            settled.set_result(None)
            return True

        unwatch = loop.watch_idle(check)
        try:
            await settled
        finally:
            unwatch()

    async def _wait_for(
        self, predicate: Predicate, deadline: float, timeout: float, poll: float | None, synchronous: bool
    ) -> Any:
        if not synchronous or poll is not None:
            return await super()._wait_for(predicate, deadline, timeout, poll, synchronous)
        # A plain predicate is checked at every idle point: exactly when the system has settled after
        # each step, with no polling timers of its own.
        loop = self._running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        outcome: asyncio.Future[Any] = loop.create_future()

        def check() -> bool:
            if outcome.done():
                return False
            try:
                value = predicate()
            except Exception as error:
                outcome.set_exception(error)
                return True
            if value:
                outcome.set_result(value)
            return bool(value)

        def expire() -> None:
            if not check() and not outcome.done():
                outcome.set_exception(DeviceTimeoutError(timeout, predicate))

        timer = loop.call_later(deadline - self.now(), expire)
        unwatch = loop.watch_idle(check)
        try:
            return await outcome
        finally:
            timer.cancel()
            unwatch()


def run_virtual(main: Coroutine[Any, Any, T], *, clock: VirtualClock | None = None, debug: bool | None = None) -> T:
    """Run `main` on virtual time, like asyncio.run (on `clock`, or a new VirtualClock)."""
    return (clock or VirtualClock()).run(main, debug=debug)
