"""Real top-1 of every baseline allocator x method at fixed FLOPs targets; prints markdown tables.

    .venv/bin/python benchmarks/quality.py [--models cifar10-resnet20,cifar10-resnet56]
        [--targets 0.6,0.5,0.4] [--rows uniform,energy,greedy,greedy+refit] [--methods dac,spatial,channel,mixed]
        [--lazy] [--search-trials 100] [--search-correction stream] [--limit 5000] [--threads 1]

Everything the allocators and corrections see is data-free (distilled inputs, made once per model and
cached); the shared real test images only measure the result. Every plan is rebuilt from the plan
alone with ``decompose_model`` (its correction refitted on the default synthetic inputs), as an export would.
The search row is ``dac-search --device none --budget <target>%flops`` (``--search-correction``, held-out KL, the
defaults), reporting its best feasible plan by proxy. Greedy reads the single-layer KL table of ``default_proxy`` (a
correction fitted on the default distilled batch, scored on a second one; cached under the dac-search cache dir, minutes
for ResNet-56 on first use).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    INPUT_SHAPE,
    add_common_args,
    markdown,
    real_top1,
    split,
    top1,
)

from dac_search.allocate import (  # noqa: E402
    FIRST_CONV,
    METHODS,
    allocate,
    eligible_layers,
    table_ranks,
)
from dac_search.budget import parse_budget  # noqa: E402
from dac_search.cost import CostModel  # noqa: E402
from dac_search.plan import RankPlan  # noqa: E402
from dac_search.proxies import ModelProxy, cached_layer_sensitivity, default_proxy  # noqa: E402
from dac_search.search.config import SearchConfig  # noqa: E402
from dac_search.search.controller import run_search  # noqa: E402
from dac_search.zoo import load_model  # noqa: E402

ROWS = ("uniform", "uniform+refit", "energy", "greedy-weight", "greedy", "greedy+bias", "greedy+refit")


@dataclass(frozen=True)
class Row:
    """One line of the table: an allocator, its proxy's correction, and how the model is rebuilt."""

    label: str
    kind: str
    correction: str | None  # of the proxy (greedy) and of the rebuilt model
    layer_proxy: str | None = None  # greedy on a layer proxy instead of the model proxy


ROW_SPECS = {
    "uniform": Row("uniform", "uniform", None),
    "uniform+refit": Row("uniform + refit", "uniform", "refit"),
    "energy": Row("energy", "energy", None),
    "greedy-weight": Row("greedy on weight error", "greedy", None, "weight"),
    "greedy": Row("greedy on KL", "greedy", None),
    "greedy+bias": Row("greedy on KL + bias", "greedy", "bias"),
    "greedy+refit": Row("greedy on KL + refit", "greedy", "refit"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--targets", default="0.6,0.5,0.4", help="FLOPs kept, as fractions of the original")
    parser.add_argument("--rows", default="uniform,uniform+refit,energy,greedy-weight,greedy,greedy+refit",
                        help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--methods", default="dac,spatial,channel,mixed")
    parser.add_argument("--lazy", action="store_true", help="add lazy greedy + refit (re-measures whole plans)")
    parser.add_argument("--search-trials", type=int, default=100, help="trials per search row (0: no search)")
    parser.add_argument("--search-correction", default=SearchConfig.correction,
                        help="the search rows' --correction (default: the search's own)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    targets = [float(t) for t in split(args.targets)]
    for spec in split(args.models):
        print(run_model(spec, targets, split(args.rows), split(args.methods), args.lazy, args.limit,
                        args.search_trials, args.search_correction))
        print()


def run_model(
    spec: str,
    targets: list[float],
    rows: list[str],
    methods: list[str],
    lazy: bool,
    limit: int | None,
    search_trials: int = 0,
    search_correction: str | None = SearchConfig.correction,
) -> str:
    started = time.perf_counter()
    model = load_model(spec)
    costs = CostModel(model, INPUT_SHAPE)
    layers = eligible_layers(model, costs, (FIRST_CONV,))
    proxies: dict[str | None, ModelProxy] = {}
    tables: dict[str | None, dict] = {}

    def table_for(correction: str | None) -> dict:
        if correction not in tables:
            proxies[correction] = default_proxy(model, INPUT_SHAPE, correction)
            tables[correction] = cached_layer_sensitivity(proxies[correction], layers, METHODS,
                                                          table_ranks(model, costs))
        return tables[correction]

    body = []
    for key in rows:
        row = ROW_SPECS[key]
        for method in methods:
            cells = []
            for target in targets:
                plan = _plan(row, model, method, target, table_for)
                kept = costs.cost(plan).flops / costs.baseline.flops
                cells.append(f"{real_top1(spec, plan, limit):.2f} ({kept:.0%})")
            body.append([row.label, method, *cells])
    if lazy:
        for method in methods:
            cells = []
            for target in targets:
                table = table_for("refit")
                plan = allocate("greedy", model, INPUT_SHAPE, target, method, proxies["refit"], lazy=True, table=table)
                kept = costs.cost(plan).flops / costs.baseline.flops
                cells.append(f"{real_top1(spec, plan, limit):.2f} ({kept:.0%})")
            body.append(["lazy greedy on KL + refit", method, *cells])
    for method in methods if search_trials else ():
        cells = []
        for target in targets:
            plan = search_plan(spec, method, target, search_trials, search_correction)
            kept = costs.cost(plan).flops / costs.baseline.flops
            cells.append(f"{real_top1(spec, plan, limit):.2f} ({kept:.0%})")
        body.append([f"search, {search_trials} trials", method, *cells])
    original = top1(model, limit)
    title = (f"**{spec}**: original top-1 {original:.2f}% on the shared test images; cells: top-1 % "
             f"(FLOPs kept). {time.perf_counter() - started:.0f} s.")
    header = ["allocator", "method", *(f"{t:.0%} FLOPs" for t in targets)]
    return title + "\n\n" + markdown(header, body)


def _plan(row: Row, model: torch.nn.Module, method: str, target: float, table_for) -> RankPlan:  # type: ignore[no-untyped-def]
    if row.kind != "greedy":
        plan = allocate(row.kind, model, INPUT_SHAPE, target, method)
    elif row.layer_proxy is not None:
        plan = allocate("greedy", model, INPUT_SHAPE, target, method, row.layer_proxy)
    else:
        plan = allocate("greedy", model, INPUT_SHAPE, target, method, table=table_for(row.correction))
    return RankPlan(plan.layers, plan.model, plan.input_shape, row.correction)


def search_plan(spec: str, method: str, target: float, trials: int, correction: str | None) -> RankPlan:
    """The search's best feasible plan by proxy (FLOPs budget, no device: the proxy is what differs)."""
    methods = METHODS if method == "mixed" else (method,)
    with tempfile.TemporaryDirectory() as tmp:
        config = SearchConfig(model=spec, budget=parse_budget(f"{target * 100:g}%flops"), device="none",
                              trials=trials, out=Path(tmp) / "run", methods=methods,
                              correction=None if correction == "none" else correction)
        outcome = run_search(config)
        if not outcome.feasible:
            raise SystemExit(f"search found no plan within {target:.0%} FLOPs for {spec}")
        best = min(outcome.pareto, key=lambda p: p.proxy)
        return RankPlan.load(outcome.run_dir / best.plan)


if __name__ == "__main__":
    from _record import run

    # FLOPs budgets, no device: nothing is timed, every plan is fp32 (no int8 plan is scored)
    run(main, __file__, unread=("measure", "table", "int8_scoring"))
