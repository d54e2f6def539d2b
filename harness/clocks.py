"""Clocks: what "now" is for a test run, in device seconds, on virtual, real or scaled time.

A clock makes the event loop the components run on (`new_event_loop`, a loop factory for
`asyncio.Runner` or pytest-asyncio), and gives scenarios one vocabulary whatever the mode:

    now()                       device seconds since the clock was bound to its loop
    wall() / wall_at(t)         epoch seconds for device time: pass `clock.wall` as a component's `wall_clock`
    await advance(hours=6)      let the system run for that much device time
    await until(pred, timeout=) wait (device time) until pred() is truthy; DeviceTimeoutError otherwise
    time_scale                  device seconds per loop second, for the components' `time_scale` options

`parse_time("virtual" | "real" | "scale:X")` turns the `--time` option into a clock. Real and scaled
clocks run on an ordinary loop (components are given `time_scale`); the virtual clock is in
`harness.virtual_time`.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Virtual runs start at 2025-01-01T00:00:00Z so their timestamps are the same on every run.
DEFAULT_EPOCH = 1_735_689_600.0

Predicate = Callable[[], Any]  # returns a truthy value when met, or an awaitable of one


class DeviceTimeoutError(TimeoutError):
    """`until()` ran out of device time (distinct from a failure: scenarios report it as "timed out")."""

    def __init__(self, timeout: float, predicate: Predicate) -> None:
        self.timeout = timeout
        self.predicate = predicate
        name = getattr(predicate, "__qualname__", None) or repr(predicate)
        super().__init__(f"{name} not met within {timeout:g} s of device time")


def duration(*, seconds: float = 0.0, minutes: float = 0.0, hours: float = 0.0, days: float = 0.0) -> float:
    """Total seconds; rejects negative or non-finite totals."""
    total = seconds + 60.0 * minutes + 3600.0 * hours + 86400.0 * days
    if not (math.isfinite(total) and total >= 0):
        raise ValueError(f"a duration must be finite and not negative, not {total!r} s")
    return total


async def _evaluate(predicate: Predicate) -> Any:
    result = predicate()
    return await result if inspect.isawaitable(result) else result


class Clock(ABC):
    """Device time on one event loop (see the module docstring)."""

    mode: str
    time_scale: float

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._origin = 0.0  # loop time at device time 0
        self._wall_origin = 0.0  # epoch seconds at device time 0

    @abstractmethod
    def _create_loop(self) -> asyncio.AbstractEventLoop: ...

    @abstractmethod
    def _start_epoch(self) -> float:
        """Epoch seconds for device time 0, asked when the clock is bound to a loop."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A new loop for this clock, bound to it (usable as an asyncio.Runner `loop_factory`)."""
        loop = self._create_loop()
        self.bind(loop)
        return loop

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make `loop` this clock's loop; device time 0 is now."""
        self._loop = loop
        self._origin = loop.time()
        self._wall_origin = self._start_epoch()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The bound loop; an unbound clock (or one whose loop closed) binds to the running loop."""
        if self._loop is None or self._loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                if self._loop is None:
                    raise RuntimeError(f"this {type(self).__name__} has no event loop yet") from None
                return self._loop  # closed, but it still tells the device time the run ended at
            self.bind(running)
        assert self._loop is not None
        return self._loop

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The bound loop, which must be the running one (device time is measured on it)."""
        loop = self.loop
        if loop is not asyncio.get_running_loop():
            raise RuntimeError(f"this {type(self).__name__} is bound to another event loop")
        return loop

    def now(self) -> float:
        return (self.loop.time() - self._origin) * self.time_scale

    def wall(self) -> float:
        """Epoch seconds now: the `wall_clock` callable for components."""
        return self.wall_at(self.now())

    def wall_at(self, device_time: float) -> float:
        return self._wall_origin + device_time

    def device_time_at(self, wall: float) -> float:
        return wall - self._wall_origin

    def loop_delay(self, device_seconds: float) -> float:
        """Loop seconds that `device_seconds` take on this clock."""
        return device_seconds / self.time_scale

    async def advance(
        self, *, seconds: float = 0.0, minutes: float = 0.0, hours: float = 0.0, days: float = 0.0
    ) -> None:
        """Let everything on the loop run for that much device time."""
        delay = self.loop_delay(duration(seconds=seconds, minutes=minutes, hours=hours, days=days))
        self._running_loop()
        await asyncio.sleep(delay)

    async def until(self, predicate: Predicate, *, timeout: float, poll: float | None = None) -> Any:
        """The first truthy value of `predicate()` within `timeout` device seconds.

        `predicate` may be a plain function or return an awaitable. It is polled every `poll` device
        seconds (default 1 s); the virtual clock checks plain predicates at every idle point instead.
        Raises DeviceTimeoutError when the time runs out.
        """
        duration(seconds=timeout)
        if poll is not None and not poll > 0:
            raise ValueError(f"poll must be positive, not {poll!r}")
        self._running_loop()
        deadline = self.now() + timeout
        result = predicate()
        synchronous = not inspect.isawaitable(result)
        value = result if synchronous else await result
        if value:
            return value
        return await self._wait_for(predicate, deadline, timeout, poll, synchronous)

    async def _wait_for(
        self, predicate: Predicate, deadline: float, timeout: float, poll: float | None, synchronous: bool
    ) -> Any:
        step = 1.0 if poll is None else poll
        while (remaining := deadline - self.now()) > 0:
            await asyncio.sleep(self.loop_delay(min(step, remaining)))
            value = await _evaluate(predicate)
            if value:
                return value
        raise DeviceTimeoutError(timeout, predicate)

    def run(self, main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
        """Run `main` on a new loop of this clock, like asyncio.run."""
        with asyncio.Runner(debug=debug, loop_factory=self.new_event_loop) as runner:
            return runner.run(main)


class RealClock(Clock):
    """Real time, or real time sped up `time_scale` times (components are told the scale)."""

    def __init__(self, time_scale: float = 1.0, *, epoch: float | None = None) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"a time scale must be a positive number, not {time_scale!r}")
        super().__init__()
        self.epoch = epoch  # None: the real time when the clock is bound
        self.time_scale = time_scale
        self.mode = "real" if time_scale == 1.0 else f"scale:{time_scale:g}"

    def _create_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    def _start_epoch(self) -> float:
        return time.time() if self.epoch is None else self.epoch  # the harness reads wall time, once


def parse_time(spec: str, *, epoch: float | None = None) -> Clock:
    """The clock for a `--time` value: "virtual", "real" or "scale:X" (X device seconds per second).

    Raises ValueError for anything else (argparse reports it as an invalid value).
    """
    text = spec.strip().lower()
    if text == "virtual":
        # virtual_time builds on this module, so it is imported here rather than at the top
        from harness.virtual_time import VirtualClock

        return VirtualClock(epoch=DEFAULT_EPOCH if epoch is None else epoch)
    if text == "real":
        return RealClock(epoch=epoch)
    kind, colon, value = text.partition(":")
    if kind == "scale" and colon:
        try:
            scale = float(value)
        except ValueError:
            raise ValueError(f"scale:X needs a number for X, not {value!r}") from None
        return RealClock(scale, epoch=epoch)
    raise ValueError(f"unknown time mode {spec!r}: expected virtual, real or scale:X")

