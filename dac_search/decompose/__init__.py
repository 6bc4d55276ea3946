"""DAC and the baseline factorisations: cached factors, factorised layers, model surgery.

``replace_layers`` swaps the planned convs only; ``dac_search.decompose_model`` (``dac_search.apply``)
is the whole model a plan names, its correction included.
"""

from __future__ import annotations

from dac_search.decompose.factors import (
    LayerFactors, can_decompose, check_decomposable, factorize, max_rank, refusal,
)
from dac_search.decompose.layers import LAYERS, ChannelConv2d, DacConv2d, FactorizedConv2d, SpatialConv2d
from dac_search.decompose.surgery import decomposable_layers, decompose_conv, replace_layers, validate_plan
from dac_search.methods import DAC_VARIANTS, METHODS

__all__ = [
    "DAC_VARIANTS", "LAYERS", "METHODS", "ChannelConv2d", "DacConv2d", "FactorizedConv2d", "LayerFactors",
    "SpatialConv2d", "can_decompose", "check_decomposable", "decomposable_layers", "decompose_conv", "factorize",
    "max_rank", "refusal", "replace_layers", "validate_plan",
]
