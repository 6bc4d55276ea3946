"""What a user could do instead, scored the way the search scores its own plans: the paper's uniform
ranks at every rank, the original in int8 (one call of ONNX Runtime's quantizer, calibrated on the same
distilled images as the plans), and the real top-1 of the original in int8 beside the front's (``--eval-data``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from dac_search.decompose import max_rank
from dac_search.errors import PlanError
from dac_search.eval_data import EvalData, top1
from dac_search.latency import measure_beside
from dac_search.plan import LayerChoice, RankPlan
from dac_search.precision import INT8
from dac_search.proxies.apply import decompose_model
from dac_search.proxies.calibration import every_conv_in_int8
from dac_search.rundir import ReferencePoint, UniformPoint
from dac_search.search.context import SearchContext
from dac_search.search.held_out import HeldOut

INT8_ORIGINAL = "original int8"


def uniform_baseline(ctx: SearchContext) -> list[UniformPoint]:
    """The paper's allocation (one DAC rank on every layer but the input conv) at every rank that costs
    less than the original, in the variant the device's table finds faster."""
    limits = {name: max_rank(ctx.model.get_submodule(name), "dac") for name in ctx.costs.geometry}
    first = next(iter(limits))  # the input conv stays, as in the paper
    timed = ctx.table is not None and "dac" in ctx.config.methods  # the table times the methods searched only
    plans = []
    for rank in range(1, max(limits.values()) + 1):
        choices = {}
        for name, limit in limits.items():
            if name == first:
                continue
            variant = ctx.table.fastest_variant(name, "dac", min(rank, limit)) if timed else "grouped"
            choices[name] = LayerChoice("dac", min(rank, limit), variant)
        plan = RankPlan(choices, **ctx.space.plan_fields())  # type: ignore[arg-type]
        cost = ctx.costs.cost(plan)
        if cost.flops >= ctx.costs.baseline.flops:
            break  # higher ranks only cost more than the original
        plans.append((plan, cost))
    ctx.penalty.prefetch(plan for plan, _ in plans)
    rows = []
    for rank, (plan, cost) in enumerate(plans, start=1):
        rows.append(UniformPoint(rank=rank, flops=cost.flops, params=cost.params, proxy=ctx.score(plan).value,
                                 latency_ms=ctx.latency(plan) if timed else None, top1=None))
    return rows


def int8_original_plan(ctx: SearchContext) -> RankPlan:
    """The original with every conv in int8, quantized and calibrated as the search's int8 plans are."""
    return RankPlan({}, **ctx.space.plan_fields(), precisions=every_conv_in_int8(ctx.model),  # type: ignore[arg-type]
                    quantization=ctx.quantization)


def int8_reference(ctx: SearchContext) -> tuple[ReferencePoint, ...]:
    """The original in int8 as the search scores and prices a plan (its latency predicted by the table where
    it has every conv; measured beside the original by ``measured_references``); none without int8."""
    if INT8 not in ctx.precisions:
        return ()
    plan = int8_original_plan(ctx)
    try:
        latency = ctx.latency(plan)
    except PlanError:  # a conv the table does not time (a depthwise one): measured at the end only
        latency = None
    return (ReferencePoint(INT8_ORIGINAL, ctx.costs.baseline.flops, ctx.costs.baseline.params, ctx.score(plan).value,
                           latency, None, None),)


def measured_references(ctx: SearchContext, references: Sequence[ReferencePoint], data: EvalData | None,
                        held_out: HeldOut | None = None) -> tuple[ReferencePoint, ...]:
    """The references timed end to end beside the original in one session; their real top-1 with data, and
    their agreement on the held-out images the front is judged on."""
    out = []
    plan = int8_original_plan(ctx)  # the one reference there is
    for point in references:
        if ctx.pool is not None:
            (pair,) = measure_beside(ctx.pool, ctx.model, [ctx.proxy.build(plan)], ctx.input_shape)
            point = replace(point, latency_ms=pair.result.median_ms, latency_ratio=pair.ratio)
        if data is not None or held_out is not None:
            model = decompose_model(ctx.model, plan)
            point = replace(point, top1=None if data is None else top1(model, data),
                            agreement=None if held_out is None else held_out.agreement(model))
        out.append(point)
    return tuple(out)
