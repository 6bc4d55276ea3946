"""``dac-search profile``: measure one model (optionally decomposed by a plan) on a device."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.table import Table

from dac_search.commands._common import add_model_args, console, load_from_args
from dac_search.errors import ConfigError
from dac_search.export import export_for
from dac_search.plan import RankPlan
from dac_search.proxies.apply import decompose_model
from profilers import LatencyResult, load_device, make_profiler
from profilers.runner import RUNTIMES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("profile", help="measure the latency of one model on a device")
    add_model_args(parser)
    parser.add_argument("--plan", help="a plan JSON: measure the model decomposed by it")
    parser.add_argument("--device", required=True, help="a name from configs/devices or a path to a .toml file")
    parser.add_argument("--runtime", choices=RUNTIMES, help="default: the device's runtime")
    parser.add_argument("--batch", type=int, help="batch size (replaces N of the input shape)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    device = load_device(args.device)  # a bad device config fails before the model is loaded
    plan = RankPlan.load(args.plan) if args.plan else None
    loaded = load_from_args(args, plan)
    shape = loaded.input_shape
    if args.batch is not None:
        if args.batch < 1:
            raise ConfigError(f"--batch must be a positive integer, got {args.batch}")
        shape = (args.batch, *shape[1:])
    model = decompose_model(loaded.module, plan) if plan is not None else loaded.module
    runtime = args.runtime or device.runtime
    with tempfile.TemporaryDirectory(prefix="dac-search-profile-") as tmp, make_profiler(device) as profiler:
        artifact = export_for(runtime, model, Path(tmp) / Path(loaded.spec).stem, shape)
        result = profiler.measure(artifact, shape, runtime=runtime)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    else:
        console().print(result_table(result, loaded.spec, args.plan))
    return 0


def result_table(result: LatencyResult, model: str, plan: str | None) -> Table:
    c = result.conditions
    title = f"{model}" + (f" with plan {plan}" if plan else "") + f" on {result.device}"
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("median", f"{result.median_ms:.3f} ms"),
        ("IQR", f"{result.iqr_ms:.3f} ms"),
        ("p90", f"{result.p90_ms:.3f} ms"),
        ("CoV", f"{result.cov:.1%}" + ("" if result.stable else "  (unsteady: over the limit after retries)")),
        ("repeats", f"{result.n} x {result.number} inferences, {result.attempts} attempt(s)"),
        ("input", "x".join(map(str, result.input_shape))),
        ("runtime", f"{c.runtime} {c.runtime_version}, threads {c.threads or 'default'}"),
        ("cpu", c.cpu_model or "-"),
        ("governor / frequency", f"{c.governor or '-'} / {f'{c.freq_mhz:.0f} MHz' if c.freq_mhz else '-'}"),
        ("temperature", f"{c.temp_c:.1f} °C" if c.temp_c is not None else "-"),
        ("throttled", f"{c.throttled or '-'} ({c.throttle_events} event(s) while measuring)"),
    ]
    for field, value in rows:
        table.add_row(field, value)
    return table
