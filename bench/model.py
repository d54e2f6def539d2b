"""Micro-benchmark of the inverter model: construction time and register reads per second.

Each figure is also given as a ratio to a baseline timed side by side in the same process, so runs on
different machines compare: construction against pvlib's solar position for one day of minutes (the
least any pvlib-based day table costs), a read against encoding an already computed state into the
10 registers (the least any read costs).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd
import pvlib

from sim_inverter.model import InverterModel, Site

_READS = 50_000


def _best_of(repeats: int, run: Callable[[], object]) -> float:
    """The fastest of `repeats` runs, in seconds (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _solar_position_day(site: Site) -> None:
    times = pd.date_range(pd.Timestamp(site.start).tz_localize(site.timezone), periods=1441, freq="60s")
    pvlib.location.Location(site.latitude, site.longitude, site.timezone).get_solarposition(times)


def main() -> None:
    site = Site()
    InverterModel(site=site)  # warm-up: imports, the module fit cache
    seeds = iter(range(1, 1000))
    construct = _best_of(5, lambda: InverterModel(seed=next(seeds), site=site))
    solar_position = _best_of(5, lambda: _solar_position_day(site))

    model = InverterModel(seed=1, site=site)
    times = [6 * 3600.0 + k * 0.37 for k in range(_READS)]  # noon-ish, within one cached day
    state = model.state(times[0])
    encode = _best_of(3, lambda: [state.registers() for _ in times]) / _READS
    read = _best_of(3, lambda: [model.registers(t) for t in times]) / _READS
    model.set_export_limit(40)
    curtailed = _best_of(3, lambda: [model.registers(t) for t in times]) / _READS
    model.set_export_limit(100)

    print("bench model: InverterModel (sim_inverter/model.py)")
    print(
        f"  construction          {construct * 1e3:8.1f} ms   x{construct / solar_position:6.1f} pvlib solar position (1 day)"
    )
    print(f"  registers(t)          {1 / read:8.0f} reads/s   x{read / encode:6.1f} encoding alone")
    print(f"  registers(t) limited  {1 / curtailed:8.0f} reads/s   x{curtailed / encode:6.1f} encoding alone")


if __name__ == "__main__":
    main()
