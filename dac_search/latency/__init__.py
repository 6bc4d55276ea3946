"""Latency of plans on a device: per-layer tables measured there, the predictor built on them, and the
export of candidate models for end-to-end timing. Uses ``profilers`` to measure; ``profilers`` knows
nothing of this package."""

from __future__ import annotations

from dac_search.latency.builder import LatencyTableBuilder, table_settings
from dac_search.latency.models import measure_beside, measure_models
from dac_search.latency.table import Correction, LatencyTable, default_candidates

__all__ = [
    "Correction", "LatencyTable", "LatencyTableBuilder", "default_candidates", "measure_beside",
    "measure_models", "table_settings",
]
