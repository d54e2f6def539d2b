"""`ecowatt run [PATHS] [--dut emu|board] [--port P] [--profile P] [--seed N] [--report DIR]`.

Runs scenario suites (default: scenarios/) through pytest with the harness plugin, shows them live,
ends with the summary table and the report's path. The exit status is pytest's: 0 when every scenario
passed or showed exactly its known defect, 1 when any failed, 5 when nothing was collected.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.clocks import parse_time
from harness.runner import RunOptions, run_suite

PROFILES = ("spec", "reference-1.0.4")


def _time_mode(text: str) -> str:
    try:
        parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "run", help="run scenario suites with a live view and a report",
        description="Run scenario suites through pytest with the EcoWatt HIL plugin.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="scenario files or directories (default: scenarios/)")
    parser.add_argument("--dut", choices=("emu", "board"), default="emu", help="device under test (default emu)")
    parser.add_argument("--port", help="serial port of the board (with --dut board)")
    parser.add_argument("--board-host", metavar="ADDRESS",
                        help="the address the board reaches this machine at, e.g. its Wi-Fi LAN address "
                             "(default 127.0.0.1: the emulator's serial endpoint on this machine)")
    parser.add_argument("--profile", choices=PROFILES, default="spec", help="emulated firmware (default spec)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulator and fault schedules")
    parser.add_argument("--time", type=_time_mode, default="virtual", help="virtual | real | scale:X")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="report directory (default reports/<time>-<profile>)")
    parser.add_argument("--cloud-db", default=None, help="database URL of the cloud (default SQLite)")
    parser.add_argument("-k", dest="keyword", default=None, metavar="EXPR", help="only scenarios matching EXPR")
    parser.set_defaults(func=run_command)


def options_from(args: argparse.Namespace) -> RunOptions:
    return RunOptions(paths=tuple(args.paths), dut=args.dut, port=args.port, board_host=args.board_host, profile=args.profile, seed=args.seed,
                      time=args.time, report_dir=args.report, keyword=args.keyword, cloud_db=args.cloud_db)


def run_command(args: argparse.Namespace) -> int:
    if args.dut == "board" and not args.port:
        print("ecowatt run: --dut board needs --port", file=sys.stderr)
        return 2
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"ecowatt run: no such scenario path: {', '.join(missing)}", file=sys.stderr)
        return 2
    return run_suite(options_from(args)).exit_status


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.run_cli run ...`: the command without loading the rest of `ecowatt`."""
    from harness import cli

    return cli.main(argv, modules=("harness.run_cli",))


if __name__ == "__main__":
    sys.exit(main())
