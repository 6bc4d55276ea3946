"""A rank plan: which layers to factorise, how and to what rank. Data that is saved and replayed.

JSON form (layers not listed are kept as they are, in fp32)::

    {"format": "dac-search/plan@2", "model": "cifar10-resnet56", "input_shape": [1, 3, 32, 32],
     "correction": "refit", "quantization": {"calibration": "percentile", "percentile": 99.99, ...},
     "layers": {"layer1.0.conv1": {"method": "dac", "rank": 3, "variant": "stacked", "precision": "int8"},
                "layer1.0.conv2": {"precision": "int8"}}}

``precision`` (optional, ``fp32`` when absent) is how the layer runs as deployed; an entry with a precision
alone keeps the layer dense at that precision. A plan with an int8 layer carries its ``quantization``
scheme (``dac_search.precision.QuantScheme``, the default filled in when absent); its ops between convs
(additions, pooling) run in int8 too, as ONNX Runtime's quantizer leaves them; its fp32 convs and its
classifier stay float. Format ``plan@1`` (no precision) is still read.

``correction`` (optional): fitted on synthetic inputs of the kind ``inputs`` names (optional; absent:
``auto``, decided by the model), ``fit_images`` of them (optional; absent: ``FIT_SCALE`` times the batch the
search scores with, see ``dac_search.proxies.correction.fit_of``), so the plan alone rebuilds its model.

``{"method": "prune", "rank": r}`` on a producer conv keeps r of its output channels, and ``"rank": 0``
removes the residual branch it starts (see ``dac_search.decompose.prune``); its consumer may be factorised in the same
plan. One name, one choice:
a plan file that lists a layer twice is refused rather than read as whichever came last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dac_search.atomic import write_text_atomic
from dac_search.errors import ConfigError, PlanError
from dac_search.methods import PLAN_METHODS, STRUCTURAL, default_variant, variants_of
from dac_search.precision import FP32, INT8, QuantScheme, check_precision
from dac_search.reconstruction.settings import ReconstructionSettings
from dac_search.shapes import checked_shape

PLAN_FORMAT = "dac-search/plan@2"
RECONSTRUCTED_FORMAT = "dac-search/plan@3"  # a plan with a reconstruction: a reader of @2 would build another model
READABLE_FORMATS = ("dac-search/plan@1", PLAN_FORMAT, RECONSTRUCTED_FORMAT)  # @1: every layer fp32


@dataclass(frozen=True)
class LayerChoice:
    """How one layer is replaced: ``method`` at ``rank``, run by ``variant`` (DAC only).

    For ``prune`` the rank is the number of output channels kept; 0 removes the residual branch the
    producer starts (see ``dac_search.decompose.prune``).
    """

    method: str
    rank: int
    variant: str | None = None

    def __post_init__(self) -> None:
        if self.method not in PLAN_METHODS:
            raise PlanError(f"unknown method {self.method!r}; choose one of {', '.join(PLAN_METHODS)}")
        lowest = 0 if self.method in STRUCTURAL else 1  # prune at rank 0 removes a residual branch
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < lowest:
            what = "a non-negative" if lowest == 0 else "a positive"
            raise PlanError(f"rank must be {what} integer, got {self.rank!r}")
        variants = variants_of(self.method)
        if self.variant not in variants:
            allowed = ", ".join(v for v in variants if v) or "none"
            raise PlanError(f"method {self.method!r} has no variant {self.variant!r} (variants: {allowed})")

    @property
    def structural(self) -> bool:
        """True for a choice that changes widths (prune) rather than factorising the layer."""
        return self.method in STRUCTURAL

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "rank": self.rank}
        if self.variant is not None:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "layer") -> LayerChoice:
        if not isinstance(data, Mapping):
            raise PlanError(f"{where}: expected an object with method and rank, got {data!r}")
        unknown = set(data) - {"method", "rank", "variant", "precision"}
        if unknown:
            raise PlanError(f"{where}: unknown keys {sorted(unknown)}")
        method = data.get("method", "dac")
        variant = data.get("variant")
        if variant is None and method in PLAN_METHODS:
            variant = default_variant(method)
        try:
            return cls(method=method, rank=data.get("rank"), variant=variant)  # type: ignore[arg-type]
        except PlanError as exc:
            raise PlanError(f"{where}: {exc}") from None


CORRECTIONS = ("bias", "refit", "stream")  # what a plan's "correction" may name (dac_search.proxies.correction)
REFITS = ("refit", "stream")  # the corrections that refit weights, pruned layers' consumers included


@dataclass(frozen=True)
class RankPlan:
    """Layer name -> LayerChoice, plus the model and input shape it was made for."""

    layers: Mapping[str, LayerChoice] = field(default_factory=dict)
    model: str | None = None
    input_shape: tuple[int, ...] | None = None
    # Data-free correction applied after decomposition (see dac_search.proxies.correction); None = plain DAC.
    correction: str | None = None
    # The kind of synthetic inputs the correction is fitted on (dac_search.proxies.synthetic); None = auto.
    inputs: str | None = None
    # How many synthetic images the correction is fitted on; None = the default for the input shape.
    fit_images: int | None = None
    # Layer -> precision as deployed, for every layer not in fp32 (kept or replaced alike).
    precisions: Mapping[str, str] = field(default_factory=dict)
    # How the int8 layers are quantized; filled with the default when a layer is int8, None otherwise.
    quantization: QuantScheme | None = None
    # Gradient reconstruction on synthetic images after the correction (dac_search.reconstruction); None: none.
    reconstruction: ReconstructionSettings | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", MappingProxyType(dict(sorted(self.layers.items()))))
        precisions = {name: check_precision(p, f"layer {name!r}") for name, p in self.precisions.items() if p != FP32}
        object.__setattr__(self, "precisions", MappingProxyType(dict(sorted(precisions.items()))))
        if not precisions:
            object.__setattr__(self, "quantization", None)
        elif self.quantization is None:
            object.__setattr__(self, "quantization", QuantScheme())
        images = self.fit_images
        if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
            raise PlanError(f"fit_images must be a positive integer or null, got {images!r}")
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))

    def to_dict(self) -> dict[str, Any]:
        fmt = PLAN_FORMAT if self.reconstruction is None else RECONSTRUCTED_FORMAT
        out: dict[str, Any] = {"format": fmt, "model": self.model,
                               "input_shape": list(self.input_shape) if self.input_shape else None}
        if self.correction is not None:
            out["correction"] = self.correction
        if self.inputs is not None:
            out["inputs"] = self.inputs
        if self.fit_images is not None:
            out["fit_images"] = self.fit_images
        if self.quantization is not None:
            out["quantization"] = self.quantization.to_dict()
        if self.reconstruction is not None:
            out["reconstruction"] = self.reconstruction.to_dict()
        layers: dict[str, dict[str, Any]] = {}
        for name in sorted({*self.layers, *self.precisions}):
            entry = self.layers[name].to_dict() if name in self.layers else {}
            if name in self.precisions:
                entry["precision"] = self.precisions[name]
            layers[name] = entry
        out["layers"] = layers
        return out

    def precision_of(self, layer: str) -> str:
        return self.precisions.get(layer, FP32)

    @property
    def int8_layers(self) -> frozenset[str]:
        return frozenset(name for name, p in self.precisions.items() if p == INT8)

    @property
    def changed(self) -> bool:
        """True when the plan changes anything: a layer replaced, pruned or in another precision."""
        return bool(self.layers or self.precisions)

    def in_fp32(self) -> RankPlan:
        """The same layers, every one in fp32: the float model the int8 one is quantized from."""
        settings = self.reconstruction and self.reconstruction.without_rounding()
        return replace(self, precisions={}, quantization=None, reconstruction=settings)

    def closed_form(self) -> RankPlan:
        """The same plan without its reconstruction: the model the search scored."""
        return replace(self, reconstruction=None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankPlan:
        if not isinstance(data, Mapping):
            raise PlanError("a plan must be a JSON object")
        fmt = data.get("format", PLAN_FORMAT)
        if fmt not in READABLE_FORMATS:
            raise PlanError(f"unsupported plan format {fmt!r} (expected {PLAN_FORMAT!r})")
        layers = data.get("layers")
        if not isinstance(layers, Mapping):
            raise PlanError("a plan needs a 'layers' object: layer name -> {method, rank}")
        shape = data.get("input_shape")
        if shape is not None:
            if not isinstance(shape, list):
                raise PlanError(f"input_shape must be a list of four positive integers, got {shape!r}")
            try:
                shape = list(checked_shape(shape, "input_shape"))
            except ConfigError as exc:
                raise PlanError(str(exc)) from None
        choices, precisions = {}, {}
        for name, entry in layers.items():
            where = f"layer {name!r}"
            if isinstance(entry, Mapping) and "precision" in entry:
                precisions[str(name)] = check_precision(entry["precision"], where)
                if set(entry) == {"precision"}:
                    continue  # the layer kept dense, at that precision
            choices[str(name)] = LayerChoice.from_dict(
                {k: v for k, v in entry.items() if k != "precision"} if isinstance(entry, Mapping) else entry, where)
        scheme = data.get("quantization")
        correction = data.get("correction")
        if correction is not None and not isinstance(correction, str):
            raise PlanError(f"correction must be a name or null, got {correction!r}")
        reconstruction = data.get("reconstruction")
        if reconstruction is not None and fmt != RECONSTRUCTED_FORMAT:
            raise PlanError(f"a plan with a reconstruction has format {RECONSTRUCTED_FORMAT!r}, not {fmt!r}")
        inputs = data.get("inputs")
        if inputs is not None and not isinstance(inputs, str):
            raise PlanError(f"inputs must be a kind of synthetic inputs or null, got {inputs!r}")
        return cls(layers=choices, model=data.get("model"), input_shape=tuple(shape) if shape else None,
                   correction=correction, inputs=inputs, fit_images=data.get("fit_images"), precisions=precisions,
                   quantization=None if scheme is None else QuantScheme.from_dict(scheme),
                   reconstruction=None if reconstruction is None else ReconstructionSettings.from_dict(reconstruction))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a reader never sees half a plan."""
        return write_text_atomic(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RankPlan:
        try:
            data = json.loads(Path(path).read_text(), object_pairs_hook=_unique_keys)
        except FileNotFoundError:
            raise PlanError(f"plan file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(f"cannot read plan {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def split(self) -> tuple[dict[str, int], RankPlan]:
        """(producer -> output channels kept, the plan of the factorised layers alone): pruning comes first."""
        pruned = {name: choice.rank for name, choice in self.layers.items() if choice.structural}
        factorised = {name: choice for name, choice in self.layers.items() if not choice.structural}
        return pruned, replace(self, layers=factorised)

    @classmethod
    def coerce(cls, plan: RankPlan | Mapping[str, Any] | str | os.PathLike[str]) -> RankPlan:
        """Accept a RankPlan, its dict form, or a path to its JSON."""
        if isinstance(plan, RankPlan):
            return plan
        if isinstance(plan, Mapping):
            return cls.from_dict(plan)
        if isinstance(plan, (str, os.PathLike)):
            return cls.load(plan)
        raise PlanError(f"cannot read a plan from {type(plan).__name__}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different; a layer listed twice is an error, not the last one wins."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            methods = {item.get("method") for item in (out[key], value) if isinstance(item, Mapping)}
            if len(methods) == 2 and methods & set(STRUCTURAL):
                raise PlanError(f"layer {key!r} is both pruned and factorised: a plan may prune a producer conv "
                                "or factorise it, not both (factorise its consumer instead)")
            raise PlanError(f"key {key!r} appears twice in the plan")
        out[key] = value
    return out
