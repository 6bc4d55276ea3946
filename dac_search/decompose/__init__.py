"""DAC and the baseline factorisations: cached factors, factorised layers, model surgery."""

from __future__ import annotations

from dac_search.decompose.factors import METHODS, LayerFactors, check_decomposable, factorize, max_rank
from dac_search.decompose.layers import (
    DAC_VARIANTS,
    LAYERS,
    ChannelConv2d,
    DacConv2d,
    FactorizedConv2d,
    SpatialConv2d,
)
from dac_search.decompose.surgery import decomposable_layers, decompose_conv, decompose_model, validate_plan

__all__ = [
    "DAC_VARIANTS", "LAYERS", "METHODS", "ChannelConv2d", "DacConv2d", "FactorizedConv2d", "LayerFactors",
    "SpatialConv2d", "check_decomposable", "decomposable_layers", "decompose_conv", "decompose_model",
    "factorize", "max_rank", "validate_plan",
]
