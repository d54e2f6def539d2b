"""Virtual time: simulated device-seconds per wall-second for a toy device fleet.

Each toy device polls every 5 s (seeded jitter), queues samples and every 15 minutes uploads the batch
to a toy cloud task. It runs on `VirtualTimeLoop` for one device-day (1 device) and one device-hour
(100 devices). The baseline, timed side by side, is the same fleet on a bare jumping loop: a stock
selector loop whose select() moves time to the next timer and checks nothing (no I/O poll, no
executor or thread accounting), the least any virtual clock costs. The ratio is the share of that
speed `VirtualTimeLoop` keeps with its safety checks. The cost of `settle` (real listening before
each jump) is measured against no settle.
"""

from __future__ import annotations

import asyncio
import random
import selectors
import time
from collections.abc import Callable
from typing import Any

from bench import Result
from harness.virtual_time import VirtualTimeLoop

_POLL = 5.0
_UPLOAD = 900.0


class _JumpingSelector(selectors.DefaultSelector):
    now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        self.now += timeout or 0.0
        return []


class _BareJumpingLoop(asyncio.SelectorEventLoop):
    """Jumps to the next timer unconditionally: right only for a loop without I/O or threads."""

    def __init__(self) -> None:
        self._jumper = _JumpingSelector()
        super().__init__(self._jumper)

    def time(self) -> float:
        return self._jumper.now


async def _fleet(devices: int, seconds: float) -> int:
    """Run the toy fleet for `seconds` of device time; returns the samples the cloud received."""
    uploads: asyncio.Queue[list[float]] = asyncio.Queue()
    received = 0

    async def device(seed: int) -> None:
        rng = random.Random(seed)
        buffer: list[float] = []
        elapsed = next_upload = 0.0
        while elapsed < seconds:
            step = _POLL + rng.uniform(-0.05, 0.05)
            await asyncio.sleep(step)
            elapsed += step
            buffer.append(rng.random())
            if elapsed >= next_upload + _UPLOAD:
                next_upload += _UPLOAD
                await uploads.put(buffer)
                buffer = []

    async def cloud() -> None:
        nonlocal received
        while True:
            received += len(await uploads.get())

    consumer = asyncio.create_task(cloud())
    await asyncio.gather(*(device(seed) for seed in range(devices)))
    await asyncio.sleep(0)
    consumer.cancel()
    return received


def _best_time(loop_factory: Callable[[], asyncio.AbstractEventLoop], devices: int, seconds: float,
               repeats: int = 3) -> float:
    """Wall seconds of a fleet run: the fastest of `repeats` (the least disturbed by the machine)."""
    best = float("inf")
    for _ in range(repeats):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            start = time.perf_counter()
            received = runner.run(_fleet(devices, seconds))
            best = min(best, time.perf_counter() - start)
        assert received > 0
    return best


def main() -> list[Result]:
    results: list[Result] = []
    print("bench virtual_time: toy fleet on VirtualTimeLoop (harness/virtual_time.py)")
    for devices, seconds, label in ((1, 86400.0, "1 device, 1 day"), (100, 3600.0, "100 devices, 1 hour")):
        simulated = devices * seconds
        rate = simulated / _best_time(VirtualTimeLoop, devices, seconds)
        baseline = simulated / _best_time(_BareJumpingLoop, devices, seconds)
        print(f"  {label:20} {rate:10,.0f} device-s/s = {rate * 60 / 86400:7,.1f} device-days/wall-min"
              f"  x{rate / baseline:.2f} of a bare jumping loop")
        results.append(Result("virtual_time", f"{label}: device-s per wall-s", rate, "dev-s/s", baseline, 0.25))

    settle, span = 0.001, 3 * 3600.0
    loop = VirtualTimeLoop(settle=settle)
    settled = span / _best_time(lambda: loop, 1, span, repeats=1)
    plain = span / _best_time(VirtualTimeLoop, 1, span)
    print(f"  settle {settle * 1e3:g} ms per jump  {settled:10,.0f} device-s/s  x{settled / plain:.3f} of no settle"
          f" ({loop.jumps:,} jumps, {(span / settled - span / plain) / loop.jumps * 1e3:.2f} ms more per jump)")
    results.append(Result("virtual_time", f"1 device, settle {settle * 1e3:g} ms: device-s per wall-s",
                          settled, "dev-s/s", plain))
    return results


if __name__ == "__main__":
    main()
