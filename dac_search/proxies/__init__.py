"""Data-free accuracy proxies: synthetic inputs, layer proxies, the model proxy, and corrections."""

from __future__ import annotations

from dac_search.proxies.correction import (
    CORRECTIONS,
    RefitSettings,
    default_inputs,
)
from dac_search.proxies.layer import (
    channel_importance,
    following_batchnorms,
    layer_error_table,
    weight_error,
    weight_errors,
)
from dac_search.proxies.model import ModelProxy, ProxyScore, default_proxy, layer_sensitivity
from dac_search.proxies.sensitivity import cached_layer_sensitivity
from dac_search.proxies.synthetic import DistillSettings, bn_statistics_mismatch, synthetic_inputs

__all__ = [
    "CORRECTIONS", "DistillSettings", "ModelProxy", "ProxyScore", "RefitSettings", "bn_statistics_mismatch",
    "cached_layer_sensitivity", "channel_importance", "default_inputs", "default_proxy", "following_batchnorms",
    "layer_error_table", "layer_sensitivity", "synthetic_inputs", "weight_error", "weight_errors",
]
