"""How well each data-free proxy ranks plans the way real accuracy does; prints markdown tables.

    .venv/bin/python benchmarks/proxy_fidelity.py [--models cifar10-resnet20,cifar10-resnet56] [--plans 44]
        [--low 0.3] [--high 0.8] [--seed 0] [--limit 5000] [--threads 1]

Per model, a varied set of plans between ``--low`` and ``--high`` of the FLOPs kept (uniform ranks,
greedy plans on layer proxies, and random plans with random per-layer aggressiveness and methods) is
scored by every proxy and measured on the shared real test images, without and with the ``refit``
correction. Spearman rho and Kendall tau are between each proxy's *predicted goodness* (minus an error
or a KL, plus an agreement) and real top-1: 1 ranks plans perfectly.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    INPUT_SHAPE,
    add_common_args,
    check_dense,
    markdown,
    real_top1,
    split,
    top1,
)

from dac_search.allocate import (  # noqa: E402
    FIRST_CONV,
    METHODS,
    allocate,
    allocate_uniform,
    eligible_layers,
    table_choices,
    table_ranks,
)
from dac_search.atomic import write_text_atomic  # noqa: E402
from dac_search.cost import CostModel  # noqa: E402
from dac_search.plan import RankPlan  # noqa: E402
from dac_search.proxies import (  # noqa: E402
    ModelProxy,
    ProxyScore,
    cached_layer_sensitivity,
    default_inputs,
    default_proxy,
    layer_error_table,
    synthetic_inputs,
)
from dac_search.proxies.sensitivity import Key  # noqa: E402
from dac_search.zoo import load_model  # noqa: E402


@dataclass(frozen=True)
class Proxy:
    """One proxy: its name, whether it predicts the corrected model, and its goodness of a plan."""

    name: str
    corrected: bool
    goodness: Callable[[RankPlan], float]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--plans", type=int, default=44, help="plans per model (at least 40 for the issue)")
    parser.add_argument("--low", type=float, default=0.3)
    parser.add_argument("--high", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="also write every plan's numbers to this CSV (one file per model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for spec in split(args.models):
        save = None if args.save is None else args.save.with_name(f"{args.save.stem}-{spec}{args.save.suffix}")
        print(run_model(spec, args.plans, args.low, args.high, args.seed, args.limit, save))
        print()


def random_plan(model: torch.nn.Module, costs: CostModel, layers: Sequence[str], target: float,
                methods: Sequence[str], rng: random.Random) -> RankPlan:
    """Each layer keeps about ``scale * w`` of its FLOPs (w random per layer, method random), scale bisected."""
    weights = {n: rng.lognormvariate(0.0, 0.6) for n in layers}
    menus = {n: table_choices(model, costs, n, [rng.choice(methods)]) for n in layers}

    def plan_at(scale: float) -> RankPlan:
        choices = {}
        for n in layers:
            share = min(1.0, scale * weights[n])
            original = costs.layer(n).flops
            menu = [c for c in menus[n] if costs.layer(n, c).flops <= share * original]
            if menu:
                choices[n] = max(menu, key=lambda c: costs.layer(n, c).flops)
            elif share < 1.0:
                choices[n] = min(menus[n], key=lambda c: costs.layer(n, c).flops)
        return RankPlan(choices, None, INPUT_SHAPE)

    low, high = 0.0, 4.0
    for _ in range(30):
        middle = (low + high) / 2
        if costs.cost(plan_at(middle)).flops <= target * costs.baseline.flops:
            low = middle
        else:
            high = middle
    return plan_at(low)


def varied_plans(model: torch.nn.Module, costs: CostModel, count: int, low: float, high: float,
                 seed: int) -> list[tuple[str, RankPlan]]:
    """Uniform ranks, greedy plans on layer proxies, then random plans, all within [low, high] FLOPs kept."""
    rng = random.Random(seed)
    layers = eligible_layers(model, costs, (FIRST_CONV,))
    base = costs.baseline.flops
    plans: list[tuple[str, RankPlan]] = []
    for rank in range(1, 8):
        plan = allocate_uniform(model, INPUT_SHAPE, rank)
        if low <= costs.cost(plan).flops / base <= high:
            plans.append((f"uniform dac r={rank}", plan))
    for weighted in (False, True):  # on the candidate ranks only, so every plan is in the KL tables
        table = layer_error_table(model, INPUT_SHAPE, METHODS, weighted=weighted, layers=layers,
                                  ranks=table_ranks(model, costs))
        for method in ("dac", "mixed"):
            for target in (high - 0.1, low + 0.15):
                plan = allocate("greedy", model, INPUT_SHAPE, target, method, table=table)
                plans.append((f"greedy {'bn-' if weighted else ''}weight {method}", plan))
    while len(plans) < count:
        methods = rng.choice([("dac",), METHODS])
        target = rng.uniform(low, high)
        plans.append((f"random {'+'.join(methods)}", random_plan(model, costs, layers, target, methods, rng)))
    return plans[:count]


def additive(table: Mapping[Key, float]) -> Callable[[RankPlan], float]:
    return lambda plan: -sum(table[(n, c.method, c.rank)] for n, c in plan.layers.items())


def proxies(model: torch.nn.Module, costs: CostModel) -> list[Proxy]:
    layers = eligible_layers(model, costs, (FIRST_CONV,))

    ranks = table_ranks(model, costs)
    distilled = default_inputs(model, INPUT_SHAPE)
    gaussian = synthetic_inputs(model, INPUT_SHAPE, "gaussian", n=len(distilled), seed=0)
    weight = layer_error_table(model, INPUT_SHAPE, METHODS, layers=layers)
    weighted = layer_error_table(model, INPUT_SHAPE, METHODS, weighted=True, layers=layers)
    out = [Proxy("weight error (sum over layers)", False, additive(weight)),
           Proxy("BN-weighted weight error (sum)", False, additive(weighted))]
    for correction in (None, "refit"):
        fixed = correction is not None
        tag = " + refit" if fixed else ""
        noise = ModelProxy(model, gaussian, correction)
        proxy = ModelProxy(model, distilled, correction)
        table = cached_layer_sensitivity(proxy, layers, METHODS, ranks)
        score = memo(proxy)
        out += [Proxy(f"KL, Gaussian inputs{tag}", fixed, lambda p, m=noise: -m.score(p).kl),
                Proxy(f"KL, distilled inputs{tag}", fixed, lambda p, s=score: -s(p).kl),
                Proxy(f"agreement, distilled{tag}", fixed, lambda p, s=score: s(p).agreement),
                Proxy(f"sum of single-layer KL, distilled{tag}", fixed, additive(table))]
    held = memo(default_proxy(model, INPUT_SHAPE, "refit"))  # fitted on one distilled batch, scored on another
    summed = additive(table)  # the refit one, from the last pass of the loop
    out += [Proxy("KL, distilled + refit, scored held out", True, lambda p, s=held: -s(p).kl),
            Proxy("agreement, distilled + refit, held out", True, lambda p, s=held: s(p).agreement),
            Proxy("geometric mean: held-out KL and sum of single-layer KL, refit (the search's)", True,
                  lambda p, s=held: -math.sqrt(max(s(p).kl, 0.0) * max(-summed(p), 0.0)))]
    return out


def memo(proxy: ModelProxy) -> Callable[[RankPlan], ProxyScore]:
    """``proxy.score`` computed once per plan (KL and agreement come from the same pass)."""
    seen: dict[str, ProxyScore] = {}

    def score(plan: RankPlan) -> ProxyScore:
        key = plan.to_json()
        if key not in seen:
            seen[key] = proxy.score(plan)
        return seen[key]
    return score


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 0, ties sharing the mean of their places (what Spearman's rho needs)."""
    a = np.asarray(values, dtype=float)
    places = np.empty(len(a))
    places[a.argsort(kind="stable")] = np.arange(len(a))
    _, group, size = np.unique(a, return_inverse=True, return_counts=True)
    return np.bincount(group, weights=places)[group] / size[group]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the ranks (nan when either list is constant)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant pairs) over the pairs untied in x and in y, geometric mean."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(a), 1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    with np.errstate(divide="ignore", invalid="ignore"):
        return float((da * db).sum() / np.sqrt(np.count_nonzero(da) * np.count_nonzero(db)))


def run_model(spec: str, count: int, low: float, high: float, seed: int, limit: int | None,
              save: Path | None = None) -> str:
    started = time.perf_counter()
    model = load_model(spec)
    costs = CostModel(model, INPUT_SHAPE)
    plans = varied_plans(model, costs, count, low, high, seed)
    judges = proxies(model, costs)
    real = {False: [], True: []}  # type: dict[bool, list[float]]
    scores: dict[str, list[float]] = {j.name: [] for j in judges}
    for _, plan in plans:
        real[False].append(real_top1(spec, plan, limit))
        real[True].append(real_top1(spec, RankPlan(plan.layers, None, INPUT_SHAPE, "refit"), limit))
        for judge in judges:
            scores[judge.name].append(judge.goodness(RankPlan(plan.layers, None, INPUT_SHAPE)))
    rows = []
    for judge in judges:
        truth = real[judge.corrected]
        rho = spearman(scores[judge.name], truth)
        tau = kendall(scores[judge.name], truth)
        rows.append([judge.name, "refit" if judge.corrected else "none", f"{rho:.3f}", f"{tau:.3f}"])
    kept = [costs.cost(p).flops / costs.baseline.flops for _, p in plans]
    if save is not None:
        columns = {"plan": [label for label, _ in plans], "flops_kept": kept, "top1": real[False],
                   "top1_refit": real[True], **scores}
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values()))
        write_text_atomic(save, buffer.getvalue())
    drift = check_dense(spec, plans[0][1])
    title = (f"**{spec}**: {len(plans)} plans, {min(kept):.0%}-{max(kept):.0%} FLOPs kept; real top-1 "
             f"{min(real[False]):.1f}-{max(real[False]):.1f}% without correction, {min(real[True]):.1f}-"
             f"{max(real[True]):.1f}% with refit (original {top1(model, limit):.2f}%). "
             f"Dense-equivalent check: max logit difference {drift:.1e}. {time.perf_counter() - started:.0f} s.")
    header = ["proxy", "model measured", "Spearman rho", "Kendall tau"]
    return title + "\n\n" + markdown(header, rows)


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
