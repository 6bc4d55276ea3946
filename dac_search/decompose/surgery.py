"""Swap a plan's convs for their factorised layers, in a deep copy. The plan's correction is not applied here:
``dac_search.proxies.apply.decompose_model`` builds the whole model a plan names.

A plan's prunings (``dac_search.decompose.prune``) are applied first, then its factorisations, so a
pruned producer's consumer is factorised at its new, smaller input width.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from dac_search.decompose.factors import can_decompose, check_decomposable, factorize, max_rank
from dac_search.decompose.layers import LAYERS, FactorizedConv2d
from dac_search.decompose.prune import Pruning, plan_pruning
from dac_search.errors import DecompositionError, PlanError
from dac_search.methods import METHODS, STRUCTURAL
from dac_search.plan import RankPlan


def decompose_conv(conv: nn.Conv2d, rank: int, method: str = "dac", variant: str | None = None) -> FactorizedConv2d:
    """Factorise one conv to ``rank`` with ``method`` (dac | spatial | channel), run by ``variant``."""
    try:
        layer_cls = LAYERS[method]
    except KeyError:
        raise DecompositionError(f"unknown method {method!r}; choose one of {', '.join(LAYERS)}") from None
    return layer_cls.from_conv(conv, rank, variant)


def decomposable_layers(model: nn.Module, methods: Sequence[str] = METHODS) -> dict[str, nn.Conv2d]:
    """Every conv of ``model`` that one of ``methods`` can help, by qualified name, in model order.

    By default any method: a 1x1 conv is listed (``channel`` takes it), a depthwise one never. Structural
    methods in ``methods`` add nothing here (which convs they take depends on the graph: ``prune_sites``).
    """
    factorisations = [method for method in methods if method not in STRUCTURAL]
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d) and any(can_decompose(module, method) for method in factorisations)}


def rank_limit(conv: nn.Conv2d, method: str) -> int:
    """Largest rank a plan may give ``conv`` under ``method``: its output width for a structural method."""
    return conv.out_channels if method in STRUCTURAL else max_rank(conv, method)


def validate_plan(model: nn.Module, plan: RankPlan) -> None:
    """Every planned layer exists, is a decomposable (or prunable) conv, and its rank is in range for its method."""
    check_plan(model, plan)


def check_plan(model: nn.Module, plan: RankPlan) -> Pruning:
    """``validate_plan``, returning the plan's checked pruning (empty when it prunes nothing).

    A factorised consumer of a pruned producer is checked at its pruned input width.
    """
    seen: dict[int, str] = {}
    for name in plan.precisions:  # a layer in another precision is any conv of the model
        _planned_conv(model, name)
    for name in plan.layers:
        module = _planned_conv(model, name)
        first = seen.setdefault(id(module), name)
        if first != name:
            raise PlanError(f"layers {first!r} and {name!r} are the same conv; a plan names each conv once")
    pruned, factorised = plan.split()
    pruning = plan_pruning(model, pruned)
    sliced = pruning.modules(model) if pruning.keep else {}
    removed = {site.consumer: producer for producer, site in pruning.removed.items()}
    for name, choice in factorised.layers.items():
        if name in removed:
            raise PlanError(f"layer {name!r} is the consumer of a removed branch ({removed[name]!r} at rank 0); "
                            "there is nothing left of it to factorise")
        module = sliced.get(name, model.get_submodule(name))
        try:
            check_decomposable(module, choice.method)
        except DecompositionError as exc:
            raise PlanError(f"layer {name!r}: {exc}") from None
        limit = max_rank(module, choice.method)
        if choice.rank > limit:
            after = f" at its pruned input width {module.in_channels}" if name in sliced else ""
            raise PlanError(f"layer {name!r}: rank {choice.rank} exceeds the limit {limit} for method "
                            f"{choice.method!r}{after}")
    return pruning


def _planned_conv(model: nn.Module, name: str) -> nn.Conv2d:
    """The conv a plan names, or one line saying why ``name`` is not one."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise PlanError(f"the plan names layer {name!r}, which this model does not have") from None
    if not isinstance(module, nn.Conv2d):
        raise PlanError(f"layer {name!r} is a {type(module).__name__}, not a Conv2d")
    return module


def replace_layers(model: nn.Module, plan: RankPlan | Mapping[str, Any] | str | os.PathLike[str]) -> nn.Module:
    """A deep copy of ``model`` with the planned convs pruned, then factorised by their SVD factors, uncorrected.

    The architecture of the plan's model (what a latency table times, what a saved state dict loads
    into); the original is left untouched and its SVDs stay cached.
    """
    plan = RankPlan.coerce(plan)
    pruning = check_plan(model, plan)
    base = pruning.apply(model) if pruning.keep else model
    _, factorised = plan.split()
    for name, choice in factorised.layers.items():  # factor the originals, so the cache serves later calls
        factorize(base.get_submodule(name), choice.method)
    out = copy.deepcopy(base) if base is model else base
    for name, choice in factorised.layers.items():
        out.set_submodule(name, decompose_conv(base.get_submodule(name), choice.rank, choice.method, choice.variant))
    return out
