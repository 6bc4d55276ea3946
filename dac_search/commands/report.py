"""``dac-search report RUN_DIR``: re-render report.html and report.md from saved results, measuring nothing;
``dac-search report --storage URL --study NAME``: the same from a study several workers share."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dac_search.commands._common import STORAGE_ENV, console
from dac_search.errors import ConfigError
from dac_search.report import build_report_data, print_pareto, write_reports
from dac_search.rundir import load_run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="re-render report.html and report.md of a run dir or a study")
    parser.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_DIR",
                        help="a run dir written by the search (with --storage: where to write the study's)")
    parser.add_argument("--storage", help=f"a study storage URL shared by workers (default: ${STORAGE_ENV}); "
                        "the whole study's trials are written to RUN_DIR (default reports/STUDY) and rendered")
    parser.add_argument("--study", help="the study's name in --storage (its workers print it in run.json)")
    parser.add_argument("--quiet", action="store_true", help="do not print the Pareto table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    storage = args.storage or (os.environ.get(STORAGE_ENV) if args.study else None)
    if storage or args.study:
        if not (storage and args.study):
            raise ConfigError("a report from a shared study needs both --storage URL and --study NAME")
        from dac_search.search.shared_report import write_study_run

        run_dir = write_study_run(storage, args.study, args.run_dir or Path("reports") / args.study)
    elif args.run_dir is None:
        raise ConfigError("give a RUN_DIR, or --storage URL --study NAME")
    else:
        run_dir = args.run_dir
    html_path, md_path = write_reports(run_dir)
    out = console()
    if not args.quiet:
        print_pareto(build_report_data(load_run(run_dir)), out)
    out.print(f"wrote {html_path}\nwrote {md_path}", highlight=False, markup=False)
    return 0
