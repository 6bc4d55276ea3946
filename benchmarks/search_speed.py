"""Search speed: trials per minute and total time, with no device and with the local device.

    .venv/bin/python benchmarks/search_speed.py [--trials 200] [--model torchvision.models:resnet50]
        [--input-shape 1,3,224,224] [--devices none,local] [--budget 50%flops] [--latency-budget 0.6x]
        [--correction auto]

resnet50 is built with random weights (no download). An int8 model's speed depends on its values (an untrained
ResNet-56 in int8 ran slower than in fp32), so its int8 timings, and the trials that run int8 models, may differ
from a trained resnet50's. The one-off set-up (distilled inputs, layer sensitivities, latency table, up to the
first trial's end) and the final end-to-end measurement are timed apart from the trials, and each stage's host
or device seconds are read from run.json; each device runs with a cold dac-search cache, so its set-up is what a
first search pays.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import method_counts

from dac_search.budget import parse_budget
from dac_search.export.run import pick_trial
from dac_search.plan import CORRECTIONS, RankPlan
from dac_search.proxies.correction import default_input_count
from dac_search.rundir import load_run, stage_seconds
from dac_search.search.config import AUTO_CORRECTION, SearchConfig
from dac_search.search.controller import run_search
from dac_search.search.live import LiveView
from dac_search.shapes import parse_shape


class TimedView(LiveView):
    """The live view, remembering when the first and the last trial finished."""

    first_trial_at: float | None = None
    last_trial_at: float | None = None

    def trial_done(self, proxy: float, cost: float, feasible: bool) -> None:
        now = time.monotonic()
        if TimedView.first_trial_at is None:
            TimedView.first_trial_at = now
        TimedView.last_trial_at = now
        super().trial_done(proxy, cost, feasible)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision.models:resnet50")
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--devices", default="none,local")
    parser.add_argument("--budget", default="50%flops", help="with --device none")
    parser.add_argument("--latency-budget", default="0.6x", help="with a device")
    parser.add_argument("--correction", default=AUTO_CORRECTION, choices=(AUTO_CORRECTION, *CORRECTIONS, "none"),
                        help="the search's --correction (default: its own, by the budget's kind)")
    args = parser.parse_args()
    shape = parse_shape(args.input_shape)
    correction = None if args.correction == "none" else args.correction
    print(f"model {args.model} {args.input_shape}, {args.trials} trials, correction "
          f"{args.correction}, {default_input_count(shape)} distilled images, {torch.get_num_threads()} torch "
          f"threads, {os.cpu_count()} cores\n")
    print("| device | budget | set-up s | trials | trials s | trials/min | final measurement s | total s "
          "| best plan: measured ratio, FLOPs kept, methods |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    setups = []
    for device in args.devices.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["DAC_SEARCH_CACHE"] = str(Path(tmp) / "cache")
            TimedView.first_trial_at = TimedView.last_trial_at = None
            budget = args.budget if device == "none" else args.latency_budget
            config = SearchConfig(model=args.model, budget=parse_budget(budget), device=device,
                                  input_shape=shape, trials=args.trials, out=Path(tmp) / "run",
                                  correction=correction, proxy_images=default_input_count(shape))
            start = time.monotonic()
            run_search(config, view_factory=TimedView)
            total = time.monotonic() - start
            first = TimedView.first_trial_at or start
            last = TimedView.last_trial_at or first
            rate = (args.trials - 1) / (last - first) * 60 if last > first else float("nan")
            print(f"| {device} | {budget} | {first - start:.1f} | {args.trials} | {last - first:.1f} | {rate:.0f} "
                  f"| {start + total - last:.1f} | {total:.1f} | {_best(Path(tmp) / 'run')} |", flush=True)
            setups.append((device, load_run(Path(tmp) / "run").info.stages))
    for device, stages in setups:
        print(f"\n`{device}`, stage by stage (run.json):\n\n| stage | waits on | s |\n|---|---|---:|")
        for stage in stages:
            print(f"| {stage.name} | {stage.where} | {stage.seconds:.1f} |")
        for where in ("host", "device"):
            print(f"| **{where}, in all** | | **{stage_seconds(stages, where):.1f}** |")


def _best(run_dir: Path) -> str:
    """The plan ``dac-search export`` would pick: its measured ratio (if any), FLOPs kept and methods."""
    results = load_run(run_dir)
    row = pick_trial(results, "best")
    plan = RankPlan.load(results.plan_path(row))
    ratio = "unmeasured" if row.latency_ratio is None else f"{row.latency_ratio:.3f}x"
    return f"trial {row.trial}: {ratio}, {row.flops / results.info.baseline.flops:.1%}, {method_counts(plan)}"

if __name__ == "__main__":
    from _record import run

    run(main, __file__)
