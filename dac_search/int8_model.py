"""The int8 model a plan deploys: its float model written as ONNX, then quantized by ONNX Runtime's own static
quantizer (QDQ format), calibrated on synthetic images. One function makes the file the search scores, the
device times and ``dac-search export`` writes.

``Int8Model`` wraps the float model with the names of its int8 layers and the calibration batch. Exported
for ONNX Runtime it is that quantized file; called in Python it runs the same file in ONNX Runtime, so an
accuracy measured on it (``--eval-data``, the held-out judging of the front, the benchmarks) is the arithmetic
that ships. The search's trials score a simulation of it (``int8_simulation``), held to it by the tests.

Which ops are int8: every conv of a listed layer (a factorised layer's every factor) and every op between
them (additions, pooling), as the quantizer leaves them; the convs of the layers not listed stay float, with
the quantize/dequantize pairs at their edges that the quantizer puts there, and so does the classifier
(``_fp32_nodes`` says why).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from dac_search.atomic import atomic_path
from dac_search.errors import ConfigError
from dac_search.onnx_file import export_onnx
from dac_search.precision import INT8_RUNTIMES, QuantScheme, belongs_to
from dac_search.quiet import quiet_tools

CALIBRATION_BATCH = 32  # images per calibration run: the ranges do not depend on it, the memory does
TIMING_IMAGES = 4  # random calibration images of a model built only to be timed (ranges do not change its speed)


class Int8Model(nn.Module):
    """``model`` with ``layers`` (None: every op) quantized to int8 as ``scheme`` says, calibrated on
    ``calibration`` (None: random inputs, for a model that is only timed)."""

    def __init__(self, model: nn.Module, layers: frozenset[str] | None, scheme: QuantScheme,
                 calibration: torch.Tensor | None, input_shape: Sequence[int], *,
                 calibrated: CalibratedFloat | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.layers = layers
        self.scheme = scheme
        self.calibration = calibration
        self.input_shape = tuple(int(v) for v in input_shape)
        self._calibrated = calibrated
        self._onnx: bytes | None = None
        self._session = None
        self._structure: TreeSpec | None = None

    def onnx_bytes(self) -> bytes:
        """The quantized ONNX model (made once)."""
        if self._onnx is None:
            with tempfile.TemporaryDirectory(prefix="dac-search-int8-") as tmp:
                path = Path(tmp) / "int8.onnx"
                calibrated = self._calibrated or CalibratedFloat.written(self.model, Path(tmp), self.input_shape,
                                                                         keep_ranges=False)
                _quantize(calibrated, path, self.layers, self.scheme, self._calibration())
                self._onnx = path.read_bytes()
        return self._onnx

    def quantized(self) -> Int8Model:
        """Itself, its file made now: while the float model's export it was given is still on disk."""
        self.onnx_bytes()
        return self

    def write_onnx(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(self.onnx_bytes())
        return Path(path)

    def write_tflite(self, path: str | Path) -> Path:
        """The same model for LiteRT (``int8_tflite``): same layers, scheme and calibration images."""
        from dac_search.int8_tflite import write_int8_tflite

        return write_int8_tflite(self.model, path, self.layers, self.scheme, self._calibration(), self.input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The int8 model's outputs, run by ONNX Runtime on the CPU (no gradient flows through it)."""
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(self.onnx_bytes(), options, providers=["CPUExecutionProvider"])
        outputs = [torch.from_numpy(o) for o in self._session.run(None, {"input": x.detach().cpu().float().numpy()})]
        if len(outputs) == 1:
            return outputs[0]
        if self._structure is None:  # a detector's dict of head outputs: the exporter flattened it in order
            with torch.no_grad():
                self._structure = tree_flatten(self.model(x[:1]))[1]
        return tree_unflatten(outputs, self._structure)

    def _calibration(self) -> torch.Tensor:
        if self.calibration is not None:
            return self.calibration
        generator = torch.Generator().manual_seed(0)
        return torch.randn((TIMING_IMAGES, *self.input_shape[1:]), generator=generator)


@dataclass(frozen=True)
class CalibratedFloat:
    """A float model written as ONNX once, with where its activation ranges are kept (None: not kept). ONNX
    Runtime's quantizer measures the ranges on the first variant and reads them back for every later one:
    the calibration run is the slow half of quantizing (0.7 of 1.3 s for ResNet-56 on 64 images), and a
    variant differs only in which layers are int8, never in the float model's activations."""

    model: nn.Module
    onnx: Path
    ranges: Path | None

    @classmethod
    def written(cls, model: nn.Module, directory: Path, input_shape: Sequence[int],
                keep_ranges: bool = True) -> CalibratedFloat:
        """``model`` exported into ``directory``, its ranges to be kept there (``keep_ranges``)."""
        calibrated = cls(model, directory / "fp32.onnx", directory / "ranges.json" if keep_ranges else None)
        export_onnx(model, calibrated.onnx, input_shape)
        return calibrated


@contextmanager
def int8_variants(model: nn.Module, scheme: QuantScheme, calibration: torch.Tensor,
                  input_shape: Sequence[int]) -> Iterator[Callable[[frozenset[str]], Int8Model]]:
    """``variant(layers)``: ``model`` with ``layers`` in int8, for many layer sets of one float model (the
    proxy's table of each layer alone in int8), exported and calibrated once. Each variant is the model
    ``Int8Model`` makes on its own, quantized within the block."""
    with tempfile.TemporaryDirectory(prefix="dac-search-int8-") as tmp:
        calibrated = CalibratedFloat.written(model, Path(tmp), input_shape)

        def variant(layers: frozenset[str]) -> Int8Model:
            return Int8Model(model, layers, scheme, calibration, input_shape, calibrated=calibrated).quantized()

        yield variant


def int8_for_timing(module: nn.Module, input_shape: Sequence[int]) -> Int8Model:
    """``module`` all in int8, calibrated on random inputs: a layer of a latency table in int8."""
    return Int8Model(module, None, QuantScheme(), None, input_shape)


def module_of(node_name: str, modules: set[str]) -> str | None:
    """The module an ONNX node of the TorchScript exporter belongs to. Each scope of the node's name is named
    relative to one of the scopes above it (a ``Sequential``'s child by its parent's name and index), so it is
    looked up below the deepest of them first: ``/layer1/layer1.0/conv1/depthwise.0/Conv`` is
    ``layer1.0.conv1.depthwise.0``, ``/features/features.1/conv/conv.0/conv.0.0/Conv`` is ``features.1.conv.0.0``."""
    path = ""
    for scope in node_name.strip("/").split("/")[:-1]:
        parts = path.split(".") if path else []
        for depth in range(len(parts), -1, -1):
            below = ".".join([*parts[:depth], scope])
            if below in modules and (not path or below.startswith(path + ".")):
                path = below
                break
    return path or None


CLASSIFIER_OPS = ("Gemm", "MatMul")


def _fp32_nodes(graph_nodes: Sequence, layers: frozenset[str] | None, modules: set[str]) -> list[str]:
    """The nodes that stay float: the Conv nodes of no int8 layer (``layers`` None: none of them), and the
    classifier (its logits quantized on ranges seen on synthetic images clip real images' larger logits:
    MobileNet-V2 kept 11% of 86% on ImageNet images with only its additions, pooling and classifier in int8)."""
    out = []
    for node in graph_nodes:
        if node.op_type in CLASSIFIER_OPS:
            out.append(node.name)
            continue
        if node.op_type != "Conv" or layers is None:
            continue
        if not belongs_to(module_of(node.name, modules) or "", layers):
            out.append(node.name)
    return out


def _quantize(calibrated: CalibratedFloat, path: Path, layers: frozenset[str] | None, scheme: QuantScheme,
              calibration: torch.Tensor) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self, images: torch.Tensor) -> None:
            self.batches = iter([{"input": images[i:i + CALIBRATION_BATCH].float().numpy()}
                                 for i in range(0, len(images), CALIBRATION_BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    modules = {name for name, _ in calibrated.model.named_modules() if name}
    exclude = _fp32_nodes(onnx.load(str(calibrated.onnx)).graph.node, layers, modules)
    method = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
              "entropy": CalibrationMethod.Entropy}[scheme.calibration]
    try:
        with quiet_tools():
            quantize_static(str(calibrated.onnx), str(path), Batches(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method, nodes_to_exclude=exclude,
                            extra_options={"CalibPercentile": scheme.percentile, "WeightSymmetric": True,
                                           "ActivationSymmetric": False},
                            calibration_providers=["CPUExecutionProvider"],
                            calibration_cache_path=calibrated.ranges)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"ONNX Runtime's quantizer failed on this model: {type(exc).__name__}: {exc}") from None


def check_int8_runtime(runtime: str) -> None:
    """One line for a runtime dac-search writes no int8 model for."""
    if runtime not in INT8_RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} has no int8 path in dac-search (int8 models are written for "
                          f"{', '.join(INT8_RUNTIMES)}); search with --precision fp32 on this device")
