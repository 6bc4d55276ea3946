"""Per-layer latency tables: predict a plan's latency on a device without measuring the plan.

Every decomposable conv is timed alone on the device - the original and each candidate replacement -
many layers per runner call, interleaved. A plan is then priced as

    measured original model - its original layers + their replacements,

and a per-device linear correction ``a * x + b``, fitted from a few end-to-end measurements, absorbs what
isolated layers miss (fusion, memory traffic between layers). Layer timings are cached on disk, keyed by
device, runtime (and its version), threads, batch and layer geometry, so identical layers (ResNets repeat
a few shapes many times) and later runs cost nothing.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from dac_search.cost import ConvGeometry, trace_geometry
from dac_search.decompose import LAYERS, METHODS, decompose_conv, decompose_model, max_rank
from dac_search.errors import ConfigError, PlanError
from dac_search.export import export_onnx
from dac_search.plan import LayerChoice, RankPlan, write_text_atomic
from profilers import _protocol
from profilers.base import LatencyResult, MeasureSettings, Profiler

CACHE_ENV = "DAC_SEARCH_LATENCY_CACHE"
ORIGINAL = "original"
TABLE_FORMAT = "dac-search/latency-table@1"
# Many small layers: fewer retries than a whole model; the runner protocol itself is unchanged.
TABLE_SETTINGS = MeasureSettings(max_attempts=2)
MAX_MODELS_PER_CALL = 96  # bounds one runner call's duration
MAX_BYTES_PER_CALL = 1 << 30  # and its memory: every model of a call is loaded at once

CandidateFn = Callable[[str, nn.Conv2d], Iterable[LayerChoice]]


def default_cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else Path("~/.cache/dac-search/latency").expanduser()


def candidate_key(choice: LayerChoice | None) -> str:
    """``original``, ``dac/3/stacked``, ``channel/16``."""
    if choice is None:
        return ORIGINAL
    return f"{choice.method}/{choice.rank}" + (f"/{choice.variant}" if choice.variant else "")


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
    """Every method and variant, at the ranks of ``rank_grid``."""

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
    median_ms: float
    iqr_ms: float

    @classmethod
    def of(cls, result: LatencyResult) -> Timing:
        return cls(result.median_ms, result.iqr_ms)


@dataclass(frozen=True)
class Correction:
    """measured ~= scale * predicted + offset_ms, fitted on ``n`` end-to-end measurements."""

    scale: float = 1.0
    offset_ms: float = 0.0
    n: int = 0

    def apply(self, predicted_ms: float) -> float:
        return self.scale * predicted_ms + self.offset_ms

    @classmethod
    def fit(cls, pairs: Sequence[tuple[float, float]]) -> Correction:
        """Least squares on (predicted, measured); a pure scale when too few or too alike points."""
        if not pairs:
            return cls()
        xs, ys = [p for p, _ in pairs], [m for _, m in pairs]
        n = len(pairs)
        mean_x, mean_y = sum(xs) / n, sum(ys) / n
        var_x = sum((x - mean_x) ** 2 for x in xs)
        if n >= 3 and var_x > (0.05 * mean_x) ** 2 * n:  # spread of at least ~5%: the slope is meaningful
            scale = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var_x
            return cls(scale, mean_y - scale * mean_x, n)
        return cls(sum(ys) / sum(xs), 0.0, n)


@dataclass(frozen=True)
class LatencyTable:
    """Latencies of one model's layers on one device, runtime and input shape, and the predictor."""

    device: str
    runtime: str
    threads: int | None
    input_shape: tuple[int, ...]
    original_ms: float  # the whole original model, measured end to end
    layers: Mapping[str, str]  # layer name -> geometry key
    timings: Mapping[str, Mapping[str, Timing]]  # geometry key -> candidate key -> timing
    correction: Correction = field(default_factory=Correction)
    runtime_version: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        frozen = {geometry: MappingProxyType(dict(row)) for geometry, row in self.timings.items()}
        object.__setattr__(self, "timings", MappingProxyType(frozen))

    def layer_ms(self, layer: str, choice: LayerChoice | None = None) -> float:
        """Time of one layer alone, kept (``None``) or replaced; ranks between timed ones interpolated."""
        row = self._row(layer)
        key = candidate_key(choice)
        if key in row:
            return row[key].median_ms
        if choice is None:
            raise PlanError(f"latency table has no timing of layer {layer!r}")
        ranks = self._ranks(row, choice.method, choice.variant)
        if not ranks:
            raise PlanError(f"latency table has no {candidate_key(replace(choice, rank=1)).replace('/1', '')} "
                            f"timings for layer {layer!r}; rebuild it with that method")
        if len(ranks) == 1:
            return row[candidate_key(replace(choice, rank=ranks[0]))].median_ms
        i = min(max(bisect.bisect_left(ranks, choice.rank), 1), len(ranks) - 1)
        lo, hi = ranks[i - 1], ranks[i]
        t_lo = row[candidate_key(replace(choice, rank=lo))].median_ms
        t_hi = row[candidate_key(replace(choice, rank=hi))].median_ms
        return max(0.0, t_lo + (t_hi - t_lo) * (choice.rank - lo) / (hi - lo))

    def predict_raw(self, plan: RankPlan | Mapping[str, Any]) -> float:
        """Original model - replaced original layers + their replacements, before the correction."""
        plan = RankPlan.coerce(plan)
        total = self.original_ms
        for layer, choice in plan.layers.items():
            total += self.layer_ms(layer, choice) - self.layer_ms(layer)
        return total

    def predict(self, plan: RankPlan | Mapping[str, Any]) -> float:
        """Predicted latency (ms) of the model decomposed by ``plan`` on this device."""
        return self.correction.apply(self.predict_raw(plan))

    def fastest_variant(self, layer: str, method: str, rank: int) -> str | None:
        """The variant of ``method`` at ``rank`` that runs fastest on this device (None: no variants)."""
        variants = LAYERS[method].variants
        if variants == (None,):
            return None
        return min(variants, key=lambda variant: self.layer_ms(layer, LayerChoice(method, rank, variant)))

    def with_original(self, original_ms: float) -> LatencyTable:
        """Re-anchored on a fresh end-to-end measurement of the original model (say, one taken alongside
        the plans it will be compared with), keeping the layer timings and the correction."""
        return replace(self, original_ms=float(original_ms))

    def calibrated(self, pairs: Sequence[tuple[RankPlan, float]]) -> LatencyTable:
        """A copy whose correction is fitted on (plan, measured ms) pairs; the original model counts."""
        points = [(self.original_ms, self.original_ms)] + [(self.predict_raw(p), ms) for p, ms in pairs]
        return replace(self, correction=Correction.fit(points))

    def _row(self, layer: str) -> Mapping[str, Timing]:
        try:
            return self.timings[self.layers[layer]]
        except KeyError:
            raise PlanError(f"layer {layer!r} is not in the latency table (not a decomposable conv?)") from None

    @staticmethod
    def _ranks(row: Mapping[str, Timing], method: str, variant: str | None) -> list[int]:
        ranks = []
        for key in row:
            parts = key.split("/")
            if parts[0] == method and (parts[2] if len(parts) > 2 else None) == variant:
                ranks.append(int(parts[1]))
        return sorted(ranks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "device": self.device,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "threads": self.threads,
            "input_shape": list(self.input_shape),
            "original_ms": self.original_ms,
            "correction": {"scale": self.correction.scale, "offset_ms": self.correction.offset_ms, "n": self.correction.n},
            "layers": dict(self.layers),
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


class LatencyCache:
    """Layer timings and model measurements of one device/runtime/version/threads, in one JSON file."""

    def __init__(self, directory: Path, device: str, runtime: str, runtime_version: str, threads: int | None) -> None:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{device}-{runtime}-{runtime_version}")
        self.path = directory / f"{safe}-t{threads or 'auto'}.json"
        self.layers, self.models = self._read()

    def _read(self) -> tuple[dict[str, Timing], dict[str, dict[str, Any]]]:
        """(layer key -> timing, model key -> {"original": [ms, iqr], "correction": {...}})."""
        if not self.path.is_file():
            return {}, {}
        try:
            data = json.loads(self.path.read_text())
            return {k: Timing(*v) for k, v in data.get("layers", {}).items()}, dict(data.get("models", {}))
        except (OSError, json.JSONDecodeError, TypeError):
            return {}, {}  # a corrupt cache is only a cache: measure again

    @staticmethod
    def layer_key(geometry: str, batch: int, candidate: str) -> str:
        return f"{geometry}|b{batch}|{candidate}"

    def save(self) -> None:
        """Merge with what another process may have written meanwhile, then replace the file atomically."""
        layers, models = self._read()
        layers.update(self.layers)
        for key, entry in self.models.items():
            models[key] = {**models.get(key, {}), **entry}
        self.layers, self.models = layers, models
        data = {"layers": {k: [t.median_ms, t.iqr_ms] for k, t in sorted(layers.items())}, "models": models}
        write_text_atomic(self.path, json.dumps(data, indent=0) + "\n")


@dataclass
class BuildStats:
    """What building a table cost: models measured and seconds spent in runner calls (device time)."""

    measured: int = 0
    cached: int = 0
    device_s: float = 0.0


class LatencyTableBuilder:
    """Builds and calibrates latency tables for one profiler (device), caching layer timings on disk."""

    def __init__(
        self,
        profiler: Profiler,
        *,
        cache_dir: Path | None = None,
        settings: MeasureSettings = TABLE_SETTINGS,
        model_settings: MeasureSettings | None = None,
    ) -> None:
        self.profiler = profiler
        self.cache_dir = cache_dir or default_cache_dir()
        self.settings = settings
        self.model_settings = model_settings
        self.stats = BuildStats()
        self._cache: LatencyCache | None = None
        self._runtime_version = ""

    def build(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        *,
        candidates: CandidateFn | None = None,
        layers: Iterable[str] | None = None,
    ) -> LatencyTable:
        """Time the original model end to end and every (unique) layer geometry alone, original and each
        candidate; only what the cache lacks is measured, in batches of one runner call each."""
        shape = tuple(int(v) for v in input_shape)
        batch = shape[0]
        cache = self._open_cache()
        geometry = trace_geometry(model, shape)
        names = list(geometry) if layers is None else list(layers)
        unknown = [name for name in names if name not in geometry]
        if unknown:
            raise PlanError(f"layer {unknown[0]!r} is not a decomposable conv of this model")
        choose = candidates or default_candidates()
        wanted: dict[str, tuple[ConvGeometry, nn.Conv2d, LayerChoice | None]] = {}
        for name in names:
            geo = geometry[name]
            conv = model.get_submodule(name)
            for choice in [None, *choose(name, conv)]:
                key = cache.layer_key(geo.key(), batch, candidate_key(choice))
                wanted.setdefault(key, (geo, conv, choice))
        missing = {key: item for key, item in wanted.items() if key not in cache.layers}
        self.stats.cached += len(wanted) - len(missing)

        model_key = _structure_key(model, shape)
        with tempfile.TemporaryDirectory(prefix="dac-search-table-") as tmp:
            original = cache.models.get(model_key, {}).get("original")
            if original is None:
                path = export_onnx(model, Path(tmp) / "model.onnx", shape)
                result = self._measure([path], shape, self.model_settings)[0]
                original = [result.median_ms, result.iqr_ms]
                cache.models[model_key] = {**cache.models.get(model_key, {}), "original": original}
                cache.save()
            if missing:
                self._measure_layers(list(missing.items()), batch, Path(tmp), cache)

        stored = cache.models[model_key].get("correction")
        return LatencyTable(
            device=self.profiler.name,
            runtime=self.profiler.runtime,
            runtime_version=self._runtime_version,
            threads=self.profiler.threads,
            input_shape=shape,
            original_ms=float(original[0]),
            layers={name: geometry[name].key() for name in names},
            timings=_rows(cache, {geometry[name].key() for name in names}, batch),
            correction=Correction(**stored) if stored else Correction(),
        )

    def calibrate(
        self, table: LatencyTable, model: nn.Module, plans: Sequence[RankPlan]
    ) -> tuple[LatencyTable, list[float]]:
        """Measure ``plans`` end to end (interleaved, one runner call), fit the correction, store it with
        the model's cache entry, and return the calibrated table and the measured milliseconds."""
        measured = self.measure_plans(model, table.input_shape, plans)
        calibrated = table.calibrated(list(zip(plans, measured)))
        cache = self._open_cache()
        key = _structure_key(model, table.input_shape)
        c = calibrated.correction
        cache.models[key] = {**cache.models.get(key, {}), "correction": {"scale": c.scale, "offset_ms": c.offset_ms, "n": c.n}}
        cache.save()
        return calibrated, measured

    def measure_plans(self, model: nn.Module, input_shape: Sequence[int], plans: Sequence[RankPlan]) -> list[float]:
        """Median ms of each plan's decomposed model, measured end to end in one interleaved call."""
        if not plans:
            return []
        with tempfile.TemporaryDirectory(prefix="dac-search-plans-") as tmp:
            paths = [
                export_onnx(decompose_model(model, plan), Path(tmp) / f"plan-{i}.onnx", input_shape)
                for i, plan in enumerate(plans)
            ]
            return [r.median_ms for r in self._measure(paths, input_shape, self.model_settings)]

    def _measure_layers(
        self,
        items: list[tuple[str, tuple[ConvGeometry, nn.Conv2d, LayerChoice | None]]],
        batch: int,
        directory: Path,
        cache: LatencyCache,
    ) -> None:
        """Layers of any shapes, many per runner call, interleaved; the cache is saved after each call so
        an interrupted build keeps what it measured."""
        for start in range(0, len(items), MAX_MODELS_PER_CALL):
            chunk = items[start : start + MAX_MODELS_PER_CALL]
            paths, shapes = [], []
            for i, (_, (geo, conv, choice)) in enumerate(chunk):
                module = conv if choice is None else decompose_conv(conv, choice.rank, choice.method, choice.variant)
                shape = (batch, geo.in_channels, *geo.in_hw)
                paths.append(export_onnx(module, directory / f"layer-{start + i}.onnx", shape))
                shapes.append(shape)
            results = self._measure(paths, shapes, self.settings)
            for (key, _), result in zip(chunk, results):
                cache.layers[key] = Timing.of(result)
            cache.save()
            for path in paths:
                path.unlink()

    def _measure(
        self,
        paths: Sequence[Path],
        shapes: Sequence[int] | Sequence[Sequence[int]],
        settings: MeasureSettings | None,
    ) -> list[LatencyResult]:
        start = time.monotonic()
        per_path = _protocol.shapes(shapes, len(paths))
        results: list[LatencyResult] = []
        for chunk in _chunks(paths):
            results += self.profiler.measure_many(
                [paths[i] for i in chunk], [per_path[i] for i in chunk], settings=settings
            )
        self.stats.device_s += time.monotonic() - start
        self.stats.measured += len(paths)
        if results and not self._runtime_version:
            self._runtime_version = results[0].conditions.runtime_version
        return results

    def _open_cache(self) -> LatencyCache:
        """The cache file depends on the runtime version, so ask the device once what it runs."""
        if self._cache is None:
            info = self.profiler.info()
            self._runtime_version = str(info.get("runtime_version", ""))
            self._cache = LatencyCache(
                self.cache_dir, self.profiler.name, self.profiler.runtime, self._runtime_version, self.profiler.threads
            )
        return self._cache


def _chunks(paths: Sequence[Path]) -> list[list[int]]:
    """Indices of ``paths`` split into runner calls bounded in count and in total bytes."""
    chunks: list[list[int]] = [[]]
    size = 0
    for i, path in enumerate(paths):
        nbytes = path.stat().st_size
        if chunks[-1] and (len(chunks[-1]) >= MAX_MODELS_PER_CALL or size + nbytes > MAX_BYTES_PER_CALL):
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += nbytes
    return chunks


def _rows(cache: LatencyCache, geometries: set[str], batch: int) -> dict[str, dict[str, Timing]]:
    rows: dict[str, dict[str, Timing]] = {geometry: {} for geometry in geometries}
    for key, timing in cache.layers.items():
        geometry, batch_part, candidate = key.split("|", 2)
        if geometry in rows and batch_part == f"b{batch}":
            rows[geometry][candidate] = timing
    return rows


def _structure_key(model: nn.Module, shape: Sequence[int]) -> str:
    """Identifies a model's architecture (not its weights, which do not change latency) and input shape."""
    text = f"{type(model).__module__}.{type(model).__qualname__}|{tuple(shape)}|{model!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]
