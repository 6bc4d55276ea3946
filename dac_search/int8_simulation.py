"""The int8 model ``int8_model`` ships, simulated in PyTorch: for scoring many int8 plans fast.

ONNX Runtime's quantizer writes a model in about a second on ResNet-56 (the float model's ONNX export, a
calibration run of an augmented graph, the QDQ insertion, a session): most of an int8 trial's time. The
search scores hundreds of int8 plans and ships one, so it scores them on this simulation and keeps ONNX
Runtime for every model it builds, times, judges or exports.

The simulation follows the quantizer's own rules (``onnxruntime.quantization``, QDQ format, as ``int8_model``
calls it) op by op, on the model's ``torch.fx`` graph, in the order the exporter writes the ONNX graph:

- an int8 conv quantizes its input and its output; its weight, with the BatchNorm after it folded in as the
  exporter folds it, per output channel, symmetric, on [-127, 127]; its bias to int32 at the input's scale
  times the weight's;
- a ReLU (or ReLU6/clip) whose input is quantized and read by it alone is removed, the quantized tensor
  taking the activation's range; otherwise its output is quantized too when its input is;
- additions, products, global average pooling and concatenation quantize every input and their output;
- reshapes, slices, max and average pooling, zero padding and gathers quantize their output with their
  input's parameters, when their input is quantized;
- the classifier (Linear) and the convs of fp32 layers stay float in the file; so do ops outside the
  quantizer's lists.

Then the session's own rewrites: a ReLU whose output is quantized with zero point 0 is dropped
(``ReluQuantFusion``), and a float conv or Linear that then reads a dequantized tensor and writes one to be
quantized gets its weights quantized per tensor, asymmetric on [-128, 127], and its bias in int32
(``WeightBiasQuantization``): it runs in int8 although the plan calls it fp32. Without this rule the
simulation was as far from the file as int8 is from float.

Activation ranges are min/max over the calibration images (zero included), uint8 per tensor. A graph with
an op this module does not know gives None: the caller scores ONNX Runtime's file. ``tests/test_int8_
simulation.py`` holds it to ONNX Runtime's outputs: what is left is the int8 kernels' own rounding.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from dac_search.int8_model import CALIBRATION_BATCH
from dac_search.precision import WEIGHT_QMAX, QuantScheme, belongs_to

ACTIVATION_LEVELS = 255  # uint8

# How the quantizer treats each op (the names of ``onnxruntime.quantization.registry``'s classes).
CONV, LINEAR, FOLDED, ACTIVATION, ALL_IO, SAME_AS_INPUT, FLOAT, ALIAS, NOT_TENSOR = (
    "conv", "linear", "folded", "activation", "all-io", "same-as-input", "float", "alias", "not-tensor")

_MODULES: dict[type[nn.Module], str] = {
    nn.Conv2d: CONV, nn.Linear: LINEAR, nn.ReLU: ACTIVATION, nn.ReLU6: ACTIVATION, nn.Hardtanh: ACTIVATION,
    nn.MaxPool2d: SAME_AS_INPUT, nn.AvgPool2d: SAME_AS_INPUT, nn.Flatten: SAME_AS_INPUT,
    nn.Dropout: ALIAS, nn.Identity: ALIAS, nn.Hardswish: FLOAT, nn.Hardsigmoid: FLOAT,
}
_FUNCTIONS: dict[Any, str] = {
    operator.add: ALL_IO, operator.iadd: ALL_IO, torch.add: ALL_IO, operator.mul: ALL_IO, operator.imul: ALL_IO,
    torch.mul: ALL_IO, torch.cat: ALL_IO,
    F.relu: ACTIVATION, torch.relu: ACTIVATION, torch.relu_: ACTIVATION, F.relu6: ACTIVATION,
    F.hardtanh: ACTIVATION, F.max_pool2d: SAME_AS_INPUT, F.avg_pool2d: SAME_AS_INPUT,
    torch.flatten: SAME_AS_INPUT, operator.getitem: SAME_AS_INPUT, torch.index_select: SAME_AS_INPUT,
    F.hardswish: FLOAT, F.hardsigmoid: FLOAT, torch.mean: FLOAT,
}
_METHODS = {
    "view": SAME_AS_INPUT, "reshape": SAME_AS_INPUT, "flatten": SAME_AS_INPUT, "index_select": SAME_AS_INPUT,
    "relu": ACTIVATION, "relu_": ACTIVATION, "add": ALL_IO, "add_": ALL_IO, "mul": ALL_IO, "mul_": ALL_IO,
    "contiguous": ALIAS, "mean": FLOAT, "size": NOT_TENSOR, "dim": NOT_TENSOR,
}


@dataclass(frozen=True)
class Affine:
    """uint8 parameters of one activation tensor: ``x ~ scale * (q - zero_point)``, q in [0, 255]."""

    scale: float
    zero_point: int

    @classmethod
    def of_range(cls, low: float, high: float) -> Affine:
        """ONNX Runtime's ``compute_scale_zp`` for uint8, asymmetric: the range widened to hold zero."""
        low, high = min(low, 0.0), max(high, 0.0)
        scale = (high - low) / ACTIVATION_LEVELS
        if scale < torch.finfo(torch.float32).tiny:
            return cls(1.0, 0)
        return cls(float(torch.tensor(scale, dtype=torch.float32)), int(round(-low / scale)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, 0, ACTIVATION_LEVELS)
        return (q - self.zero_point) * self.scale


class Int8Simulation(nn.Module):
    """A float model run as ONNX Runtime runs its quantized file; build it with ``simulated_int8``."""

    def __init__(self, graph: fx.GraphModule, quantized: Mapping[str, Affine],
                 weights: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]], folded: frozenset[str]) -> None:
        """``quantized``: fx node -> the parameters its output is quantized with; ``weights``: conv or linear
        node -> its weight and bias as the runtime computes with them; ``folded``: the BatchNorm nodes those
        already hold."""
        super().__init__()
        self.graph_module = graph
        self.quantized = dict(quantized)
        self.weights = dict(weights)
        self.folded = folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Simulate(self).run(x)


class _Simulate(fx.Interpreter):
    def __init__(self, simulation: Int8Simulation) -> None:
        super().__init__(simulation.graph_module)
        self.simulation = simulation

    def run_node(self, n: fx.Node) -> Any:
        sim = self.simulation
        if n.name in sim.weights:
            module = self.module.get_submodule(str(n.target))
            weight, bias = sim.weights[n.name]
            x = self.env[n.args[0]]  # type: ignore[index]
            out = module._conv_forward(x, weight, bias) if isinstance(module, nn.Conv2d) else F.linear(x, weight, bias)
        elif n.name in sim.folded:
            out = self.env[n.args[0]]  # type: ignore[index]  # the BatchNorm already in the conv's weights
        else:
            out = super().run_node(n)
        affine = sim.quantized.get(n.name)
        return out if affine is None else affine(out)


class _Record(fx.Interpreter):
    """The float model run as is, with each float tensor's min and max kept (ONNX Runtime's min/max
    calibration); a node with no range is no float tensor."""

    def __init__(self, graph: fx.GraphModule) -> None:
        super().__init__(graph)
        self.ranges: dict[str, tuple[float, float]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            low, high = (float(v) for v in torch.aminmax(out))
            if n.name in self.ranges:
                low, high = min(low, self.ranges[n.name][0]), max(high, self.ranges[n.name][1])
            self.ranges[n.name] = (low, high)
        return out


class Int8Calibration:
    """One float model traced and calibrated once: its int8 variants (``simulate``) differ only in which
    layers are int8, never in the float model's activations (as ``int8_model.CalibratedFloat``)."""

    def __init__(self, graph: fx.GraphModule, ranges: Mapping[str, tuple[float, float]]) -> None:
        self.graph = graph
        self.modules = dict(graph.named_modules())
        self.nodes = {n.name: n for n in graph.graph.nodes}
        self.ranges = dict(ranges)

    @classmethod
    def of(cls, model: nn.Module, scheme: QuantScheme, calibration: torch.Tensor) -> Int8Calibration | None:
        """``model`` traced and its activation ranges measured on ``calibration``; None where the simulation
        cannot follow the quantizer (a calibration other than min/max, a model fx cannot trace)."""
        if scheme.calibration != "minmax":
            return None
        try:
            graph = fx.symbolic_trace(model.eval())
            record = _Record(graph)
            with torch.no_grad():
                for start in range(0, len(calibration), CALIBRATION_BATCH):
                    record.run(calibration[start:start + CALIBRATION_BATCH].float())
        except Exception:  # fx raises anything from TraceError to whatever the forward does with a Proxy, and a
            return None  # trace that froze a branch of the forward may fail to run
        return cls(graph, record.ranges)

    def simulate(self, layers: frozenset[str]) -> Int8Simulation | None:
        """The model with the convs of ``layers`` in int8; None at an op the simulation does not know."""
        placement = _placement(self.graph, self.modules, layers, self.ranges.keys())
        if placement is None:
            return None
        quantized: dict[str, Affine] = {name: Affine.of_range(*self.ranges[name]) for name in placement.own}
        for name, source in placement.shared.items():
            quantized[name] = quantized[source]
        weights = {}
        for op in placement.weighted:
            output = self.nodes[op.norm_node or op.node]
            if op.input in quantized and (op.int8 or _requantized(output, quantized, self.modules)):
                norm = None if op.norm is None else self.modules[op.norm]
                weights[op.node] = _runtime_weights(self.modules[op.module], norm, quantized[op.input].scale, op.int8)
        folded = frozenset(op.norm_node for op in placement.weighted
                           if op.norm_node is not None and op.node in weights)
        return Int8Simulation(self.graph, quantized, weights, folded)


def simulated_int8(model: nn.Module, layers: frozenset[str], scheme: QuantScheme,
                   calibration: torch.Tensor) -> Int8Simulation | None:
    """``model`` with the convs of ``layers`` in int8 as ``int8_model`` makes it, simulated; None where the
    simulation cannot follow the quantizer (then only ONNX Runtime's file will do)."""
    calibrated = Int8Calibration.of(model, scheme, calibration)
    return None if calibrated is None else calibrated.simulate(layers)


def _kind(n: fx.Node, modules: Mapping[str, nn.Module], tensors: Collection[str]) -> str | None:
    if n.op in ("placeholder", "output", "get_attr"):
        return NOT_TENSOR
    if n.name not in tensors:
        return NOT_TENSOR
    if n.op == "call_module":
        module = modules[str(n.target)]
        if isinstance(module, nn.BatchNorm2d):
            return FOLDED
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return ALL_IO if module.output_size in (1, (1, 1)) else None
        return _MODULES.get(type(module))
    if n.op == "call_function":
        if n.target is F.adaptive_avg_pool2d:
            return ALL_IO if n.args[1:2] in ((1,), ((1, 1),)) else None
        if n.target is F.pad:
            value = n.kwargs.get("value", n.args[3] if len(n.args) > 3 else 0)
            mode = n.kwargs.get("mode", n.args[2] if len(n.args) > 2 else "constant")
            return SAME_AS_INPUT if mode == "constant" and not value else None
        return _FUNCTIONS.get(n.target)
    if n.op == "call_method":
        return _METHODS.get(str(n.target))
    return None


@dataclass(frozen=True)
class _Weighted:
    """A conv or linear op: the tensor it reads, the BatchNorm the exporter folds into it (module and node),
    and whether it is one of the plan's int8 layers."""

    node: str
    module: str
    input: str
    int8: bool
    norm: str | None = None
    norm_node: str | None = None


@dataclass(frozen=True)
class _Placement:
    """Where the quantizer puts its quantize/dequantize pairs: ``own`` tensors get their own range, ``shared``
    ones their input's parameters (tensor -> the tensor it takes them from)."""

    own: tuple[str, ...]
    shared: Mapping[str, str]
    weighted: tuple[_Weighted, ...]


def _placement(graph: fx.GraphModule, modules: Mapping[str, nn.Module], layers: frozenset[str],
               tensors: Collection[str]) -> _Placement | None:
    """The quantizer's walk over the ops in graph order; None at an op this module does not know."""
    alias: dict[str, str] = {}  # an op the exporter drops (dropout) or folds (a conv into its BatchNorm)
    own: dict[str, None] = {}  # an ordered set
    shared: dict[str, str] = {}
    weighted: dict[str, _Weighted] = {}
    placeholders = {n.name for n in graph.graph.nodes if n.op == "placeholder"}
    readers = {n.name: len(n.users) for n in graph.graph.nodes}

    def source(node: Any) -> str | None:
        if not isinstance(node, fx.Node) or node.name not in tensors:
            return None
        return alias.get(node.name, node.name)

    def quantized(name: str | None) -> bool:
        return name is not None and (name in own or name in shared)

    def register(name: str | None) -> None:
        if name is not None and not quantized(name):
            own[name] = None

    for n in graph.graph.nodes:
        kind = _kind(n, modules, tensors)
        if kind is None:
            return None
        first = source(n.args[0]) if n.args else None
        if kind in (NOT_TENSOR, FLOAT):
            continue
        if kind == FOLDED:
            producer = n.args[0]
            if not (isinstance(producer, fx.Node) and producer.name in weighted and len(producer.users) == 1
                    and isinstance(modules[str(producer.target)], nn.Conv2d)):
                return None  # a BatchNorm the exporter cannot fold: the quantizer would see it whole
            alias[producer.name] = n.name
            op = weighted[producer.name]
            weighted[producer.name] = _Weighted(op.node, op.module, op.input, op.int8, str(n.target), n.name)
            if op.int8:
                register(n.name)
        elif kind == ALIAS:
            if first is not None:
                alias[n.name] = first
        elif kind in (CONV, LINEAR):
            if first is None:
                return None
            int8 = kind == CONV and belongs_to(str(n.target), layers)
            weighted[n.name] = _Weighted(n.name, str(n.target), first, int8)
            if int8:
                register(first)
                if not (len(n.users) == 1 and _is_norm(next(iter(n.users)), modules)):
                    register(n.name)  # else its output is the BatchNorm's, quantized there
        elif kind == ACTIVATION:
            if quantized(first):
                assert first is not None
                if first in own and readers[first] == 1 and first not in placeholders:
                    del own[first]  # removed: the tensor before it takes its range
                register(n.name)
        elif kind == ALL_IO:
            for arg in _tensor_args(n):
                register(source(arg))
            register(n.name)
        elif kind == SAME_AS_INPUT and quantized(first):
            assert first is not None
            shared[n.name] = shared.get(first, first)
    return _Placement(tuple(own), MappingProxyType(shared), tuple(weighted.values()))


def _requantized(output: fx.Node, quantized: Mapping[str, Affine], modules: Mapping[str, nn.Module]) -> bool:
    """Whether a float conv's output is quantized at once, so ONNX Runtime runs it in int8 too: its output
    itself, or a ReLU's that alone reads it where that quantization clips at zero anyway (the runtime drops
    such a ReLU, ``ReluQuantFusion``, and then quantizes the conv's weights, ``WeightBiasQuantization``)."""
    if output.name in quantized:
        return True
    if len(output.users) != 1:
        return False
    (reader,) = output.users
    affine = quantized.get(reader.name)
    return affine is not None and affine.zero_point == 0 and _kind(reader, modules, {reader.name}) == ACTIVATION


def _is_norm(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules[str(node.target)], nn.BatchNorm2d)


def _tensor_args(n: fx.Node) -> list[fx.Node]:
    args = n.args[0] if n.target is torch.cat else n.args
    return [a for a in args if isinstance(a, fx.Node)]  # type: ignore[union-attr]


def _runtime_weights(module: nn.Module, norm: nn.Module | None, input_scale: float,
                     int8: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias a conv or linear that reads a quantized tensor computes with, dequantized: the
    BatchNorm folded in; an int8 layer's weights per output channel on [-127, 127] (the quantizer's); any
    other's per tensor on [-128, 127], asymmetric (ONNX Runtime's ``WeightBiasQuantization`` at session
    start, for every conv or Gemm whose input is dequantized); the bias in int32 at the input's scale times
    the weight's."""
    assert isinstance(module, (nn.Conv2d, nn.Linear))
    weight = module.weight.detach().float()
    bias = None if module.bias is None else module.bias.detach().float()
    if norm is not None:
        assert isinstance(norm, nn.BatchNorm2d) and norm.running_var is not None and norm.running_mean is not None
        gamma = norm.weight.detach() if norm.weight is not None else torch.ones_like(norm.running_var)
        beta = norm.bias.detach() if norm.bias is not None else torch.zeros_like(norm.running_var)
        factor = gamma / torch.sqrt(norm.running_var + norm.eps)
        weight = weight * factor.reshape(-1, *[1] * (weight.dim() - 1))
        bias = ((bias if bias is not None else torch.zeros_like(factor)) - norm.running_mean) * factor + beta
    if int8:
        absmax = weight.abs().reshape(len(weight), -1).amax(dim=1)
        scale = (absmax.double() / WEIGHT_QMAX).float()
        scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
        shape = (-1, *[1] * (weight.dim() - 1))
        weight = torch.clamp(torch.round(weight / scale.reshape(shape)), -WEIGHT_QMAX, WEIGHT_QMAX) \
            * scale.reshape(shape)
    else:
        low, high = min(float(weight.min()), 0.0), max(float(weight.max()), 0.0)
        scale_value = 1.0 if high == low else float(torch.tensor((high - low) / 255, dtype=torch.float32))
        zero = float(torch.round(torch.clamp(torch.tensor(-128 - low / scale_value), -128, 127)))
        weight = (torch.clamp(torch.round(weight / scale_value) + zero, -128, 127) - zero) * scale_value
        scale = torch.full((len(weight),), scale_value)
    if bias is not None:
        bias_scale = input_scale * scale
        bias = torch.round(bias / bias_scale) * bias_scale
    return weight, bias
