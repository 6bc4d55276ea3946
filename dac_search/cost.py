"""FLOPs (multiply-adds) and parameters of a model under any rank plan.

Shapes are traced once with a sample input; after that the cost of a plan is arithmetic, so the
search can price thousands of plans without building a single layer. FLOPs count the
multiply-adds of every Conv2d and Linear for one image (batch 1), the convention of the DAC paper.

A pruned producer is priced at its kept output channels, the depthwise convs it passes through at as many
channels, its consumer at as many input channels (and factorised at that width if the plan says so), the
BatchNorms on the way without the removed channels' affine parameters: exactly what ``count_cost`` finds
on the built model. A removed branch (rank 0) costs no
multiply-adds and its constant's parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from dac_search.decompose.graph import PruneSite, check_site, model_graph
from dac_search.decompose.prune import check_width
from dac_search.decompose.surgery import decomposable_layers
from dac_search.errors import PlanError
from dac_search.methods import METHODS
from dac_search.plan import REFITS, LayerChoice, RankPlan

Hook = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about a conv that decides its cost and its latency, without its weights."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    bias: bool
    padding_mode: str
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @classmethod
    def of(cls, name: str, conv: nn.Conv2d, in_hw: Sequence[int], out_hw: Sequence[int]) -> ConvGeometry:
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        return cls(name, conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                   padding, tuple(conv.dilation), conv.groups, conv.bias is not None, conv.padding_mode,
                   (int(in_hw[0]), int(in_hw[1])), (int(out_hw[0]), int(out_hw[1])))

    def key(self) -> str:
        """A stable text key of the geometry (latency caches are keyed by it, not by the name)."""
        return (f"c{self.in_channels}-n{self.out_channels}-k{self.kernel_size[0]}x{self.kernel_size[1]}"
                f"-s{self.stride[0]}x{self.stride[1]}-p{self.padding}-d{self.dilation[0]}x{self.dilation[1]}"
                f"-g{self.groups}-b{int(self.bias)}-{self.padding_mode}-i{self.in_hw[0]}x{self.in_hw[1]}")


@dataclass(frozen=True)
class Cost:
    """Multiply-adds for one image, and parameters."""

    flops: int
    params: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.params + other.params)

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.flops - other.flops, self.params - other.params)


def conv_cost(geometry: ConvGeometry, choice: LayerChoice | None = None) -> Cost:
    """Cost of one conv kept as it is (``choice`` None) or replaced as ``choice`` says."""
    c, n, g = geometry.in_channels, geometry.out_channels, geometry.groups
    cg = c // g
    kh, kw = geometry.kernel_size
    oh, ow = geometry.out_hw
    out_pixels = oh * ow
    bias = n if geometry.bias else 0
    if choice is None:
        weights = n * cg * kh * kw
        return Cost(out_pixels * weights, weights + bias)
    if choice.method == "prune":  # the producer alone, at its kept outputs (CostModel.cost adds its consumer)
        return conv_cost(replace(geometry, out_channels=choice.rank))
    r = choice.rank
    if choice.method == "dac":
        depthwise, pointwise = c * r * kh * kw, n * cg * r
        return Cost(out_pixels * (depthwise + pointwise), depthwise + pointwise + bias)
    if choice.method == "spatial":
        vertical, horizontal = g * r * cg * kh, n * r * kw
        return Cost(oh * geometry.in_hw[1] * vertical + out_pixels * horizontal, vertical + horizontal + bias)
    if choice.method == "channel":
        reduce, expand = g * r * cg * kh * kw, n * r
        return Cost(out_pixels * (reduce + expand), reduce + expand + bias)
    raise ValueError(f"unknown method {choice.method!r}")


def _run_once(model: nn.Module, input_shape: Sequence[int], hooks: Mapping[nn.Module, Hook]) -> None:
    """One forward pass of one image (batch 1) with ``hooks`` attached, removed whatever happens."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, *(int(v) for v in input_shape[1:]))))
    finally:
        for handle in handles:
            handle.remove()


def count_cost(model: nn.Module, input_shape: Sequence[int]) -> Cost:
    """Direct count on a built model: run it once and add up every Conv2d and Linear it executes."""
    flops = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            flops += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            flops += output.numel() * module.in_features

    _run_once(model, input_shape, {m: hook for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))})
    return Cost(flops, sum(p.numel() for p in model.parameters()))


def trace_geometry(model: nn.Module, input_shape: Sequence[int],
                   methods: Sequence[str] = ("dac",)) -> dict[str, ConvGeometry]:
    """Geometry of every conv one of ``methods`` can take, in execution order, from one forward pass."""
    return geometry_of(model, input_shape, decomposable_layers(model, methods))


def geometry_of(model: nn.Module, input_shape: Sequence[int],
                convs: Mapping[str, nn.Module]) -> dict[str, ConvGeometry]:
    """Geometry of the named ``convs`` (any convs, depthwise too), from one forward pass."""
    found: dict[str, ConvGeometry] = {}
    if not convs:
        return found

    def recorder(name: str) -> Hook:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            found.setdefault(name, ConvGeometry.of(name, module, inputs[0].shape[-2:], output.shape[-2:]))
        return hook

    _run_once(model, input_shape, {conv: recorder(name) for name, conv in convs.items()})
    return found


class CostModel:
    """Prices any plan of one model from shapes traced once.

    ``traced``: every conv some method can take (1x1 convs included), so any valid plan is priced.
    ``geometry``: those ``methods`` can take (default DAC's: the convs with a spatial kernel).
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], methods: Sequence[str] = ("dac",)) -> None:
        self.input_shape = tuple(int(v) for v in input_shape)
        self.traced = trace_geometry(model, input_shape, METHODS)
        wanted = decomposable_layers(model, methods)
        self.geometry = {name: geometry for name, geometry in self.traced.items() if name in wanted}
        self.baseline = count_cost(model, input_shape)
        self._model = model  # read again only for a plan that prunes
        self._passed: dict[str, ConvGeometry] | None = None

    def _original(self, name: str) -> ConvGeometry:
        """A conv's traced geometry: a decomposable one, or a depthwise conv a pruning passes through."""
        if name in self.traced:
            return self.traced[name]
        if self._passed is None:  # traced on first use: only plans that prune through depthwise convs need it
            passed = {dw for site in self.sites().values() if not isinstance(site, str) for dw, _ in site.through}
            self._passed = geometry_of(self._model, self.input_shape,
                                        {name: self._model.get_submodule(name) for name in passed})
        return self._passed[name]

    def sites(self) -> Mapping[str, PruneSite | str]:
        """The model's prune sites (its ``model_graph``, traced once)."""
        return model_graph(self._model).sites

    def producers(self) -> frozenset[str]:
        """The convs ``prune`` can take; none when torch.fx cannot trace the model (nothing is offered pruned)."""
        try:
            return frozenset(name for name, site in self.sites().items() if not isinstance(site, str))
        except PlanError:
            return frozenset()

    def layer(self, name: str, choice: LayerChoice | None = None) -> Cost:
        return conv_cost(self._original(name), choice)

    def cost(self, plan: RankPlan | Mapping[str, Any]) -> Cost:
        plan = RankPlan.coerce(plan)
        pruned, factorised = plan.split()
        geometry, total = self._pruned(pruned, factorised, plan.correction)
        for name in {*factorised.layers, *geometry}:
            shape = geometry.get(name) or self._original(name)
            if plan.correction is not None and name in factorised.layers:
                shape = replace(shape, bias=True)  # a correction fits the factorised layer's bias
            total = total - self.layer(name) + conv_cost(shape, factorised.layers.get(name))
        return total

    def _pruned(self, pruned: Mapping[str, int], factorised: RankPlan,
                correction: str | None) -> tuple[dict[str, ConvGeometry], Cost]:
        """The geometries a pruning changes, and the baseline less the BatchNorm parameters it removes."""
        total, geometry = self.baseline, {}
        if not pruned:
            return geometry, total
        sites = {name: check_site(self.sites(), name) for name in pruned}
        for name, rank in pruned.items():
            site, width = sites[name], self.traced[name].out_channels
            check_width(name, rank, width, site)
            geometry[name] = replace(geometry.get(name, self.traced[name]), out_channels=rank)
            consumer = replace(geometry.get(site.consumer, self.traced[site.consumer]), in_channels=rank)
            norm = self._model.get_submodule(site.norm) if site.norm else None
            if norm is not None and norm.affine:
                total = total - Cost(0, 2 * (width - rank))
            if rank == 0:  # a removed branch: its constant is the consumer's bias, its BatchNorm gone
                consumer = replace(consumer, bias=True)
                after = self._model.get_submodule(site.consumer_norm) if site.consumer_norm else None
                if after is not None and after.affine:
                    total = total - Cost(0, 2 * consumer.out_channels)
            geometry[site.consumer] = consumer
            for depthwise, depthwise_norm in site.through:
                geometry[depthwise] = replace(self._original(depthwise), in_channels=rank, out_channels=rank,
                                              groups=rank)
                norm = self._model.get_submodule(depthwise_norm) if depthwise_norm else None
                if norm is not None and norm.affine:
                    total = total - Cost(0, 2 * (width - rank))
        for name, site in sites.items():  # a refitted consumer with no bias and no BatchNorm to fold it into
            refitted = (correction in REFITS and 0 < pruned[name] < self.traced[name].out_channels
                        and site.consumer not in factorised.layers)
            consumer = geometry[site.consumer]
            if refitted and not consumer.bias and site.consumer_norm is None:
                total = total + Cost(0, consumer.out_channels)
        return geometry, total
