"""What a user could do instead, scored the way the search scores its own plans: the paper's uniform
ranks at every rank, and the real top-1 of the original beside the front's (``--eval-data``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from dac_search.decompose import max_rank
from dac_search.eval_data import EvalData, top1
from dac_search.plan import LayerChoice, RankPlan
from dac_search.proxies.apply import decompose_model
from dac_search.rundir import TrialRow, UniformPoint
from dac_search.search.context import SearchContext


def uniform_baseline(ctx: SearchContext) -> list[UniformPoint]:
    """The paper's allocation (one DAC rank on every layer but the input conv) at every rank that costs
    less than the original, in the variant the device's table finds faster."""
    rows = []
    limits = {name: max_rank(ctx.model.get_submodule(name), "dac") for name in ctx.costs.geometry}
    first = next(iter(limits))  # the input conv stays, as in the paper
    for rank in range(1, max(limits.values()) + 1):
        choices = {}
        for name, limit in limits.items():
            if name == first:
                continue
            variant = ctx.table.fastest_variant(name, "dac", min(rank, limit)) if ctx.table else "grouped"
            choices[name] = LayerChoice("dac", min(rank, limit), variant)
        plan = RankPlan(choices, ctx.config.model, ctx.input_shape, ctx.config.correction, ctx.config.plan_inputs)
        cost = ctx.costs.cost(plan)
        if cost.flops >= ctx.costs.baseline.flops:
            break  # higher ranks only cost more than the original
        rows.append(UniformPoint(rank=rank, flops=cost.flops, params=cost.params, proxy=ctx.score(plan).value,
                                 latency_ms=ctx.latency(plan), top1=None))
    return rows


def with_top1(ctx: SearchContext, run_dir: Path, front: Sequence[TrialRow], data: EvalData) -> tuple[list[TrialRow], float]:
    """The front with the real top-1 of each plan's model as ``dac-search export`` writes it, and the original's."""
    rows = [replace(p, top1=top1(decompose_model(ctx.model, run_dir / p.plan), data)) for p in front]
    return rows, top1(ctx.model, data)
