"""Data-free corrections of a decomposed model, fitted on synthetic inputs (the paper's future work).

Both run in one forward pass, layer after layer in execution order: each decomposed layer is corrected
with its input from the *already corrected* decomposed network and its target from the *original*
network on the same synthetic inputs, so the error accumulated upstream is repaired too, not only the
layer's own.

- ``bias``: shift the last factor's bias so every output channel's mean matches the original's (the
  expected output shift of Nagel et al. 2019, measured on synthetic inputs instead of derived from
  BatchNorm statistics; distilled inputs reproduce those statistics).
- ``refit``: least-squares refit of the last factor (DAC's 1x1, spatial's 1 x kw, channel's 1x1) and
  a bias, ridge-pulled towards the SVD factor; the first factor keeps its SVD.
- ``stream``: ``refit``, but a refitted conv that ends a residual branch (its BatchNorm's output is added
  to a parameter-free shortcut) is fitted to the original *residual stream* after the add rather than to
  its own original output: the error the shortcut carries in from upstream is the branch's to cancel, so
  it does not pass on to every later block. One ResNet-56 plan at 0.6x latency: 89.82% with ``refit``,
  90.56% with ``stream`` (5,000 CIFAR-10 test images; the searches' gains are in the README).

The pass runs on a *workbench*, a copy of the original model whose planned convs are swapped for
dense stand-ins computing the same function as the factorised layers (see ``_factors``), and swapped
back afterwards. ``dac_search.proxies.apply.decompose_model`` turns a plan into the model it names, correction
included, deterministically from the default synthetic inputs (seed 0): a plan file rebuilds from itself alone.
"""

from __future__ import annotations

import copy
import math
import os
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from dac_search.decompose import LAYERS, decomposable_layers, factorize, replace_layers, validate_plan
from dac_search.decompose.factors import LayerFactors
from dac_search.decompose.graph import Shortcut
from dac_search.errors import ConfigError
from dac_search.plan import CORRECTIONS, REFITS, RankPlan
from dac_search.progress import OnProgress
from dac_search.proxies import _factors
from dac_search.proxies._hooks import eval_mode, removing
from dac_search.proxies.replay import PartialPass, Prefix, run_network
from dac_search.proxies.synthetic import AUTO, synthetic_inputs

DEFAULT_INPUTS: Mapping[str, Any] = {"kind": AUTO, "n": 64, "seed": 0}  # the batch the search scores with
DEFAULT_PIXELS = 64 * 32 * 32  # the default batch holds about this many input pixels per channel...
MIN_DEFAULT_INPUTS = 8  # ...but never fewer images than this
FIT_SCALE = 4  # a plan's model is fitted on this many times the images (and positions) the search scores with


def default_input_count(input_shape: Sequence[int]) -> int:
    """Images in the default batch: 64 at 32x32, fewer for larger inputs (8 at 224x224).

    A refit needs rows (images x positions), not images: 8 ImageNet-sized images give each layer as
    many rows as 64 CIFAR ones, at an eighth of the cost of 64. Decided by the shape alone, so
    ``decompose_model`` rebuilds from a plan alone the model it names (``fit_of``).
    """
    pixels = math.prod(int(v) for v in input_shape[2:]) or 1
    wanted = math.ceil(DEFAULT_PIXELS / pixels / MIN_DEFAULT_INPUTS) * MIN_DEFAULT_INPUTS
    return max(MIN_DEFAULT_INPUTS, min(int(DEFAULT_INPUTS["n"]), wanted))


@dataclass(frozen=True)
class RefitSettings:
    """How the least squares is posed; part of what makes a corrected model reproducible."""

    samples: int = 4096  # output positions per layer the fit sees (of batch x height x width)
    ridge: float = 1e-2  # times the mean feature variance; pulls towards the SVD factor
    seed: int = 0  # which positions are sampled

    def __post_init__(self) -> None:
        if self.samples < 1 or self.ridge < 0:
            raise ConfigError(f"refit needs samples >= 1 and ridge >= 0, got {self.samples}, {self.ridge}")


@dataclass(frozen=True)
class LayerTarget:
    """The original conv's output on the synthetic inputs, at sampled positions and on average."""

    index: torch.Tensor  # (P,) flat positions into batch x out_h x out_w
    out_hw: tuple[int, int]
    values: torch.Tensor  # (P, out_channels) original outputs there
    mean: torch.Tensor  # (out_channels,) mean over every position
    shortcut: torch.Tensor | None = None  # (P, out_channels) the original's shortcut there, for ``stream``


@dataclass(frozen=True)
class Reference:
    """What the original model does on the inputs: logits and per-layer targets (made once)."""

    logits: torch.Tensor
    targets: Mapping[str, LayerTarget]


@dataclass(frozen=True)
class FittedLayer:
    """A corrected layer: normal-form factors (``_factors``) and the last factor's bias."""

    factors: LayerFactors
    bias: torch.Tensor | None


@dataclass(frozen=True)
class PassResult:
    """The logits of the (corrected) decomposed model on the inputs (None: the pass stopped once its layers
    were fitted), and what each layer became."""

    logits: torch.Tensor | None
    layers: Mapping[str, FittedLayer]


def check_correction(correction: str | None) -> None:
    if correction is not None and correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; choose none or one of {', '.join(CORRECTIONS)}")


def _sample_index(total: int, samples: int, seed: int) -> torch.Tensor:
    if total <= samples:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:samples].sort().values


def _at(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (P, C): the channel vectors at flat positions of batch x height x width."""
    flat = tensor.reshape(tensor.shape[0], tensor.shape[1], -1)
    length = flat.shape[2]
    return flat[index // length, :, index % length]


def reference(model: nn.Module, inputs: torch.Tensor, layers: Sequence[str] | None = None,
              settings: RefitSettings | None = None, shortcuts: Mapping[str, Shortcut] | None = None) -> Reference:
    """Run the original model once and keep what the corrections need at every decomposable layer
    (and, for ``stream``, the shortcut values the layers that end a residual branch are added to)."""
    settings = settings or RefitSettings()
    convs = decomposable_layers(model)
    names = list(convs) if layers is None else list(layers)
    targets: dict[str, LayerTarget] = {}
    shortcuts = {name: found for name, found in (shortcuts or {}).items() if name in names}
    branch_inputs = BranchInputs(model, shortcuts)

    def capture(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if name in targets:  # a conv run twice keeps its first call
                return
            total = output.shape[0] * output.shape[2] * output.shape[3]
            # seeded by the layer's name, so any subset of layers samples the same positions
            index = _sample_index(total, settings.samples, settings.seed + zlib.crc32(name.encode()))
            targets[name] = LayerTarget(index, (int(output.shape[2]), int(output.shape[3])),
                                        _at(output, index).clone(), output.mean((0, 2, 3)),
                                        branch_inputs.shortcut_at(name, index))
        return hook

    handles = [convs[name].register_forward_hook(capture(name)) for name in names] + branch_inputs.hooks(model)
    try:
        with removing(handles), eval_mode(model), torch.no_grad():
            logits = model(inputs)
    finally:
        branch_inputs.clear()
    return Reference(logits, targets)


class BranchInputs:
    """The inputs of residual branches in one forward pass, captured at their first conv (the producer), so a
    branch's last conv can be fitted to the residual stream: ``stream``'s target is the original's output
    plus what the shortcut lost upstream, ``(original shortcut - this network's shortcut)`` divided by the
    BatchNorm's scale between conv and add (zero where that scale is zero)."""

    def __init__(self, model: nn.Module, shortcuts: Mapping[str, Shortcut]) -> None:
        self.shortcuts = dict(shortcuts)
        self._inputs: dict[str, torch.Tensor] = {}
        self._scales: dict[str, torch.Tensor] = {}
        for name, found in self.shortcuts.items():
            out_channels = model.get_submodule(name).out_channels
            norm = model.get_submodule(found.norm) if found.norm else None
            scale = torch.ones(out_channels)
            if norm is not None and norm.weight is not None:
                gamma = norm.weight.detach()
                scale = torch.where(gamma.abs() > 1e-12, (norm.running_var + norm.eps).sqrt() / gamma, 0.0)
            self._scales[name] = scale

    def hooks(self, network: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        """Pre-hooks capturing each branch's input in ``network`` (the caller removes them)."""
        def capture(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
            def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                self._inputs[name] = args[0]
            return hook
        return [network.get_submodule(found.producer).register_forward_pre_hook(capture(name))
                for name, found in self.shortcuts.items()]

    def clear(self) -> None:
        """Forget the inputs of the last pass (they hold a batch of feature maps per branch)."""
        self._inputs.clear()

    def shortcut_at(self, name: str, index: torch.Tensor) -> torch.Tensor | None:
        """The shortcut added to branch ``name``'s output, at flat positions ``index`` (None: not a branch's
        last conv, or its input not seen)."""
        found, x = self.shortcuts.get(name), self._inputs.get(name)
        if found is None or x is None:
            return None
        return _at(found.path(x), index).clone()

    def target(self, name: str, target: LayerTarget) -> LayerTarget:
        """``target`` moved by the residual stream's error at its positions; unchanged where not a branch's end."""
        here = self.shortcut_at(name, target.index)
        if here is None or target.shortcut is None:
            return target
        return replace(target, values=target.values + (target.shortcut - here) * self._scales[name])


def _least_squares(features: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor,
                   ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (out, f) and bias (out,) minimising ||F W^T + b - Y||^2 / P + lam ||W - prior||^2."""
    f_mean, y_mean = features.mean(0), targets.mean(0)
    fc, yc = features - f_mean, targets - y_mean
    count = features.shape[0]
    gram = (fc.T @ fc).double() / count
    cross = (fc.T @ yc).double() / count
    strength = ridge * float(gram.diagonal().mean()) + 1e-12
    gram.diagonal().add_(strength)
    rhs = cross + strength * prior.T.double()
    factor, info = torch.linalg.cholesky_ex(gram)  # symmetric positive definite: half an LU's work
    weight = (torch.cholesky_solve(rhs, factor) if int(info) == 0 else torch.linalg.solve(gram, rhs)).T
    bias = y_mean.double() - weight @ f_mean.double()
    return weight, bias


def refit(conv: nn.Conv2d, factors: LayerFactors, x: torch.Tensor, target: LayerTarget,
          ridge: float) -> FittedLayer:
    """Refit the last factor of normal-form ``factors`` so the layer maps ``x`` to the target outputs."""
    shape, groups = tuple(conv.weight.shape), conv.groups
    windows = _factors.patches_at(conv, x, target.index, target.out_hw)
    feats = _factors.features(factors, windows, groups)
    priors = _factors.last_factor(factors, shape, groups)
    ng = conv.out_channels // groups
    weights, biases = [], []
    for group, (feat, prior) in enumerate(zip(feats, priors)):
        w, b = _least_squares(feat, target.values[:, group * ng:(group + 1) * ng], prior, ridge)
        weights.append(w)
        biases.append(b)
    fitted = _factors.with_last_factor(factors, weights, shape, groups)
    return FittedLayer(fitted, torch.cat(biases).to(conv.weight.dtype))


def fit_conv(conv: nn.Conv2d, x: torch.Tensor, target: LayerTarget, ridge: float,
             channels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a dense conv (groups == 1) refitted so it maps ``x`` to the target outputs.

    The same ridge least squares as ``refit``, over the whole k x k window, pulled towards ``conv``'s own
    weight; ``channels``: the target's output channels the conv still has (a pruned producer's kept ones).
    """
    windows = _factors.patches_at(conv, x, target.index, target.out_hw)  # (c, P, kh, kw)
    c, p, kh, kw = windows.shape
    features = windows.permute(1, 0, 2, 3).reshape(p, c * kh * kw)
    values = target.values if channels is None else target.values[:, channels]
    prior = conv.weight.detach().reshape(conv.out_channels, -1)
    weight, bias = _least_squares(features, values, prior, ridge)
    return weight.reshape(conv.weight.shape).to(conv.weight.dtype), bias.to(conv.weight.dtype)


def _stand_in(conv: nn.Conv2d, layer: FittedLayer) -> nn.Conv2d:
    """A conv of ``conv``'s geometry computing the factorised layer densely (same function, faster)."""
    weight = _factors.dense_weight(layer.factors, tuple(conv.weight.shape), conv.groups)
    out = nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                             padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                             padding_mode=conv.padding_mode, dtype=conv.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(layer.bias if layer.bias is not None else torch.zeros(conv.out_channels))
    return out


def _set_stand_in(stand: nn.Conv2d, conv: nn.Conv2d, layer: FittedLayer) -> None:
    with torch.no_grad():
        stand.weight.copy_(_factors.dense_weight(layer.factors, tuple(conv.weight.shape), conv.groups))
        stand.bias.copy_(layer.bias)


@contextmanager
def _swapped(workbench: nn.Module, modules: Mapping[str, nn.Module]) -> Iterator[None]:
    """Put ``modules`` into ``workbench`` for the duration, then put its own back."""
    saved = {name: workbench.get_submodule(name) for name in modules}
    try:
        for name, module in modules.items():
            workbench.set_submodule(name, module)
        yield
    finally:
        for name, module in saved.items():
            workbench.set_submodule(name, module)


def initial_layers(model: nn.Module, plan: RankPlan) -> dict[str, FittedLayer]:
    """The plain truncated SVD of every planned layer, in normal form, with the conv's own bias."""
    out = {}
    for name, choice in plan.layers.items():
        conv = model.get_submodule(name)
        factors = _factors.normal_form(factorize(conv, choice.method), choice.rank)
        bias = None if conv.bias is None else conv.bias.detach().clone()
        out[name] = FittedLayer(factors, bias)
    return out


def run_plan(model: nn.Module, workbench: nn.Module, plan: RankPlan, inputs: torch.Tensor,
             ref: Reference | None, correction: str | None, settings: RefitSettings | None = None,
             branches: BranchInputs | None = None, partial: PartialPass | None = None) -> PassResult:
    """One forward pass of the plan's model on ``inputs``, fitting ``correction`` layer after layer.

    ``workbench``: a deep copy of ``model`` (reused across calls; left as it was found).
    ``branches``: under ``stream`` (None otherwise), where residual branches start and end (their inputs are
    captured in this pass, also for the caller's own refits).
    ``partial``: replay the unchanged front, stop once the last layer is fitted (see ``replay``).
    """
    check_correction(correction)
    validate_plan(model, plan)
    settings = settings or RefitSettings()
    layers = initial_layers(model, plan)
    if correction is not None and ref is None:
        raise ConfigError("a correction needs the original model's reference on the inputs")
    stands = {name: _stand_in(model.get_submodule(name), layer) for name, layer in layers.items()}
    handles = []
    for name, stand in stands.items():
        conv = model.get_submodule(name)
        if correction in REFITS:
            handles.append(stand.register_forward_pre_hook(_refit_hook(name, conv, layers, ref, settings, branches)))
        elif correction == "bias":
            handles.append(stand.register_forward_hook(_bias_hook(name, layers, ref)))
    with _swapped(workbench, stands):
        if branches is not None:
            handles += branches.hooks(workbench)  # on the producers as this pass runs them (stand-ins too)
        try:
            with removing(handles), eval_mode(workbench), torch.no_grad():
                logits = run_network(workbench, inputs, partial)
        finally:
            if branches is not None:
                branches.clear()
    return PassResult(logits, layers)


def evaluate(model: nn.Module, workbench: nn.Module, layers: Mapping[str, FittedLayer],
             inputs: torch.Tensor, prefix: Prefix | None = None) -> torch.Tensor:
    """Logits of the model made of ``layers`` (already fitted) on other ``inputs``, via dense stand-ins
    (``prefix``: the unchanged front of the pass, replayed)."""
    stands = {name: _stand_in(model.get_submodule(name), layer) for name, layer in layers.items()}
    with _swapped(workbench, stands), eval_mode(workbench), torch.no_grad():
        logits = run_network(workbench, inputs, PartialPass(prefix))
    assert logits is not None
    return logits


def _refit_hook(name: str, conv: nn.Conv2d, layers: dict[str, FittedLayer], ref: Reference | None,
                settings: RefitSettings, branches: BranchInputs | None
                ) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
    done: list[bool] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if done or ref is None:  # fitted on the first call only
            return
        target = ref.targets[name] if branches is None else branches.target(name, ref.targets[name])
        layers[name] = refit(conv, layers[name].factors, args[0], target, settings.ridge)
        _set_stand_in(module, conv, layers[name])  # type: ignore[arg-type]
        done.append(True)
    return hook


def _bias_hook(name: str, layers: dict[str, FittedLayer], ref: Reference | None
               ) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor | None]:
    done: list[bool] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if done or ref is None:
            return None
        shift = ref.targets[name].mean - output.mean((0, 2, 3))
        module.bias.add_(shift)  # type: ignore[union-attr]
        layers[name] = FittedLayer(layers[name].factors, module.bias.detach().clone())  # type: ignore[union-attr]
        done.append(True)
        return output + shift[None, :, None, None]
    return hook


def assemble(model: nn.Module, plan: RankPlan, layers: Mapping[str, FittedLayer]) -> nn.Module:
    """The factorised model (real DAC / spatial / channel layers, in the plan's variants) from fitted factors."""
    out = replace_layers(model, plan)
    if plan.correction is None:
        return out.eval()
    for name, choice in plan.layers.items():
        conv = model.get_submodule(name)
        layer = LAYERS[choice.method].from_factors(conv, layers[name].factors, choice.rank, choice.variant)
        if layers[name].bias is not None:
            last = _last_conv(layer)
            with torch.no_grad():
                if last.bias is None:
                    last.bias = nn.Parameter(layers[name].bias.clone(), requires_grad=last.weight.requires_grad)
                else:
                    last.bias.copy_(layers[name].bias)
        out.set_submodule(name, layer)
    return out.eval()


def assemble_dense(model: nn.Module, layers: Mapping[str, FittedLayer]) -> nn.Module:
    """A copy of ``model`` whose planned convs are dense convs computing the factorised layers' function.

    Same outputs as ``assemble`` (to float rounding) but at the original model's speed: for measuring
    accuracy where depthwise convs are slow (PyTorch on CPU), never for deployment.
    """
    out = copy.deepcopy(model)
    for name, layer in layers.items():
        out.set_submodule(name, _stand_in(model.get_submodule(name), layer))
    return out.eval()


def _last_conv(layer: nn.Module) -> nn.Conv2d:
    """The conv a factorised layer ends with (the one that carries the bias; registered last)."""
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


def default_inputs(model: nn.Module, input_shape: Sequence[int], cache_dir: str | os.PathLike[str] | None = None,
                   *, held_out: bool = False, kind: str | None = None, n: int | None = None,
                   on_progress: OnProgress | None = None) -> torch.Tensor:
    """The synthetic inputs the search's proxy fits and scores on (cached on disk).

    ``held_out``: a second batch made the same way from the next seed, to score a fit on.
    ``kind``: a plan's ``inputs`` (None: the default, ``auto``). ``n``: this many images instead of
    ``default_input_count`` (a plan's fit, ``fit_of``).
    """
    seed = DEFAULT_INPUTS["seed"] + (1 if held_out else 0)
    count = n or default_input_count(input_shape)
    return synthetic_inputs(model, input_shape, kind or DEFAULT_INPUTS["kind"], count, seed, cache_dir,
                            on_progress=on_progress)


def fit_of(input_shape: Sequence[int], fit_images: int | None = None) -> tuple[int, RefitSettings]:
    """How many synthetic images a plan's model is fitted on, and the least squares' settings for them.

    A plan names its own count (``fit_images``); without one, ``FIT_SCALE`` times the search's scoring batch.
    The search ranks plans with the smaller fit, which it pays on every trial; the model a plan names is
    built once, so it gets ``FIT_SCALE`` times the evidence: more images, and as many more sampled positions per layer.
    On the best ResNet-56 plans of five latency budgets (0.8x to 0.4x) that added 0.0, 0.4, 0.7, 1.0 and 2.3
    points of real top-1 with the same layers; eight or sixteen times added -0.1 to +0.4 more, for two to five
    times the distillation, and more positions for the same images added nothing.
    """
    scoring = default_input_count(input_shape)
    images = fit_images or FIT_SCALE * scoring
    return images, RefitSettings(samples=max(1, round(RefitSettings().samples * images / scoring)))
