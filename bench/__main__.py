"""Run every benchmark module in this package and print their results as one table.

`python -m bench` runs them all; `python -m bench modbus_tcp http_frames` runs the named ones. A
module's `main()` is called with no arguments (and a clean `sys.argv`, for modules that parse their
own options). It may return a list of `Result`s, or print its own report and return None or an exit
status; such modules get a row saying so, and a non-zero status fails the run.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from rich.console import Console
from rich.table import Table

import bench
from bench import Result


def bench_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(bench.__path__) if not info.name.startswith("_"))


def run(name: str) -> tuple[list[Result], bool]:
    """The module's results and whether it succeeded."""
    module = importlib.import_module(f"bench.{name}")
    saved, sys.argv = sys.argv, [f"bench.{name}"]
    try:
        returned = module.main()
    finally:
        sys.argv = saved
    if isinstance(returned, list):
        return returned, True
    failed = isinstance(returned, int) and returned != 0
    return [Result(name, "failed (see above)" if failed else "(printed above)", 0.0, "")], not failed


def table(results: list[Result]) -> Table:
    out = Table(title="EcoWatt HIL benchmarks")
    for column in ("bench", "metric", "value", "baseline", "ratio", "target", "ok"):
        out.add_column(column, justify="left" if column in ("bench", "metric") else "right")
    for r in results:
        out.add_row(
            r.bench,
            r.metric,
            f"{r.value:,.1f} {r.unit}" if r.unit else "",
            "" if r.baseline is None else f"{r.baseline:,.1f} {r.unit}",
            "" if r.ratio is None else f"{r.ratio:.2f}",
            "" if r.target is None else f">= {r.target:.2f}",
            {None: "", True: "yes", False: "NO"}[r.meets_target],
        )
    return out


def main(names: list[str] | None = None) -> int:
    results: list[Result] = []
    ok = True
    for name in names or bench_modules():
        module_results, module_ok = run(name)
        results.extend(module_results)
        ok = ok and module_ok
    Console().print(table(results))
    return 0 if ok and all(r.meets_target is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or None))
