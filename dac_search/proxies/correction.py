"""Data-free corrections of a decomposed model, fitted on synthetic inputs (the paper's future work).

Both run in one forward pass of the decomposed model, layer after layer in execution order: each
decomposed layer is corrected with its input from the *already corrected* decomposed network and its
target from the *original* network on the same synthetic inputs, so error accumulated upstream is
fixed too, not only the layer's own.

- ``bias``: shift the last factor's bias so each output channel's mean matches the original's (the
  expected output shift; Nagel et al. 2019 do it from BatchNorm statistics).
- ``refit``: least-squares refit of the last factor (DAC's 1x1, the 1 x kw of spatial, the 1x1 of
  channel) with an intercept, ridge-pulled towards the SVD factor; the first factors keep their SVD.

``materialize`` turns a plan file into the model it names, correction included, deterministically
from the default synthetic inputs (seed 0), so an exported plan is rebuilt from the plan alone.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dac_search.decompose import ChannelConv2d, DacConv2d, SpatialConv2d, decomposable_layers, decompose_model
from dac_search.decompose.layers import FactorizedConv2d
from dac_search.errors import ConfigError
from dac_search.plan import RankPlan
from dac_search.proxies._hooks import eval_mode, removing
from dac_search.proxies.synthetic import synthetic_inputs

CORRECTIONS = ("bias", "refit")
DEFAULT_INPUTS = {"kind": "distilled", "n": 64, "seed": 0}  # what materialize and the search use

# The factor each method ends with: the one a correction refits (it sees every first-factor output).
_LAST_FACTOR: Mapping[type[FactorizedConv2d], str] = {DacConv2d: "pointwise", SpatialConv2d: "horizontal",
                                                        ChannelConv2d: "expand"}


@dataclass(frozen=True)
class RefitSettings:
    """How the least squares is posed; part of what makes a corrected model reproducible."""

    samples: int = 8192  # output positions per layer the fit sees (of batch x height x width)
    ridge: float = 1e-3  # times the mean feature variance; pulls towards the SVD factor
    seed: int = 0  # which positions are sampled

    def __post_init__(self) -> None:
        if self.samples < 1 or self.ridge < 0:
            raise ConfigError(f"refit needs samples >= 1 and ridge >= 0, got {self.samples}, {self.ridge}")


@dataclass(frozen=True)
class LayerTarget:
    """The original conv's output on the synthetic inputs, at sampled positions and on average."""

    index: torch.Tensor  # (P,) flat positions into batch x (out_h * out_w)
    values: torch.Tensor  # (P, out_channels) original outputs there
    mean: torch.Tensor  # (out_channels,) mean over every position


@dataclass(frozen=True)
class Reference:
    """What the original model does on the inputs: logits and per-layer targets (made once)."""

    logits: torch.Tensor
    targets: Mapping[str, LayerTarget]


def check_correction(correction: str | None) -> None:
    if correction is not None and correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; choose none or one of {', '.join(CORRECTIONS)}")


def _sample_index(total: int, samples: int, seed: int) -> torch.Tensor:
    if total <= samples:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:samples].sort().values


def _at(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) or (N, C, L) -> (P, C): the channel vectors at flat positions of batch x space."""
    flat = tensor.reshape(tensor.shape[0], tensor.shape[1], -1)
    length = flat.shape[2]
    return flat[index // length, :, index % length]


def reference(model: nn.Module, inputs: torch.Tensor, layers: Sequence[str] | None = None,
              settings: RefitSettings | None = None) -> Reference:
    """Run the original model once and keep what the corrections need at every decomposable layer."""
    settings = settings or RefitSettings()
    convs = decomposable_layers(model)
    names = list(convs) if layers is None else list(layers)
    targets: dict[str, LayerTarget] = {}

    def capture(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if name in targets:  # a conv run twice keeps its first call
                return
            total = output.shape[0] * output.shape[2] * output.shape[3]
            # seeded by the layer's name, so any subset of layers samples the same positions
            index = _sample_index(total, settings.samples, settings.seed + zlib.crc32(name.encode()))
            targets[name] = LayerTarget(index, _at(output, index).clone(), output.mean((0, 2, 3)))
        return hook

    handles = [convs[name].register_forward_hook(capture(name)) for name in names]
    with removing(handles), eval_mode(model), torch.no_grad():
        logits = model(inputs)
    return Reference(logits, targets)


def last_factor(layer: nn.Module) -> nn.Conv2d:
    """The conv a factorised layer ends with."""
    for cls, attribute in _LAST_FACTOR.items():
        if isinstance(layer, cls):
            return getattr(layer, attribute)
    raise ConfigError(f"no correction is defined for {type(layer).__name__}")


def _padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding of ``conv``, 'same' and 'valid' included."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        pads = []
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    ph, pw = conv.padding  # type: ignore[misc]
    return (pw, pw, ph, ph)


def _features(conv: nn.Conv2d, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(P, in_channels * kh * kw): the inputs ``conv`` multiplies at the sampled output positions."""
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and _padding(conv) == (0, 0, 0, 0):
        return _at(z, index)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(z, _padding(conv), mode=mode)
    patches = F.unfold(padded, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    return _at(patches, index)


def _least_squares(features: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor,
                   ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (out, f) and bias (out,) minimising ||F W^T + b - Y||^2 / P + ridge' ||W - prior||^2."""
    f_mean, y_mean = features.mean(0), targets.mean(0)
    fc, yc = features - f_mean, targets - y_mean
    count = features.shape[0]
    gram = (fc.T @ fc).double() / count
    cross = (fc.T @ yc).double() / count
    strength = ridge * float(gram.diagonal().mean()) + 1e-12
    gram.diagonal().add_(strength)
    weight = torch.linalg.solve(gram, cross + strength * prior.T.double()).T
    bias = y_mean.double() - weight @ f_mean.double()
    return weight.to(features.dtype), bias.to(features.dtype)


def _set_bias(conv: nn.Conv2d, bias: torch.Tensor) -> None:
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.data.copy_(bias)


def _refit(conv: nn.Conv2d, z: torch.Tensor, target: LayerTarget, ridge: float) -> None:
    """Replace ``conv``'s weight and bias by the least-squares fit of the target, group by group."""
    feats = _features(conv, z, target.index)
    g = conv.groups
    out_g = conv.out_channels // g
    in_g = feats.shape[1] // g
    weight = conv.weight.detach().reshape(conv.out_channels, -1)
    new_weight = torch.empty_like(weight)
    new_bias = torch.empty(conv.out_channels, dtype=weight.dtype)
    for group in range(g):
        rows = slice(group * out_g, (group + 1) * out_g)
        w, b = _least_squares(feats[:, group * in_g:(group + 1) * in_g], target.values[:, rows], weight[rows], ridge)
        new_weight[rows], new_bias[rows] = w, b
    conv.weight.data.copy_(new_weight.reshape(conv.weight.shape))
    _set_bias(conv, new_bias)


def correct(decomposed: nn.Module, plan: RankPlan, inputs: torch.Tensor, ref: Reference, correction: str,
            settings: RefitSettings | None = None) -> torch.Tensor:
    """Correct ``decomposed`` in place, in one pass; returns its logits on ``inputs`` (after correction)."""
    check_correction(correction)
    settings = settings or RefitSettings()
    handles = []
    for name in plan.layers:
        conv = last_factor(decomposed.get_submodule(name))
        target = ref.targets[name]
        if correction == "refit":
            def refit_hook(module: nn.Module, args: tuple[torch.Tensor, ...], target: LayerTarget = target) -> None:
                _refit(module, args[0], target, settings.ridge)  # type: ignore[arg-type]
            handles.append(conv.register_forward_pre_hook(refit_hook))
        else:
            def bias_hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor,
                          target: LayerTarget = target) -> torch.Tensor:
                shift = target.mean - output.mean((0, 2, 3))
                old = module.bias if module.bias is not None else torch.zeros_like(shift)  # type: ignore[union-attr]
                _set_bias(module, old.detach() + shift)  # type: ignore[arg-type]
                return output + shift[None, :, None, None]
            handles.append(conv.register_forward_hook(bias_hook))
    with removing(handles), eval_mode(decomposed), torch.no_grad():
        return decomposed(inputs)


def apply_plan(model: nn.Module, plan: RankPlan, inputs: torch.Tensor | None, ref: Reference | None,
               settings: RefitSettings | None = None) -> tuple[nn.Module, torch.Tensor | None]:
    """decompose_model plus ``plan.correction``; the logits on ``inputs`` when a correction ran."""
    check_correction(plan.correction)
    decomposed = decompose_model(model, plan).eval()
    if plan.correction is None or not plan.layers:
        return decomposed, None
    if inputs is None or ref is None:
        raise ConfigError("a correction needs synthetic inputs and the original model's reference on them")
    return decomposed, correct(decomposed, plan, inputs, ref, plan.correction, settings)


def default_inputs(model: nn.Module, input_shape: Sequence[int], cache_dir: str | os.PathLike[str] | None = None
                   ) -> torch.Tensor:
    """The synthetic inputs a plan's correction is fitted on unless told otherwise (cached)."""
    return synthetic_inputs(model, input_shape, cache_dir=cache_dir, **DEFAULT_INPUTS)  # type: ignore[arg-type]


def materialize(model: nn.Module, plan: RankPlan | Mapping[str, Any] | str | os.PathLike[str],
                inputs: torch.Tensor | None = None, *, settings: RefitSettings | None = None) -> nn.Module:
    """The model a plan names: decompose_model, then ``plan.correction`` fitted on synthetic inputs.

    ``inputs`` default to ``default_inputs`` for the plan's input shape, so the same plan file always
    rebuilds the same model; pass the inputs a ``ModelProxy`` scored with to get exactly what it judged.
    """
    plan = RankPlan.coerce(plan)
    check_correction(plan.correction)
    if plan.correction is None or not plan.layers:
        return decompose_model(model, plan).eval()
    if inputs is None:
        if plan.input_shape is None:
            raise ConfigError("the plan has a correction but no input_shape to make its synthetic inputs")
        inputs = default_inputs(model, plan.input_shape)
    ref = reference(model, inputs, list(plan.layers), settings)
    decomposed, _ = apply_plan(model, plan, inputs, ref, settings)
    return decomposed
