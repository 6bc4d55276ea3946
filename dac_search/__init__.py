"""dac-search: data-free DAC factorisation of trained CNNs, with per-layer ranks searched on the device."""

from __future__ import annotations

from dac_search import search as _search_package  # noqa: F401 - the subpackage first: search() below keeps the name
from dac_search.api import Run, open_run, search
from dac_search.cost import Cost, CostModel, count_cost
from dac_search.decompose import decompose_conv, factorize, max_rank
from dac_search.errors import ConfigError, DacSearchError, DecompositionError, ModelLoadError, PlanError
from dac_search.plan import LayerChoice, RankPlan
from dac_search.proxies.apply import decompose_model
from dac_search.rundir import read_run
from dac_search.zoo import load_model

__version__ = "0.2.0"  # bumped when a default changes what a search scores or a plan builds

__all__ = [
    "ConfigError", "Cost", "CostModel", "DacSearchError", "DecompositionError", "LayerChoice", "ModelLoadError",
    "PlanError", "RankPlan", "Run", "count_cost", "decompose_conv", "decompose_model", "factorize", "load_model",
    "max_rank", "open_run", "read_run", "search",
]
