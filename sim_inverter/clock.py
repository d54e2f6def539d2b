"""Simulation time: seconds after the model's start, driven by the event loop's clock.

t = (loop.time() - t0) * time_scale + offset. The loop may run on real, scaled or virtual time (the
harness's choice); nothing here reads the wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class SimClock:
    def __init__(
        self, time_scale: float = 1.0, offset: float = 0.0, loop_time: Callable[[], float] | None = None
    ) -> None:
        if not time_scale > 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self.offset = offset
        self._loop_time = loop_time or asyncio.get_running_loop().time
        self._t0 = self._loop_time()

    def now(self) -> float:
        return (self._loop_time() - self._t0) * self.time_scale + self.offset
