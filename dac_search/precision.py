"""Numeric precision of a layer as deployed, and the int8 quantization scheme: a leaf module, like ``methods``.

A plan names a precision per layer (``fp32`` when it names none) and, when any layer is ``int8``, the
``QuantScheme`` that makes the int8 model: weights int8 per output channel, symmetric; activations uint8
per tensor, their ranges calibrated on synthetic images the model distils itself (never real data).
The scheme is data written into the plan, so the plan alone rebuilds the model that was scored and timed.

Calibration by min/max is the default on the images the search distils (64 at 32x32, 8 at 224x224;
``benchmarks/int8_calibration.py``): the original in int8 kept 92.00% of ResNet-20's 92.10% and 93.62% of
ResNet-56's 93.50%, where percentile 99.99 kept 91.86% and 93.58%; on MobileNet-V2 (500 ImageNet images)
percentile 99.99 kept 84.80% of 86.40% to min/max's 83.60%, and min/max with its rounding learned
(``dac_search.reconstruction.rounding``) 85.40%.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dac_search.errors import ConfigError, PlanError

FP32 = "fp32"
INT8 = "int8"
PRECISIONS = (FP32, INT8)  # fp16 would be one more name here, and one more export path
CALIBRATIONS = ("percentile", "minmax", "entropy")
# Runtimes whose int8 models dac-search writes and times (ONNX Runtime: QDQ models, MLAS int8 kernels;
# LiteRT: full-integer .tflite models, XNNPACK int8 kernels).
INT8_RUNTIMES = ("onnxruntime", "litert")
WEIGHT_QMAX = 127  # int8 weights, symmetric: -127..127, as both runtimes' quantizers make them


@dataclass(frozen=True)
class QuantScheme:
    """How a plan's int8 layers are quantized and calibrated: everything that changes the int8 model.

    ``images`` synthetic images of kind ``inputs`` (None: the plan's own, else ``auto``) made from ``seed``
    calibrate the activation ranges; seed 0 at the search's batch size is the batch the correction is fitted
    on, apart from the held-out batch plans are scored on, so calibration costs no extra distillation.
    """

    weights: str = "int8-per-channel-symmetric"
    activations: str = "uint8-per-tensor"
    calibration: str = "minmax"
    percentile: float = 99.99  # of each activation's histogram, under percentile calibration only
    images: int | None = None  # None: the search's scoring batch size for the input shape
    seed: int = 0
    inputs: str | None = None

    def __post_init__(self) -> None:
        if self.weights != QuantScheme.weights or self.activations != QuantScheme.activations:
            raise PlanError(f"unsupported int8 scheme: weights {self.weights!r}, activations {self.activations!r} "
                            f"(supported: {QuantScheme.weights!r}, {QuantScheme.activations!r})")
        if self.calibration not in CALIBRATIONS:
            raise PlanError(f"unknown calibration {self.calibration!r}; choose one of {', '.join(CALIBRATIONS)}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 50.0 < self.percentile <= 100.0:
            raise PlanError(f"percentile must be a number in (50, 100], got {self.percentile!r}")
        images = self.images
        if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
            raise PlanError(f"calibration images must be a positive integer or null, got {images!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise PlanError(f"calibration seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if v is not None and (k != "percentile" or self.calibration == "percentile")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantScheme:
        if not isinstance(data, Mapping):
            raise PlanError(f"quantization must be an object, got {data!r}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise PlanError(f"quantization: unknown keys {sorted(unknown)}")
        return cls(**data)


def belongs_to(module: str, layers: frozenset[str]) -> bool:
    """Whether ``module`` is one of a plan's int8 ``layers`` or inside one (a factorised layer's factors are)."""
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


def check_precision(value: Any, where: str = "precision") -> str:
    if value not in PRECISIONS:
        raise PlanError(f"{where}: unknown precision {value!r}; choose one of {', '.join(PRECISIONS)}")
    return value


def parse_precisions(text: str | Sequence[str]) -> tuple[str, ...]:
    """``fp32,int8`` -> ("fp32", "int8"): the precisions a search offers; fp32 is always among them."""
    names = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    unknown = [p for p in names if p not in PRECISIONS]
    if unknown or not names:
        raise ConfigError(f"--precision: unknown precision {unknown[0] if unknown else text!r}; "
                          f"choose from {', '.join(PRECISIONS)} (comma-separated)")
    return tuple(p for p in PRECISIONS if p in names or p == FP32)
