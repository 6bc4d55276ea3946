"""The defaults that shape a result: which plans a search finds, the model a plan builds, the score it gets.

A benchmark record keeps them as they read when it ran; a record whose defaults read otherwise today was
made by another tool than today's, and the results pages say so (``benchmarks/render_results.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dac_search.latency.builder import TABLE_SETTINGS
from dac_search.plan import PLAN_FORMAT
from dac_search.precision import QuantScheme
from dac_search.proxies.correction import (
    DEFAULT_INPUTS,
    DEFAULT_PIXELS,
    FIT_SCALE,
    MIN_DEFAULT_INPUTS,
    RefitSettings,
)
from dac_search.proxies.model import INT8_SCORINGS
from dac_search.proxies.synthetic import DistillSettings, ImpressionSettings
from dac_search.reconstruction.settings import ReconstructionSettings
from dac_search.search.config import SearchConfig
from profilers.base import MeasureSettings


def _flat(prefix: str, value: Any) -> dict[str, str]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f"{prefix}.{k}": repr(v) for k, v in dataclasses.asdict(value).items()}
    return {prefix: repr(value)}


def shaping_defaults() -> dict[str, str]:
    """Every default that changes which plans a search finds, the model a plan builds or a score it gets, as
    ``name -> repr``. A result made when one of them read otherwise was made by another tool than today's."""
    search = {f.name: f.default for f in dataclasses.fields(SearchConfig)
              if f.name in ("trials", "seed", "methods", "correction", "inputs", "precisions", "proxy_images",
                            "measure_points")}
    out: dict[str, str] = {"plan_format": repr(PLAN_FORMAT), "fit_scale": repr(FIT_SCALE),
                           "default_inputs": repr(dict(DEFAULT_INPUTS)), "default_pixels": repr(DEFAULT_PIXELS),
                           "min_default_inputs": repr(MIN_DEFAULT_INPUTS), "int8_scoring": repr(INT8_SCORINGS[0])}
    out.update({f"search.{k}": repr(v) for k, v in search.items()})
    for name, value in (("refit", RefitSettings()), ("distill", DistillSettings()),
                        ("impressions", ImpressionSettings()), ("int8", QuantScheme()),
                        ("reconstruction", ReconstructionSettings()), ("measure", MeasureSettings()),
                        ("table", TABLE_SETTINGS)):
        out.update(_flat(name, value))
    return out


def changed_defaults(recorded: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """The defaults that read otherwise today than in ``recorded``: name -> (then, now); None where absent."""
    today = shaping_defaults()
    return {key: (recorded.get(key), today.get(key)) for key in sorted(set(recorded) | set(today))
            if recorded.get(key) != today.get(key)}
