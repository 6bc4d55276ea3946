"""``dac-search report RUN_DIR``: re-render report.html and report.md from saved results, measuring nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

from dac_search.commands._common import console
from dac_search.report import build_report_data, print_pareto, write_reports
from dac_search.rundir import load_run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="re-render report.html and report.md of a run dir")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run dir written by the search")
    parser.add_argument("--quiet", action="store_true", help="do not print the Pareto table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    html_path, md_path = write_reports(args.run_dir)
    out = console()
    if not args.quiet:
        print_pareto(build_report_data(load_run(args.run_dir)), out)
    out.print(f"wrote {html_path}\nwrote {md_path}", highlight=False, markup=False)
    return 0
