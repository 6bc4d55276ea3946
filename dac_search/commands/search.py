"""``dac-search [search] --model M --device D --budget B``: the overnight search, then its reports."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dac_search.budget import FORMS, parse_budget
from dac_search.commands._common import RECONSTRUCT_IMAGES_HELP, STORAGE_ENV, add_model_args, console
from dac_search.methods import PLAN_METHODS
from dac_search.plan import CORRECTIONS
from dac_search.precision import parse_precisions
from dac_search.redact import mask_command
from dac_search.search.config import AUTO_CORRECTION, SearchConfig, parse_duration
from dac_search.shapes import parse_shape


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("search", help="search per-layer plans under a budget (the default command)")
    add_model_args(parser)
    parser.add_argument("--device", default="local", help="a name from configs/devices, a .toml path, or none")
    parser.add_argument("--budget", required=True, help=FORMS.replace("%", "%%"))  # argparse formats help with %
    parser.add_argument("--trials", type=int, default=100, help="trials in the study in total (default 100)")
    parser.add_argument("--timeout", help="stop after this long, e.g. 8h (results are kept)")
    parser.add_argument("--out", help="run dir (default reports/<model>-<device>-<budget>/)")
    parser.add_argument("--storage", help=f"an Optuna storage URL shared by workers, e.g. postgresql://user@host/db "
                        f"(password from PGPASSWORD or ~/.pgpass; default: ${STORAGE_ENV}, else SQLite in the run dir)")
    parser.add_argument("--study", help="the study's name in the storage (default: read off the model, device, "
                        "budget and every setting that changes a score)")
    parser.add_argument("--heartbeat", default="2m", help="shared studies: a trial whose worker has been silent "
                        "this long (a machine lost, kill -9) is failed and run again by a live worker; workers "
                        "beat every quarter of it (default 2m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", help=f"comma list of {', '.join(PLAN_METHODS)} (default: all of them under "
                        "a latency budget, every factorisation but prune under a FLOPs or parameter budget)")
    parser.add_argument("--precision", help="comma list of fp32, int8: the precisions each layer may run in "
                        "(default: both under a latency budget, fp32 under a FLOPs or parameter budget); "
                        "fp32 narrows to float layers")
    parser.add_argument("--correction", choices=(AUTO_CORRECTION, "none", *CORRECTIONS), default=AUTO_CORRECTION,
                        help="data-free correction on distilled inputs: bias, refit (each refitted conv to its own "
                        "original output) or stream (as refit, but a residual branch's last conv to the original "
                        "residual stream); default auto: stream under a latency budget, refit under others")
    parser.add_argument("--inputs", default="auto", help="synthetic inputs: distilled (matching BatchNorm statistics), "
                        "impressions (confident classifier outputs, for models without BatchNorm), gaussian; "
                        "default auto: distilled where the model has BatchNorm, impressions where not")
    parser.add_argument("--proxy-images", type=int, default=64, help="synthetic images the proxy uses")
    parser.add_argument("--fit-images", type=int, help="synthetic images the correction of each plan's own model (the "
                        "model export writes and the front is judged on) is fitted on (default: four times the "
                        "scoring batch: 256 at 32x32, 32 at 224x224; fewer make a first search faster, more "
                        "fit a little better)")
    parser.add_argument("--agreement-images", type=int, help="held-out synthetic images the exported front is judged "
                        "on: each plan's top-1 agreement with the original, in the report (default: twice the "
                        "scoring batch: 128 at 32x32 and 16 at 224x224 with a correction; 0: none)")
    parser.add_argument("--reconstruct", metavar="DURATION", help="after the search, fit the best few plans of the "
                        "front by gradient steps on synthetic images (no data) for this long in all, e.g. 20m; "
                        "written beside the closed-form plans, labelled, and picked by export when better")
    parser.add_argument("--reconstruct-images", type=int, help=RECONSTRUCT_IMAGES_HELP)
    parser.add_argument("--eval-data", help="optional real data to measure top-1: class folders, a file list "
                        "(.tsv/.csv/.txt of file and label) or .npz x/y")
    parser.add_argument("--mean", help="normalisation mean for --eval-data, e.g. 0.485,0.456,0.406")
    parser.add_argument("--std", help="normalisation std for --eval-data, e.g. 0.229,0.224,0.225")
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    from dac_search.eval_data import parse_floats

    return SearchConfig(
        model=args.model, budget=parse_budget(args.budget), device=args.device, weights=args.weights,
        input_shape=parse_shape(args.input_shape) if args.input_shape else None, trials=args.trials,
        timeout_s=parse_duration(args.timeout) if args.timeout else None,
        out=Path(args.out) if args.out else None, storage=args.storage or os.environ.get(STORAGE_ENV) or None,
        study=args.study, heartbeat_s=parse_duration(args.heartbeat), seed=args.seed,
        methods=None if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        correction=None if args.correction == "none" else args.correction, inputs=args.inputs,
        proxy_images=args.proxy_images, reconstruct_s=parse_duration(args.reconstruct) if args.reconstruct else None,
        reconstruct_images=args.reconstruct_images, agreement_images=args.agreement_images,
        fit_images=args.fit_images,
        precisions=None if args.precision is None else parse_precisions(args.precision),
        eval_data=args.eval_data, mean=parse_floats(args.mean) if args.mean else None,
        std=parse_floats(args.std) if args.std else None,
        command=mask_command(["dac-search", *sys.argv[1:]]))


def run(args: argparse.Namespace) -> int:
    from dac_search.report import build_report_data, print_pareto, write_reports
    from dac_search.rundir import load_run
    from dac_search.search.controller import run_search

    outcome = run_search(config_from_args(args))
    html, _ = write_reports(outcome.run_dir)
    out = console()
    print_pareto(build_report_data(load_run(outcome.run_dir)), out)
    if outcome.message:
        sys.stderr.write(f"dac-search: {outcome.message}\n")
    out.print(f"report: {html}")
    if outcome.interrupted:
        sys.stderr.write("dac-search: interrupted; results so far are saved, run the same command to resume\n")
        return 130
    return 0
