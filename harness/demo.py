"""`ecowatt demo` (`make demo`): the main job on the embedded defaults.

Runs the default acceptance suite (scenarios/) with the emulated device on virtual time, the `spec`
firmware and seed 1 — the same as `ecowatt run` without arguments — and prints where the report is.
The exit status is the run's: 0 when every scenario passed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.runner import DEFAULT_SUITE, RunOptions, run_suite


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "demo", help="run the acceptance suite on the emulator, on virtual time, with the embedded defaults"
    )
    parser.add_argument("--profile", choices=("spec", "reference-1.0.4"), default="spec",
                        help="emulated firmware (default spec; reference-1.0.4 shows its known defects)")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="report directory (default reports/<time>-<profile>)")
    parser.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    options = RunOptions(paths=(str(DEFAULT_SUITE),), dut="emu", profile=args.profile, seed=1, time="virtual",
                         report_dir=args.report)
    return run_suite(options).exit_status
