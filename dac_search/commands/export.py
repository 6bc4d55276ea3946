"""``dac-search export RUN_DIR [--pick best|TRIAL] --format onnx|torchscript|pt|tflite -o FILE``."""

from __future__ import annotations

import argparse
from pathlib import Path

from dac_search.commands._common import console
from dac_search.export import EXPORT_FORMATS
from dac_search.export.run import export_run


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
        "--format", dest="fmt", choices=EXPORT_FORMATS, required=True,
        help="onnx; torchscript (traced); pt: torch.save dict of the plan and the decomposed state dict, "
             "read back with dac_search.export.load_pt_export",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    parser.add_argument("--model", help="the run's model spec, named again: needed where it runs code (file.py:fn, "
                        "module:fn, a TorchScript file), since a run dir someone sends you may name any")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    exported = export_run(args.run_dir, args.output, args.fmt, args.pick, args.model)
    row = exported.row
    details = [f"trial {row.trial}", f"proxy {row.proxy:.4g}"]
    if row.latency_ms is not None:
        details.append(f"latency {row.latency_ms:.3f} ms")
    if row.top1 is not None:
        details.append(f"top-1 {row.top1:.2f} %")
    console().print(f"wrote {exported.path} ({exported.fmt}; {', '.join(details)})", highlight=False, markup=False)
    return 0
