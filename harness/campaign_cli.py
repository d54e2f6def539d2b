"""`ecowatt campaign run SCENARIO --seeds 1..N [--faults PROFILE] [--workers N] [--report DIR] [--shard i/N]
[--schedule FILE]`, `ecowatt campaign replay FILE`, `ecowatt campaign profiles`.

`run` exits 1 when any run violated an invariant (or broke), 0 otherwise; `replay` exits 1 when the
reproducer still violates its invariants, so it can gate a fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from harness.campaign import (
    Campaign,
    load_reproducer,
    parse_seeds,
    parse_shard,
    run_campaign,
    run_one,
    summary,
)
from harness.fault_schedule import BUILTIN_MIXES, DEFAULT_MIX, FaultSchedule
from protocol.errors import DocumentError

PROFILES = ("spec", "reference-1.0.4")
T = TypeVar("T")


def _checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser that raises DocumentError."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except DocumentError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    campaign = subparsers.add_parser("campaign", help="seeded random fault campaigns over a scenario file")
    commands = campaign.add_subparsers(dest="campaign_command", metavar="ACTION")

    run = commands.add_parser("run", help="run a scenario once per seed under random fault schedules")
    run.add_argument("scenario", help="scenario file (YAML, version 1)")
    run.add_argument("--seeds", type=_checked(parse_seeds), default=parse_seeds("1..10"),
                     help="seeds: 1..200, 7 or 1,4,9 (default 1..10)")
    run.add_argument("--faults", default=DEFAULT_MIX,
                     help=f"fault profile: {', '.join(BUILTIN_MIXES)} or a YAML file (default {DEFAULT_MIX})")
    run.add_argument("--profile", choices=PROFILES, default="spec", help="emulated firmware (default spec)")
    run.add_argument("--workers", type=int, default=2, help="parallel worker processes (default 2)")
    run.add_argument("--report", type=Path, default=None, metavar="DIR",
                     help="directory for the JSON-lines records and reproducers")
    run.add_argument("--shard", type=_checked(parse_shard), default=None, metavar="i/N",
                     help="run only shard i (0-based) of N: the seeds at positions i, i+N, ...")
    run.add_argument("--schedule", type=Path, default=None, metavar="FILE",
                     help="run this fault schedule (JSON) for every seed instead of drawing one")
    run.add_argument("--no-shrink", action="store_true", help="do not shrink violating schedules")
    run.set_defaults(func=_run)

    replay = commands.add_parser("replay", help="replay a shrunk reproducer written by `campaign run`")
    replay.add_argument("reproducer", type=Path)
    replay.set_defaults(func=_replay)

    profiles = commands.add_parser("profiles", help="list the built-in fault profiles")
    profiles.set_defaults(func=_profiles)
    campaign.set_defaults(func=lambda args: (campaign.print_help(), 2)[1])


def _run(args: argparse.Namespace) -> int:
    try:
        schedule = FaultSchedule.load(args.schedule) if args.schedule else None
        campaign = Campaign(args.scenario, args.seeds, args.faults, args.profile, max(1, args.workers),
                            args.report, args.shard, schedule, not args.no_shrink)
        result = run_campaign(campaign, echo=lambda line: print(line, flush=True))
    except DocumentError as error:
        print(f"ecowatt campaign: {error}", file=sys.stderr)
        return 2
    print(summary(result), flush=True)
    return 1 if result.violations or result.errors else 0


def _replay(args: argparse.Namespace) -> int:
    try:
        spec = load_reproducer(args.reproducer)
    except DocumentError as error:
        print(f"ecowatt campaign: {error}", file=sys.stderr)
        return 2
    record = run_one(spec)
    print(json.dumps({"seed": record.seed, "verdicts": record.verdicts, "error": record.error}, sort_keys=True))
    for violation in record.violations:
        print(violation)
    if record.error:
        print(f"the run broke: {record.error}", file=sys.stderr)
        return 2
    print("violated: " + ", ".join(record.violated) if record.violated else "no invariant violated", flush=True)
    return 1 if record.violated else 0


def _profiles(args: argparse.Namespace) -> int:
    for name, mix in BUILTIN_MIXES.items():
        kinds = sorted({f"{c.template.family}:{c.template.kind}" for c in mix.choices})
        print(f"{name}: {mix.count[0]}-{mix.count[1]} faults from {', '.join(kinds) or 'nothing'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.campaign_cli campaign ...`: the same commands without the rest of `ecowatt`."""
    parser = argparse.ArgumentParser(prog="ecowatt")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
