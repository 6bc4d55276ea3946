"""What a search writes about itself in run.json: settings, versions, device, baseline, uniform baseline."""

from __future__ import annotations

from collections.abc import Sequence

from dac_search.budget import Budget
from dac_search.provenance import now, versions
from dac_search.proxies.synthetic import resolve_kind
from dac_search.rundir import (
    Baseline,
    DeviceInfo,
    ProxyInfo,
    ReconstructionInfo,
    ReferencePoint,
    RunInfo,
    StageTime,
    UniformPoint,
)
from dac_search.search.context import SearchContext
from dac_search.search.identity import SearchIdentity

PROXY_KIND = "geometric mean of the whole-plan KL and the sum of single-layer KLs"


def run_info(ctx: SearchContext, identity: SearchIdentity, started: str, *, partial: bool, baseline: Baseline,
             uniform: Sequence[UniformPoint], budget: Budget | None = None,
             trials_complete: int | None = None, references: Sequence[ReferencePoint] = (),
             reconstruction: ReconstructionInfo | None = None, stages: Sequence[StageTime] = ()) -> RunInfo:
    """run.json of the search of ``ctx``; ``budget``: resolved on the original timed beside the front,
    when it was (else the context's)."""
    config = ctx.config
    device = None if ctx.device_info is None else DeviceInfo.from_dict(ctx.device_info)
    return RunInfo(
        command=config.command, created=started, finished=None if partial else now(), partial=partial,
        model=config.model, weights=config.weights, input_shape=tuple(ctx.input_shape), device_spec=config.device,
        device=device, budget=budget or ctx.budget, objective=ctx.budget.objective, methods=tuple(config.methods),
        correction=config.correction, seed=config.seed, n_trials=config.trials,
        proxy=ProxyInfo(PROXY_KIND, resolve_kind(ctx.model, config.inputs, ctx.input_shape),
                        int(ctx.proxy.inputs.shape[0]), ctx.proxy.held_out, ctx.agreement_images or None),
        versions=versions(), baseline=baseline, uniform=tuple(uniform), trials_complete=trials_complete,
        study=identity.name, settings=identity.settings, references=tuple(references),
        reconstruction=reconstruction, stages=tuple(stages))
