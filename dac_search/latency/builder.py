"""Builds latency tables on a device: times layers alone, many per runner call, and caches them on disk.

Timings are cached in one JSON file per device, runtime (and its version) and threads, keyed by batch and
layer geometry, so identical layers (ResNets repeat a few shapes many times) and later runs cost nothing.
Every runner call also times a fixed reference conv; times are stored scaled by how fast it ran, so
calls made while the device was busier or hotter still agree with each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dac_search.atomic import write_text_atomic
from dac_search.cost import geometry_of, trace_geometry
from dac_search.decompose import METHODS, can_decompose, decompose_conv, replace_layers
from dac_search.decompose.graph import check_site, is_depthwise, model_graph
from dac_search.decompose.prune import slice_conv
from dac_search.errors import PlanError
from dac_search.export import export_for
from dac_search.int8_model import Int8Model, int8_for_timing
from dac_search.latency.table import (
    INPUTS,
    CandidateFn,
    Correction,
    LatencyTable,
    Timing,
    candidate_key,
    default_candidates,
)
from dac_search.plan import LayerChoice, RankPlan
from dac_search.precision import FP32
from dac_search.progress import OnProgress
from profilers.base import LatencyResult, MeasureSettings, Profiler

CACHE_ENV = "DAC_SEARCH_LATENCY_CACHE"
# Run in every table call to measure the device's speed of the moment (a mid-sized 3x3 conv).
REFERENCE_CONV = (32, 32, 3)
REFERENCE_SHAPE = (1, 32, 16, 16)
# Many small layers, interleaved in calls of up to 96 and scaled by a reference conv timed in each call: a
# quarter of the device's repeats (never fewer than three), each a quarter as long, and no second attempt.
# Judged against 30 random plans measured whole (ResNet-56, local, onnxruntime, batch 1), these timings
# predict as well as half-length ones and as the device's own settings: fp32 plans 100% within 10%, median
# error 2.1%, for 22 s of device time instead of 62 s; with int8 layers too, 57% within 10% against 60%,
# for 45 s instead of 132 s (``benchmarks/latency_table.py --table-settings [--int8]``, docs/results.md).
TABLE_SHARE = 0.25
MIN_TABLE_REPEATS = 3  # a median of three
MAX_MODELS_PER_CALL = 96  # bounds one runner call's duration
MAX_BYTES_PER_CALL = 1 << 30  # and its memory: every model of a call is loaded at once
_MODEL_PREFIX = "model:"  # a job timing the whole original model, not a layer


def table_settings(device: MeasureSettings) -> MeasureSettings:
    """A device's own measurement settings (its warm-up, its cooldown) shortened for a table's many layers."""
    return replace(device, repeat_s=device.repeat_s * TABLE_SHARE,
                   repeats=max(MIN_TABLE_REPEATS, round(device.repeats * TABLE_SHARE)), max_attempts=1)


TABLE_SETTINGS = table_settings(MeasureSettings())


def default_cache_dir() -> Path:
    """``$DAC_SEARCH_LATENCY_CACHE``, else ``latency/`` under dac-search's cache (``$DAC_SEARCH_CACHE``)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("DAC_SEARCH_CACHE") or "~/.cache/dac-search").expanduser() / "latency"


class LatencyCache:
    """Layer timings and model measurements of one device/runtime/version/threads, in one JSON file."""

    def __init__(self, directory: Path, device: str, runtime: str, runtime_version: str, threads: int | None) -> None:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{device}-{runtime}-{runtime_version}")
        self.path = directory / f"{safe}-t{threads or 'auto'}.json"
        self.reference_ms, self.layers, self.models = self._read()

    def _read(self) -> tuple[float | None, dict[str, Timing], dict[str, dict[str, Any]]]:
        """(reference ms, layer key -> timing, model key -> {"original": [ms, iqr], "correction": {...}})."""
        if not self.path.is_file():
            return None, {}, {}
        try:
            data = json.loads(self.path.read_text())
            layers = {k: Timing(*v) for k, v in data.get("layers", {}).items()}
            return data.get("reference_ms"), layers, dict(data.get("models", {}))
        except (OSError, json.JSONDecodeError, TypeError):
            return None, {}, {}  # a corrupt cache is only a cache: measure again

    def units(self, reference_ms: float) -> float:
        """Factor turning times measured alongside a reference run of ``reference_ms`` into this cache's
        units (the first reference run it saw), so sessions at different device speeds agree."""
        if self.reference_ms is None:
            self.reference_ms = reference_ms
        return self.reference_ms / reference_ms

    @staticmethod
    def layer_key(geometry: str, batch: int, candidate: str) -> str:
        return f"{geometry}|b{batch}|{candidate}"

    def save(self) -> None:
        """Merge with what another process may have written meanwhile, then replace the file atomically."""
        reference, layers, models = self._read()
        layers.update(self.layers)
        for key, entry in self.models.items():
            models[key] = {**models.get(key, {}), **entry}
        self.layers, self.models = layers, models
        self.reference_ms = reference or self.reference_ms
        data = {
            "reference_ms": self.reference_ms,
            "layers": {k: [t.median_ms, t.iqr_ms] for k, t in sorted(layers.items())},
            "models": models,
        }
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
        precisions: Sequence[str] = (FP32,),
        on_progress: OnProgress | None = None,
    ) -> LatencyTable:
        """Time the original model end to end and every (unique) layer geometry alone, original and each
        candidate, in each of ``precisions`` (a pruned width in fp32 only); only what the cache lacks is
        measured, in batches of one runner call each (counted in ``on_progress``).

        ``layers``: by default every conv DAC can take (timed even with no candidate: a plan may still
        name it) and every other conv a candidate replaces (a 1x1 by ``channel``).
        """
        shape = tuple(int(v) for v in input_shape)
        batch = shape[0]
        cache = self._open_cache()
        geometry = trace_geometry(model, shape, METHODS)
        choose = candidates or default_candidates()
        offered = {name: list(choose(name, model.get_submodule(name))) for name in geometry}
        if layers is None:
            names = [name for name in geometry if offered[name] or can_decompose(model.get_submodule(name), "dac")]
        else:
            names = list(layers)
        consumers, through = _consumers(model, offered)
        names += [c for c in consumers.values() if c not in names]  # timed at their pruned input widths
        unknown = [name for name in names if name not in geometry]
        if unknown:
            raise PlanError(f"layer {unknown[0]!r} is not a decomposable conv of this model")
        inputs = {consumer: [c.rank for c in offered[producer] if c.structural and c.rank]
                  for producer, consumer in consumers.items()}
        # a depthwise conv a pruned producer's channels pass through runs at the kept width too
        for producer, depthwise in through.items():
            for name in depthwise:
                inputs[name] = sorted({*inputs.get(name, []), *(c.rank for c in offered[producer]
                                                                  if c.structural and c.rank)})
        depthwise_names = [name for names_ in through.values() for name in names_]
        geometry = {**geometry, **geometry_of(model, shape, {n: model.get_submodule(n) for n in depthwise_names})}
        names += [name for name in depthwise_names if name not in names]
        model_key = _structure_key(model, shape)
        jobs: dict[str, tuple[nn.Module | Callable[[], nn.Module], tuple[int, ...]]] = {}
        if "original" not in cache.models.get(model_key, {}):  # timed in the same calls as its layers
            jobs[_MODEL_PREFIX + model_key] = (model, shape)
        seen: set[str] = set()
        for name in names:
            geo, conv = geometry[name], model.get_submodule(name)
            layer_jobs = [
                (
                    candidate_key(choice, precision),
                    _layer_factory(conv, choice, precision, geo.in_channels, geo.in_hw, batch),
                    geo.in_channels,
                )
                for precision in precisions
                for choice in [None, *offered.get(name, [])]
                if (choice is None or choice.rank) and (precision == FP32 or not (choice and choice.structural))
            ]
            layer_jobs += [(f"{INPUTS}/{width}", _slim_factory(conv, width), width) for width in inputs.get(name, [])]
            for candidate, factory, channels in layer_jobs:
                key = cache.layer_key(geo.key(), batch, candidate)
                if key in seen:  # the same geometry again (ResNets repeat a few shapes)
                    continue
                seen.add(key)
                if key in cache.layers:
                    self.stats.cached += 1
                else:
                    jobs[key] = (factory, (batch, channels, *geo.in_hw))
        if jobs:
            self._measure_jobs(list(jobs.items()), cache, on_progress)
        original = cache.models[model_key]["original"]
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
            consumers=consumers,
            through=through,
        )

    def calibrate(
        self, table: LatencyTable, model: nn.Module, plans: Sequence[RankPlan]
    ) -> tuple[LatencyTable, list[float]]:
        """Measure the original model and ``plans`` end to end in one interleaved session, re-anchor the
        table on that original, fit the correction, store it with the model's cache entry; returns the
        calibrated table and the plans' measured milliseconds."""
        # The original first and last: on a shared machine one timing can land in a slow spell, and the
        # whole table (and a relative budget) hangs on this one number; the faster of the two is kept.
        first, *measured, last = self.measure_plans(model, table.input_shape, [RankPlan(), *plans, RankPlan()])
        calibrated = table.with_original(min(first, last)).calibrated(list(zip(plans, measured)))
        cache = self._open_cache()
        key = _structure_key(model, table.input_shape)
        cache.models[key] = {**cache.models.get(key, {}), "correction": calibrated.correction.to_dict()}
        cache.save()
        return calibrated, measured

    def measure_plans(self, model: nn.Module, input_shape: Sequence[int], plans: Sequence[RankPlan]) -> list[float]:
        """Median ms of each plan's decomposed model, measured end to end and interleaved (raw device
        milliseconds of this session; compare them with a table re-anchored by ``with_original``)."""
        if not plans:
            return []
        with tempfile.TemporaryDirectory(prefix="dac-search-plans-") as tmp:
            paths = [
                export_for(self.profiler.runtime, _timed_model(model, plan, input_shape), Path(tmp) / f"plan-{i}",
                           input_shape)
                for i, plan in enumerate(plans)
            ]
            shapes = [tuple(int(v) for v in input_shape)] * len(paths)
            results = [r for chunk in _chunks(paths) for r in self._run(paths, shapes, chunk, self.model_settings)]
        self.stats.measured += len(paths)
        return [result.median_ms for result in results]

    def _measure_jobs(
        self, jobs: list[tuple[str, tuple[nn.Module | Callable[[], nn.Module], tuple[int, ...]]]], cache: LatencyCache,
        on_progress: OnProgress | None = None,
    ) -> None:
        """Models and layers of any shapes, many per runner call, interleaved; the cache is saved after each
        call, so an interrupted build keeps what it measured."""
        with tempfile.TemporaryDirectory(prefix="dac-search-table-") as tmp:
            directory = Path(tmp)
            for start in range(0, len(jobs), MAX_MODELS_PER_CALL):
                chunk = jobs[start : start + MAX_MODELS_PER_CALL]
                paths, shapes = [], []
                for i, (_, (module, shape)) in enumerate(chunk):
                    built = module if isinstance(module, nn.Module) else module()
                    paths.append(export_for(self.profiler.runtime, built, directory / f"m{start + i}", shape))
                    shapes.append(shape)
                for (key, _), timing in zip(chunk, self._timings(paths, shapes, self.settings, directory)):
                    if key.startswith(_MODEL_PREFIX):
                        model_key = key.removeprefix(_MODEL_PREFIX)
                        original = [timing.median_ms, timing.iqr_ms]
                        cache.models[model_key] = {**cache.models.get(model_key, {}), "original": original}
                    else:
                        cache.layers[key] = timing
                cache.save()
                for path in paths:
                    path.unlink()
                if on_progress is not None:
                    on_progress(start + len(chunk), len(jobs))

    def _timings(
        self,
        paths: Sequence[Path],
        shapes: Sequence[tuple[int, ...]],
        settings: MeasureSettings | None,
        directory: Path,
    ) -> list[Timing]:
        """Timings in the cache's units: every runner call also runs a fixed reference conv, and times are
        scaled by how fast the reference ran, so calls at different device speeds (load, heat) agree."""
        cache = self._open_cache()
        references = list(directory.glob("reference.*"))
        reference = references[0] if references else export_for(
            self.profiler.runtime, nn.Conv2d(*REFERENCE_CONV, padding=1), directory / "reference", REFERENCE_SHAPE)
        timings: list[Timing] = []
        for chunk in _chunks(paths):
            *results, ref = self._run([*paths, reference], [*shapes, REFERENCE_SHAPE], [*chunk, len(paths)], settings)
            factor = cache.units(ref.median_ms)
            timings += [Timing(r.median_ms * factor, r.iqr_ms * factor) for r in results]
        self.stats.measured += len(paths)
        return timings

    def _run(
        self,
        paths: Sequence[Path],
        shapes: Sequence[tuple[int, ...]],
        indices: Sequence[int],
        settings: MeasureSettings | None,
    ) -> list[LatencyResult]:
        """One runner call for ``paths[indices]``, adding to the device time spent."""
        start = time.monotonic()
        chosen, chosen_shapes = [paths[i] for i in indices], [shapes[i] for i in indices]
        results = self.profiler.measure_many(chosen, chosen_shapes, settings=settings)
        self.stats.device_s += time.monotonic() - start
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


def _layer_factory(conv: nn.Conv2d, choice: LayerChoice | None, precision: str = FP32, channels: int = 0,
                   hw: Sequence[int] = (), batch: int = 1) -> Callable[[], nn.Module]:
    """Builds the layer to time only when its turn comes (hundreds of candidates, built one chunk at a time).

    A pruned producer is the dense conv at its kept outputs (which channels does not change its time); an
    int8 layer is quantized alone, with the quantize and dequantize at its edges."""
    if precision != FP32:
        make = _layer_factory(conv, choice)
        return lambda: int8_for_timing(make(), (batch, channels, *hw))
    if choice is None:
        return lambda: conv
    if choice.structural:
        return lambda: slice_conv(conv, out_keep=torch.arange(choice.rank))
    return lambda: decompose_conv(conv, choice.rank, choice.method, choice.variant)


def _timed_model(model: nn.Module, plan: RankPlan, input_shape: Sequence[int]) -> nn.Module:
    """The plan's architecture, its int8 layers quantized on random inputs: what a timing needs (the
    activation ranges change the int8 model's values, not its speed)."""
    built = replace_layers(model, plan)
    if not plan.int8_layers:
        return built
    assert plan.quantization is not None
    return Int8Model(built, plan.int8_layers, plan.quantization, None, input_shape)


def _slim_factory(conv: nn.Conv2d, width: int) -> Callable[[], nn.Module]:
    """The dense conv reading ``width`` of its input channels (a pruned producer's consumer), or a depthwise
    conv of ``width`` channels (one the pruned channels pass through)."""
    if is_depthwise(conv):
        return lambda: slice_conv(conv, out_keep=torch.arange(width))
    return lambda: slice_conv(conv, in_keep=torch.arange(width))


def _consumers(model: nn.Module, offered: dict[str, list[LayerChoice]]
               ) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Producer -> consumer, and producer -> the depthwise convs between them, for every layer offered
    pruned (the model is traced only when one is)."""
    producers = [name for name, choices in offered.items() if any(c.structural for c in choices)]
    if not producers:
        return {}, {}
    sites = model_graph(model).sites
    found = {name: check_site(sites, name) for name in producers}
    return ({name: site.consumer for name, site in found.items()},
            {name: tuple(conv for conv, _ in site.through) for name, site in found.items() if site.through})


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
