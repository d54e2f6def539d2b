"""The top-level `ecowatt` command. Each part of the system adds its own subcommands.

A part adds subcommands by exposing `add_commands(subparsers)` in the module named below; each parser
sets `func`, a callable taking the parsed arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "sim_inverter.cli",
    "cloud.cli",
    "cloud.operator_cli",
    "cloud.ota_cli",
    "harness.board_cli",  # after cloud.ota_cli: `firmware build` joins the `firmware` group it creates
    "device_emulator.cli",
    "harness.compression_bench",
    "harness.report_cli",
    "harness.campaign_cli",
    "harness.fleet_cli",
    "harness.run_cli",
    "harness.stack_cli",
    "harness.demo",
)


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecowatt", description="EcoWatt hardware-in-the-loop harness")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # a real missing dependency, not a part that is not built yet
                raise
            continue
        module.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, modules: Sequence[str] = COMMAND_MODULES) -> int:
    """`ecowatt`; with `modules`, only their commands (`python -m harness.run_cli run ...` starts faster)."""
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
