"""DAC and the baseline factorisations: cached factors, factorised layers, model surgery; inner-width pruning.

``replace_layers`` swaps the planned convs only; ``dac_search.decompose_model`` (``dac_search.proxies.apply``)
is the whole model a plan names, its correction included.
"""

from __future__ import annotations

from dac_search.decompose.factors import (
    LayerFactors,
    can_decompose,
    check_decomposable,
    factorize,
    max_rank,
    refusal,
)
from dac_search.decompose.graph import ModelGraph, PruneSite, Shortcut, model_graph, prune_sites, residual_shortcuts
from dac_search.decompose.layers import LAYERS, ChannelConv2d, DacConv2d, FactorizedConv2d, SpatialConv2d
from dac_search.decompose.prune import Pruning, plan_pruning, prune_model, prune_ranks
from dac_search.decompose.surgery import (
    check_plan,
    decomposable_layers,
    decompose_conv,
    rank_limit,
    replace_layers,
    validate_plan,
)
from dac_search.methods import DAC_VARIANTS, METHODS, PLAN_METHODS, STRUCTURAL

__all__ = [
    "DAC_VARIANTS", "LAYERS", "METHODS", "PLAN_METHODS", "STRUCTURAL", "ChannelConv2d", "DacConv2d",
    "FactorizedConv2d", "LayerFactors", "ModelGraph", "PruneSite", "Pruning", "SpatialConv2d", "can_decompose",
    "check_decomposable", "check_plan", "decomposable_layers", "decompose_conv", "factorize", "max_rank", "model_graph",
    "Shortcut", "plan_pruning", "prune_model", "prune_ranks", "prune_sites", "rank_limit", "refusal", "replace_layers",
    "residual_shortcuts", "validate_plan",
]
