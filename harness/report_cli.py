"""`ecowatt report html RUN_DIR [--out FILE] [--title TEXT]`: the run's self-contained HTML report.

Reads what the run left in RUN_DIR (report.json, junit.xml, traces/, campaign.jsonl; see
harness.html_report) and writes one page that opens from disk without a network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.html_report import write_report


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    report = subparsers.add_parser("report", help="reports of finished runs",
                                   description="Reports of finished runs.")
    kinds = report.add_subparsers(dest="report_kind", metavar="KIND", required=True)
    html = kinds.add_parser("html", help="a self-contained HTML report of a run directory",
                            description="Write a self-contained HTML report (inline CSS, JS and SVG) of a run.")
    html.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's report directory")
    html.add_argument("--out", type=Path, default=None, metavar="FILE",
                      help="where to write it (default RUN_DIR/report.html)")
    html.add_argument("--title", default=None, help="the page's title")
    html.set_defaults(func=html_command)


def html_command(args: argparse.Namespace) -> int:
    if not args.run_dir.is_dir():
        print(f"ecowatt report html: no such run directory: {args.run_dir}", file=sys.stderr)
        return 2
    try:
        path = write_report(args.run_dir, args.out, args.title)
    except OSError as error:
        print(f"ecowatt report html: {error}", file=sys.stderr)
        return 1
    print(f"report: {path}", flush=True)
    return 0
