"""``dac-search export RUN_DIR [--pick best|TRIAL] --format onnx|torchscript|pt|tflite -o FILE``."""

from __future__ import annotations

import argparse
from pathlib import Path

from dac_search.commands._common import RECONSTRUCT_IMAGES_HELP, console, step_progress
from dac_search.export import EXPORT_FORMATS, format_of
from dac_search.export.run import Reconstruct, export_run
from dac_search.search.config import check_reconstruct_images, parse_duration


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write the model of one plan of a run (ONNX, TorchScript, or a state dict with its plan)",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run dir written by the search")
    parser.add_argument(
        "--pick", default="best", metavar="best|TRIAL",
        help="'best' (default): the most accurate plan within the budget, by real top-1 when measured, "
             "else by proxy; or a trial number from the report",
    )
    parser.add_argument(
        "--format", dest="fmt", choices=EXPORT_FORMATS,
        help="onnx; torchscript (traced); pt: torch.save dict of the plan and the decomposed state dict, "
             "read back with dac_search.export.load_pt_export; tflite (LiteRT); default: by -o's suffix "
             "(.onnx, .ts, .pt, .tflite)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    parser.add_argument("--model", help="the run's model spec, named again: needed where it runs code (file.py:fn, "
                        "module:fn, a TorchScript file), since a run dir someone sends you may name any")
    parser.add_argument("--reconstruct", metavar="DURATION", help="fit the plan by gradient steps on synthetic "
                        "images (no data) for about this long first, e.g. 5m, unless the search's stage did; the "
                        "reconstructed plan is saved in the run dir's plans/ (the same command resumes it)")
    parser.add_argument("--reconstruct-images", type=int, help=RECONSTRUCT_IMAGES_HELP)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    budget = parse_duration(args.reconstruct) if args.reconstruct else None
    check_reconstruct_images(args.reconstruct_images)
    with step_progress("reconstructing") as on_step:
        exported = export_run(args.run_dir, args.output, format_of(args.output, args.fmt), args.pick, args.model,
                              Reconstruct(budget, args.reconstruct_images) if budget else None, on_step)
    row = exported.row
    details = [f"trial {row.trial}"]
    if row.final_proxy is not None:
        details.append(f"proxy {row.final_proxy:.4g}")
    if row.plan_reconstructed:
        details.append(f"reconstructed: {row.plan_reconstructed}")
    if row.latency_ms is not None:
        details.append(f"latency {row.latency_ms:.3f} ms")
    if row.final_top1 is not None:
        details.append(f"top-1 {row.final_top1:.2f} %")
    console().print(f"wrote {exported.path} ({exported.fmt}; {', '.join(details)})", highlight=False, markup=False)
    return 0
