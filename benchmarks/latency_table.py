"""How well do per-layer latency tables predict whole-plan latency? Prints markdown tables.

For each case (model, batch) on one device: build the table (every decomposable layer alone, original
and every candidate), then measure random plans end to end and compare with the prediction; the device
time of the table is set against measuring every plan end to end. Also: run-to-run CoV of one model.

    python benchmarks/latency_table.py                 # 50 plans, resnet56 b1/b32 and resnet50 b1
    python benchmarks/latency_table.py --plans 10 --cases resnet56-b1
    python benchmarks/latency_table.py --table-settings table,repeats=10:repeat_s=0.1:max_attempts=2
    python benchmarks/latency_table.py --int8 --cases resnet56-b1  # plans with int8 layers too

``--int8``: the table also times every layer in int8, and each random plan puts a random share of its layers
in int8 (as a latency-budget search offers by default); their end-to-end models are quantized on random inputs,
as the search's own table calibration does.

``--table-settings``: one table per entry, each built in its own fresh cache and judged against the same
end-to-end measurements (``table``: what a search uses; else ``key=value`` pairs of ``MeasureSettings``).

ResNet-56 runs with its pretrained weights (torch.hub's cache): an int8 model's speed depends on its values.
The untrained ResNet-56 with every conv in int8 ran 1.8x slower than in fp32 here (the trained one 2.5x faster),
while in fp32 the two ran alike. resnet50 is built untrained (no download): judge only fp32 tables on it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torchvision
from torch import nn

from dac_search.cost import trace_geometry
from dac_search.decompose import LAYERS, METHODS, max_rank
from dac_search.export import export_for
from dac_search.latency import LatencyTable, LatencyTableBuilder, default_candidates
from dac_search.latency.builder import TABLE_SETTINGS, BuildStats
from dac_search.plan import LayerChoice, RankPlan
from dac_search.precision import FP32, INT8
from dac_search.zoo import load_model
from profilers import Profiler, load_device, make_profiler
from profilers.base import MeasureSettings

CASES = {
    "resnet56-b1": (lambda: load_model("cifar10-resnet56"), (1, 3, 32, 32)),
    "resnet56-b32": (lambda: load_model("cifar10-resnet56"), (32, 3, 32, 32)),
    "resnet50-b1": (lambda: torchvision.models.resnet50(), (1, 3, 224, 224)),
}


@dataclass(frozen=True)
class CaseResult:
    case: str
    settings: str
    layers: int
    table_models: int
    table_device_s: float
    plans: int
    e2e_device_s: float
    within_raw: float
    within: float
    median_error: float
    worst_error: float
    correction: str
    original_ms: float


def random_plan(model: nn.Module, layers: Sequence[str], rng: random.Random, int8: bool = False) -> RankPlan:
    """A random share of the layers replaced, each by a random method, rank (any in range) and variant; with
    ``int8``, a random share of the layers (replaced or not) in int8 too."""
    chosen = {}
    share = rng.uniform(0.2, 1.0)
    for name in layers:
        if rng.random() > share:
            continue
        conv = model.get_submodule(name)
        method = rng.choice(METHODS)
        chosen[name] = LayerChoice(method, rng.randint(1, max_rank(conv, method)), rng.choice(LAYERS[method].variants))
    int8_share = rng.uniform(0.0, 1.0) if int8 else 0.0
    return RankPlan(chosen, precisions={name: INT8 for name in layers if rng.random() < int8_share})


def parse_settings(text: str) -> MeasureSettings:
    """``table`` (the settings a search's table uses on this device) or ``repeats=5:repeat_s=0.05``."""
    if text == "table":
        return TABLE_SETTINGS
    default = MeasureSettings()
    values = dict(pair.split("=", 1) for pair in text.split(":"))
    return replace(
        default, **{k: type(getattr(default, k))(v) for k, v in values.items()}
    )  # each as its default's type


def run_case(name: str, profiler: Profiler, args: argparse.Namespace, cache_dir: Path) -> list[CaseResult]:
    make, shape = CASES[name]
    model = make().eval()
    precisions = (FP32, INT8) if args.int8 else (FP32,)
    tables = []
    for i, text in enumerate(args.table_settings.split(",")):
        builder = LatencyTableBuilder(profiler, cache_dir=cache_dir / f"{name}-{i}", settings=parse_settings(text))
        tables.append((text, builder.build(model, shape, candidates=default_candidates(points=args.points),
                                           precisions=precisions), builder.stats))
    rng = random.Random(args.seed)
    layers = list(trace_geometry(model, shape))
    calibration = [random_plan(model, layers, rng, args.int8) for _ in range(args.calibration)]
    plans = [random_plan(model, layers, rng, args.int8) for _ in range(args.plans)]
    # One interleaved session: the original first, so predictions are anchored to the same conditions.
    measure = LatencyTableBuilder(profiler, cache_dir=cache_dir)
    start = time.monotonic()
    measured = measure.measure_plans(model, shape, [RankPlan(), *calibration, *plans])
    e2e_s = (time.monotonic() - start) * len(plans) / (len(plans) + len(calibration) + 1)
    original, calibration_ms = measured[0], measured[1 : 1 + len(calibration)]
    plans_ms = measured[1 + len(calibration):]
    return [_judged(name, text, table, cost, len(layers), e2e_s, original, list(zip(calibration, calibration_ms)),
                    list(zip(plans, plans_ms))) for text, table, cost in tables]


def _judged(name: str, settings: str, table: LatencyTable, table_cost: BuildStats, layers: int, e2e_s: float,
            original: float, calibration: list[tuple[RankPlan, float]], plans: list[tuple[RankPlan, float]]
            ) -> CaseResult:
    """One table's predictions against the plans' end-to-end measurements."""
    anchored = table.with_original(original)
    calibrated = anchored.calibrated(calibration)
    raw_errors = [anchored.predict_raw(p) / m - 1 for p, m in plans]
    errors = [calibrated.predict(p) / m - 1 for p, m in plans]
    c = calibrated.correction
    return CaseResult(
        case=name,
        settings=settings,
        layers=layers,
        table_models=table_cost.measured,
        table_device_s=table_cost.device_s,
        plans=len(plans),
        e2e_device_s=e2e_s,
        within_raw=sum(abs(e) <= 0.10 for e in raw_errors) / len(plans),
        within=sum(abs(e) <= 0.10 for e in errors) / len(plans),
        median_error=statistics.median(abs(e) for e in errors),
        worst_error=max(abs(e) for e in errors),
        correction=f"{c.scale:.2f}",
        original_ms=original,
    )


def run_to_run_cov(profiler: Profiler, runs: int) -> tuple[float, list[float]]:
    """The same model measured in ``runs`` separate runner calls: CoV of their medians."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_for(profiler.runtime, load_model("cifar10-resnet56"), Path(tmp) / "resnet56", (1, 3, 32, 32))
        medians = [profiler.measure(path, (1, 3, 32, 32)).median_ms for _ in range(runs)]
    return statistics.stdev(medians) / statistics.fmean(medians), medians


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="local")
    parser.add_argument("--plans", type=int, default=50)
    parser.add_argument("--calibration", type=int, default=5, help="plans measured to fit the correction")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--points", type=int, default=10, help="ranks timed per method and layer")
    parser.add_argument("--cov-runs", type=int, default=10)
    parser.add_argument("--cache-dir", type=Path, help="reuse layer timings (default: a fresh temporary dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table-settings", default="table", help="comma-separated; see the module doc")
    parser.add_argument("--int8", action="store_true", help="int8 layers in the table and the plans")
    args = parser.parse_args(argv)
    cases = [case for case in args.cases.split(",") if case]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")

    with make_profiler(load_device(args.device)) as profiler, tempfile.TemporaryDirectory() as fresh:
        info = profiler.info()
        print(f"device `{profiler.name}`: {info['conditions']['cpu_model']}, {info['cpu_count']} cores, "
              f"{info['runtime']} {info['runtime_version']}, threads {info['threads'] or 'default'}\n")
        results = []
        for case in cases:
            results += run_case(case, profiler, args, args.cache_dir or Path(fresh))
            print(f"... {case} done", file=sys.stderr, flush=True)
        cov, medians = run_to_run_cov(profiler, args.cov_runs)

    header = ["case", "table settings", "layers", "table: models timed", "table: device s", "plans",
              "end to end: device s",
              "within ±10% (raw)", "within ±10% (corrected)", "median error", "worst error", "correction scale",
              "original ms"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for r in results:
        row = [r.case, r.settings, r.layers, r.table_models, f"{r.table_device_s:.0f}", r.plans,
               f"{r.e2e_device_s:.0f}",
               f"{r.within_raw:.0%}", f"{r.within:.0%}", f"{r.median_error:.1%}", f"{r.worst_error:.1%}",
               r.correction, f"{r.original_ms:.3f}"]
        print("| " + " | ".join(map(str, row)) + " |")
    print(f"\n| run-to-run (resnet56, batch 1, {args.cov_runs} runner calls) | value |\n|---|---:|")
    print(f"| median of medians | {statistics.median(medians):.3f} ms |")
    print(f"| CoV | {cov:.2%} |")
    print(f"| min / max | {min(medians):.3f} / {max(medians):.3f} ms |")
    return 0


if __name__ == "__main__":
    from _record import run

    raise SystemExit(run(main, __file__, unread=("int8_scoring",)))  # times plans, scores none
