"""Benchmarks: `python -m bench` runs every `bench/<name>.py` module's `main()` and prints one table.

A bench module's `main()` returns a list of `Result`s (or None after printing its own report). Speeds are reported next to a baseline measured
side by side in the same run, as a ratio (machines differ, ratios travel); nothing here is a test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    bench: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None  # the same metric for the reference, measured in the same run
    target: float | None = None  # the lowest acceptable value / baseline

    @property
    def ratio(self) -> float | None:
        return None if not self.baseline else self.value / self.baseline

    @property
    def meets_target(self) -> bool | None:
        ratio = self.ratio
        return None if ratio is None or self.target is None else ratio >= self.target
