"""Per-layer latency tables: predict a plan's latency on a device without measuring the plan.

Every decomposable conv is timed alone on the device - the original and each candidate replacement -
many layers per runner call, interleaved. A plan is then priced as

    measured original model - its original layers + their replacements,

and a per-device correction - a scale on the predicted change and an offset for any change, fitted from a
few end-to-end measurements - absorbs what isolated layers miss (fusion, memory traffic between layers).

This module holds the table and its arithmetic; ``dac_search.latency.builder`` measures and caches it.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from torch import nn

from dac_search.atomic import write_text_atomic
from dac_search.decompose import LAYERS, METHODS, max_rank
from dac_search.errors import ConfigError, PlanError
from dac_search.methods import variants_of
from dac_search.plan import LayerChoice, RankPlan
from dac_search.precision import FP32, PRECISIONS

ORIGINAL = "original"
INPUTS = "inputs"  # candidate key prefix: the conv dense at fewer input channels, ``inputs/16``
TABLE_FORMAT = "dac-search/latency-table@1"

CandidateFn = Callable[[str, nn.Conv2d], Iterable[LayerChoice]]


@dataclass(frozen=True)
class CandidateKey:
    """One timed candidate of a table row: ``prefix/rank[/variant][@precision]``, or ``original[@precision]``
    (``rank`` None)."""

    prefix: str
    rank: int | None = None
    variant: str | None = None
    precision: str = FP32

    def __str__(self) -> str:
        parts = [
            self.prefix,
            *([] if self.rank is None else [str(self.rank)]),
            *([self.variant] if self.variant else []),
        ]
        return "/".join(parts) + ("" if self.precision == FP32 else f"@{self.precision}")

    @classmethod
    def parse(cls, key: str) -> CandidateKey:
        body, _, precision = key.partition("@")
        prefix, *rest = body.split("/")
        return cls(prefix, int(rest[0]) if rest else None, rest[1] if len(rest) > 1 else None, precision or FP32)


def candidate_key(choice: LayerChoice | None, precision: str = FP32) -> str:
    """``original``, ``dac/3/stacked``, ``channel/16``; in int8 ``original@int8``, ``dac/3/stacked@int8``."""
    if choice is None:
        return str(CandidateKey(ORIGINAL, precision=precision))
    return str(CandidateKey(choice.method, choice.rank, choice.variant, precision))


def rank_grid(limit: int, points: int = 10) -> list[int]:
    """Ranks worth timing up to ``limit``: all of them when few, else a mix of geometric (the small ranks
    a search favours) and even steps (so linear interpolation in between stays close)."""
    if limit <= points:
        return list(range(1, limit + 1))
    half = max(2, points // 2)
    geometric = {round(limit ** (i / (half - 1))) for i in range(half)}
    even = {round(1 + (limit - 1) * i / (half - 1)) for i in range(half)}
    return sorted(geometric | even)


def default_candidates(methods: Sequence[str] = METHODS, points: int = 10) -> CandidateFn:
    """Every method and variant that can take the conv (``channel`` alone on a 1x1), at the ranks of ``rank_grid``."""

    def candidates(name: str, conv: nn.Conv2d) -> list[LayerChoice]:
        return [
            LayerChoice(method, rank, variant)
            for method in methods
            for rank in rank_grid(max_rank(conv, method), points)
            for variant in LAYERS[method].variants
        ]

    return candidates


@dataclass(frozen=True)
class Timing:
    """One timed model or layer: median and interquartile range of its samples."""

    median_ms: float
    iqr_ms: float


@dataclass(frozen=True)
class Correction:
    """What timing layers alone misses in the whole model (fusion, caches, memory planning).

    The change from the original is scaled (``scale``) and, once anything changes at all, shifted by
    ``offset`` (a share of the original): on ONNX Runtime a lightly decomposed ResNet-20 ran no faster
    than the original while its layers alone predicted 7% faster, and heavy plans gained more than their
    layers predicted. Fitted on ``n`` end-to-end measurements; with fewer than three, or all at one
    prediction, the fit is a scale through the origin alone, so a handful of noisy points cannot make it wild.
    """

    scale: float = 1.0
    n: int = 0
    offset: float = 0.0  # share of the original's time, added to every changed plan

    LIMITS: ClassVar[tuple[float, float]] = (0.25, 4.0)
    OFFSET_LIMIT: ClassVar[float] = 0.5

    def to_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "n": self.n, "offset": self.offset}

    def apply(self, original_ms: float, predicted_ms: float, changed: bool = True) -> float:
        shift = self.offset * original_ms if changed else 0.0
        return original_ms + self.scale * (predicted_ms - original_ms) + shift

    @classmethod
    def fit(cls, deltas: Sequence[tuple[float, float]], original_ms: float = 1.0) -> Correction:
        """Least squares ``measured_delta ~= scale * predicted_delta + offset * original_ms`` over
        (predicted, measured) deltas from the original, both in ms."""
        low, high = cls.LIMITS
        n = len(deltas)
        mean_p = sum(p for p, _ in deltas) / n if n else 0.0
        spread = sum((p - mean_p) ** 2 for p, _ in deltas)
        if n < 3 or spread <= 1e-12 * max(1.0, mean_p * mean_p):
            denominator = sum(p * p for p, _ in deltas)
            if not deltas or denominator == 0.0:
                return cls(1.0, n)
            return cls(min(max(sum(p * m for p, m in deltas) / denominator, low), high), n)
        mean_m = sum(m for _, m in deltas) / n
        scale = min(max(sum((p - mean_p) * (m - mean_m) for p, m in deltas) / spread, low), high)
        offset = (mean_m - scale * mean_p) / original_ms
        return cls(scale, n, min(max(offset, -cls.OFFSET_LIMIT), cls.OFFSET_LIMIT))


@dataclass(frozen=True)
class LatencyTable:
    """Latencies of one model's layers on one device, runtime and input shape, and the predictor.

    Times are device milliseconds as of the session that started the cache (later sessions are scaled to
    it, see ``dac_search.latency.builder``); ``with_original`` re-anchors them on a fresh measurement.
    """

    device: str
    runtime: str
    threads: int | None
    input_shape: tuple[int, ...]
    original_ms: float  # the whole original model, measured end to end
    layers: Mapping[str, str]  # layer name -> geometry key
    timings: Mapping[str, Mapping[str, Timing]]  # geometry key -> candidate key -> timing
    correction: Correction = field(default_factory=Correction)
    runtime_version: str = ""
    # producer -> its consumer, for every producer the table prices pruned: a pruned producer's consumer
    # runs at fewer input channels (its row's ``inputs/r`` timings)
    consumers: Mapping[str, str] = field(default_factory=dict)
    # producer -> the depthwise convs its pruned channels pass through (MobileNet's expansion, then its 3x3):
    # each runs at the kept width, its row's ``inputs/r`` timings
    through: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        object.__setattr__(self, "consumers", MappingProxyType(dict(self.consumers)))
        object.__setattr__(self, "through", MappingProxyType({p: tuple(d) for p, d in self.through.items()}))
        frozen = {geometry: MappingProxyType(dict(row)) for geometry, row in self.timings.items()}
        object.__setattr__(self, "timings", MappingProxyType(frozen))

    def layer_ms(self, layer: str, choice: LayerChoice | None = None, precision: str = FP32) -> float:
        """Time of one layer alone, kept (``None``) or replaced, in ``precision`` (an int8 layer alone includes
        the quantize and dequantize at its edges); ranks between timed ones interpolated."""
        row = self._row(layer)
        if choice is None:
            key = candidate_key(None, precision)
            if key not in row:
                what = "" if precision == FP32 else f" in {precision} (rebuild the table with that precision)"
                raise PlanError(f"latency table has no timing of layer {layer!r}{what}")
            return row[key].median_ms
        if choice.rank == 0:  # a removed branch: nothing of the conv runs
            return 0.0
        return self._interpolated(row, layer, choice.method, choice.rank, choice.variant, precision)

    def input_ms(self, layer: str, width: int) -> float:
        """Time of one layer alone, dense, reading only ``width`` of its input channels (a pruned
        producer's consumer)."""
        return 0.0 if width == 0 else self._interpolated(self._row(layer), layer, INPUTS, width, None)

    def _interpolated(self, row: Mapping[str, Timing], layer: str, prefix: str, rank: int,
                      variant: str | None, precision: str = FP32) -> float:
        """``prefix/rank[/variant][@precision]`` from the row, linearly interpolated between the ranks timed."""
        ranks = sorted(key.rank for key in map(CandidateKey.parse, row)
                       if (key.prefix, key.variant, key.precision) == (prefix, variant, precision) and key.rank)
        if not ranks:
            raise PlanError(
                f"latency table has no {CandidateKey(prefix, None, variant, precision)} timings for layer {layer!r}; "
                "rebuild it with that method and precision"
            )

        def at(r: int) -> float:
            return row[str(CandidateKey(prefix, r, variant, precision))].median_ms

        if len(ranks) == 1:
            return at(ranks[0])
        i = min(max(bisect.bisect_left(ranks, rank), 1), len(ranks) - 1)
        lo, hi = ranks[i - 1], ranks[i]
        return max(0.0, at(lo) + (at(hi) - at(lo)) * (rank - lo) / (hi - lo))

    def predict_raw(self, plan: RankPlan | Mapping[str, Any]) -> float:
        """Original model - replaced original layers + their replacements, before the correction."""
        plan = RankPlan.coerce(plan)
        total = self.original_ms
        widths = self._input_widths(plan)
        for layer in sorted({*plan.layers, *widths, *plan.precisions}):
            choice = plan.layers.get(layer)
            time = self.layer_ms(layer, choice, plan.precision_of(layer))
            if layer in widths:  # read at a pruned width: the dense conv's slimming applied to whatever runs
                time *= self.input_ms(layer, widths[layer]) / self.layer_ms(layer)
            total += time - self.layer_ms(layer)
        return total + self._depthwise_change(plan)

    def _input_widths(self, plan: RankPlan) -> dict[str, int]:
        """Consumer -> its input width, for every consumer of a producer the plan prunes."""
        widths = {}
        for layer, choice in plan.layers.items():
            if choice.structural:
                if layer not in self.consumers:
                    raise PlanError(f"the latency table cannot price pruning layer {layer!r}; rebuild it with "
                                    "prune among the methods")
                widths[self.consumers[layer]] = choice.rank
        return widths

    def _depthwise_change(self, plan: RankPlan) -> float:
        """What the depthwise convs between pruned producers and their consumers save at the kept width."""
        change = 0.0
        for layer, choice in plan.layers.items():
            if choice.structural and choice.rank:
                for depthwise in self.through.get(layer, ()):
                    change += self.input_ms(depthwise, choice.rank) - self.layer_ms(depthwise)
        return change

    def predict(self, plan: RankPlan | Mapping[str, Any]) -> float:
        """Predicted latency (ms) of the model decomposed by ``plan`` on this device."""
        plan = RankPlan.coerce(plan)
        return self.correction.apply(self.original_ms, self.predict_raw(plan), changed=plan.changed)

    def fastest_variant(self, layer: str, method: str, rank: int, precision: str = FP32) -> str | None:
        """The variant of ``method`` at ``rank`` that runs fastest on this device (None: no variants)."""
        variants = variants_of(method)
        if variants == (None,):
            return None
        return min(variants, key=lambda variant: self.layer_ms(layer, LayerChoice(method, rank, variant), precision))

    def precisions(self) -> tuple[str, ...]:
        """The precisions this table has timings in."""
        found = {CandidateKey.parse(key).precision for row in self.timings.values() for key in row}
        return tuple(p for p in PRECISIONS if p in found)

    def with_original(self, original_ms: float) -> LatencyTable:
        """Re-anchored on a fresh end-to-end measurement of the original model (say, one taken alongside
        the plans it will be compared with): every timing is scaled by the same factor, since the device
        may run faster or slower now than when the table was built."""
        factor = float(original_ms) / self.original_ms
        timings = {
            geometry: {key: Timing(t.median_ms * factor, t.iqr_ms * factor) for key, t in row.items()}
            for geometry, row in self.timings.items()
        }
        return replace(self, original_ms=float(original_ms), timings=timings)

    def calibrated(self, pairs: Sequence[tuple[RankPlan, float]]) -> LatencyTable:
        """A copy whose correction is fitted on (plan, measured ms) pairs. The measurements should come
        from the same session as ``original_ms`` (see ``with_original``): the fit is on changes from it."""
        deltas = [(self.predict_raw(plan) - self.original_ms, ms - self.original_ms)
                  for plan, ms in pairs if plan.changed]
        return replace(self, correction=Correction.fit(deltas, self.original_ms))

    def _row(self, layer: str) -> Mapping[str, Timing]:
        try:
            return self.timings[self.layers[layer]]
        except KeyError:
            raise PlanError(f"layer {layer!r} is not in the latency table (not a decomposable conv?)") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "device": self.device,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "threads": self.threads,
            "input_shape": list(self.input_shape),
            "original_ms": self.original_ms,
            "correction": self.correction.to_dict(),
            "layers": dict(self.layers),
            "consumers": dict(self.consumers),
            "through": {p: list(d) for p, d in self.through.items()},
            "timings": {g: {k: [t.median_ms, t.iqr_ms] for k, t in row.items()} for g, row in self.timings.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        if data.get("format") != TABLE_FORMAT:
            raise ConfigError(f"not a latency table (format {data.get('format')!r}, expected {TABLE_FORMAT!r})")
        return cls(
            device=data["device"],
            runtime=data["runtime"],
            runtime_version=data.get("runtime_version", ""),
            threads=data["threads"],
            input_shape=tuple(data["input_shape"]),
            original_ms=float(data["original_ms"]),
            correction=Correction(**data["correction"]),
            layers=data["layers"],
            consumers=data.get("consumers", {}),
            through=data.get("through", {}),
            timings={g: {k: Timing(*v) for k, v in row.items()} for g, row in data["timings"].items()},
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read latency table {path}: {exc}") from None
