"""Learned rounding of a plan's int8 weights (AdaRound, Nagel et al. 2020) on the reconstruction's synthetic images.

The quantizers dac-search deploys with (ONNX Runtime's static quantizer; PT2E's for LiteRT) round each int8
conv's weight, its BatchNorm folded in, to the nearest step of a symmetric grid per output channel whose
step is the channel's largest weight over 127. Nearest is not what keeps a block's output closest to the
original's: AdaRound learns, weight by weight, whether to round down or up, region by region (the engine's
regions, its input the plan's own network with the regions before already rounded, its target the
original's output), under a regulariser that drives every choice to 0 or 1 by the end.

The result is written back as float weights that lie on that grid exactly (each channel's largest weight,
and so its step, left as it was), so the standard quantizers reproduce the learned integers: the int8 file
is made, calibrated and timed as before, and the plan rebuilds it from its settings alone. (LiteRT's converter
widens the step of a channel whose folded bias would overflow int32 at it, a channel of near-zero weights;
there it requantizes the weights it is given, learned or nearest.) Activation
ranges are still calibrated by the quantizer on the plan's calibration images.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from dac_search.decompose.layers import FactorizedConv2d
from dac_search.precision import WEIGHT_QMAX, belongs_to
from dac_search.reconstruction.engine import (
    OnStep,
    Saver,
    on_device,
    probe_seconds,
    region_generator,
    walk_regions,
)
from dac_search.reconstruction.regions import Region, RegionRunner, paired_regions
from dac_search.reconstruction.settings import ReconstructionSettings

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound's values)
REGULARISATION = 0.01  # weight of the term that drives each choice to 0 or 1 (BRECQ's)
WARMUP = 0.2  # of the steps, fitted on the output error alone before the regulariser starts
BETA = (20.0, 2.0)  # the regulariser's exponent, annealed from the first to the second


@dataclass(frozen=True)
class Int8Weight:
    """An int8 conv ``name`` and the per-output-channel factor its weight is multiplied by when the quantizer
    folds the BatchNorm after it (ones where none follows)."""

    name: str
    fold: torch.Tensor


def int8_weights(graph_module: fx.GraphModule, layers: frozenset[str]) -> list[Int8Weight]:
    """The convs of the plan's int8 ``layers`` in ``graph_module`` (a factorised layer's every factor), in
    graph order, each with its BatchNorm fold: where a conv's (or a factorised layer's) only reader is a
    BatchNorm in eval mode, the exporters fold it into the conv's weight, so that product is what is rounded."""
    out: list[Int8Weight] = []
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or not belongs_to(str(node.target), layers):
            continue
        module = graph_module.get_submodule(str(node.target))
        fold = _fold_after(graph_module, node)
        if isinstance(module, FactorizedConv2d):
            for name, conv in module.named_modules():
                if isinstance(conv, nn.Conv2d):
                    last = name == module.output_conv
                    factor = fold if last and fold is not None else torch.ones(conv.out_channels)
                    out.append(Int8Weight(f"{node.target}.{name}", factor))
        elif isinstance(module, nn.Conv2d):
            out.append(Int8Weight(str(node.target), fold if fold is not None else torch.ones(module.out_channels)))
    return out


def _fold_after(graph_module: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module":
        return None
    norm = graph_module.get_submodule(str(users[0].target))
    if not isinstance(norm, nn.BatchNorm2d) or norm.training or norm.running_var is None:
        return None
    scale = torch.rsqrt(norm.running_var.detach() + norm.eps)
    return scale * norm.weight.detach() if norm.weight is not None else scale


class LearnedRounding(nn.Module):
    """A parametrisation of a conv's weight: each folded weight on its channel's int8 grid, rounded down plus
    h(v) (in [0, 1] while fitting; 0 or 1 once ``hard``), divided by the fold again."""

    def __init__(self, weight: torch.Tensor, fold: torch.Tensor) -> None:
        super().__init__()
        fold = fold.to(weight).view(-1, *([1] * (weight.dim() - 1)))
        folded = weight.detach() * fold
        step = folded.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True) / WEIGHT_QMAX
        step = torch.where(step > 0, step, torch.ones_like(step))  # an all-zero channel stays zero
        scaled = folded / step
        floor = scaled.floor()
        # each channel's largest weight is kept where nearest puts it (127), so the quantizer's step is ours
        self.register_buffer("pinned", scaled.abs() >= WEIGHT_QMAX - 1e-3)
        self.register_buffer("floor", floor)
        self.register_buffer("nearest", scaled.round())
        self.register_buffer("unfold", step / torch.where(fold == 0, torch.ones_like(fold), fold))
        fraction = ((scaled - floor - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
        self.v = nn.Parameter(torch.log(fraction / (1 - fraction)))  # h(v) = the fraction nearest would round
        self.hard = False

    def h(self) -> torch.Tensor:
        return (torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        up = (self.v >= 0).to(self.v) if self.hard else self.h()
        q = torch.where(self.pinned, self.nearest, self.floor + up).clamp(-WEIGHT_QMAX, WEIGHT_QMAX)
        return q * self.unfold


StepDone = Callable[[int], None]  # steps done in the region


def fit_rounding(runner: RegionRunner, region: Region, held: list[Int8Weight], x: torch.Tensor,
                 target: torch.Tensor, steps: int, settings: ReconstructionSettings, index: int,
                 on_step: StepDone) -> None:
    """Learn the rounding of the int8 weights ``held`` in ``region`` (their convs' weights replaced in place
    by grid points) so that the region maps ``x`` closest to ``target``."""
    convs = {w.name: runner.graph_module.get_submodule(w.name) for w in held}
    folds = {w.name: w.fold for w in held}
    generator = region_generator(settings, index)
    with _rounded(convs, folds) as roundings, torch.enable_grad():
        parameters = [r.v for r in roundings]
        optimiser = torch.optim.Adam(parameters, lr=settings.rounding_lr)
        power = float(target.pow(2).mean()) or 1.0
        features = target[0].numel()
        warmup = int(steps * WARMUP)
        for step in range(steps):
            picked = torch.randperm(len(x), generator=generator)[: settings.batch].to(x.device)
            loss = F.mse_loss(runner.run(region, x[picked]), target[picked]) / power * features
            if step >= warmup:
                progress = (step - warmup) / max(1, steps - warmup)
                beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - progress)
                loss = loss + REGULARISATION * sum(r.regulariser(beta) for r in roundings)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            on_step(step + 1)
        for rounding in roundings:
            rounding.hard = True


@contextmanager
def _rounded(convs: dict[str, nn.Conv2d], folds: dict[str, torch.Tensor]) -> Iterator[list[LearnedRounding]]:
    """Each conv's weight parametrised by a ``LearnedRounding`` within; after, the weight it gives (hard
    once the fit set it so) is the conv's plain weight again."""
    roundings = []
    flags = {name: conv.weight.requires_grad for name, conv in convs.items()}
    try:
        for name, conv in convs.items():
            rounding = LearnedRounding(conv.weight, folds[name])
            parametrize.register_parametrization(conv, "weight", rounding)
            roundings.append(rounding)
        yield roundings
    finally:
        for name, conv in convs.items():
            if parametrize.is_parametrized(conv, "weight"):
                with torch.no_grad():
                    parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
                conv.weight.requires_grad_(flags[name])


def region_convs(region: Region, weights: list[Int8Weight]) -> list[Int8Weight]:
    """The int8 weights ``region`` computes with."""
    modules = frozenset(region.modules)
    return [w for w in weights if belongs_to(w.name, modules)]


def rounding_seconds_per_step(original: nn.Module, model: nn.Module, images: torch.Tensor, layers: frozenset[str],
                              settings: ReconstructionSettings, probe_steps: int = 4) -> float:
    """Seconds per rounding step summed over the regions holding int8 weights, timed on a copy
    (``probe_seconds``, as the float steps are)."""
    model = copy.deepcopy(model)
    _, ours, regions = paired_regions(original, model, images[:1], settings.regions)
    weights = int8_weights(ours.graph_module, layers)
    held = [region_convs(region, weights) for region in regions]

    def fit(index: int, region: Region, x: torch.Tensor, target: torch.Tensor, on_step: StepDone) -> None:
        fit_rounding(ours, region, held[index], x, target, probe_steps, settings, index, on_step)

    return probe_seconds(ours, regions, [bool(h) for h in held], images[: settings.batch], probe_steps, fit)


def learn_rounding(original: nn.Module, model: nn.Module, images: torch.Tensor, layers: frozenset[str],
                   settings: ReconstructionSettings, *, on_step: OnStep | None = None,
                   saver: Saver | None = None, device: torch.device | None = None) -> nn.Module:
    """The int8 ``layers`` of ``model`` (the plan's float network, reconstructed or not; changed in place
    and returned) with their weights on the int8 grid, each rounding learned against ``original``'s output
    on ``images``, ``settings.rounding_steps`` steps a region."""
    on_step = on_step or (lambda done, total: None)
    with on_device(original, model, device) as device:
        theirs, ours, regions = paired_regions(original, model, images[:1].to(device), settings.regions)
        weights = int8_weights(ours.graph_module, layers)
        held = [region_convs(region, weights) for region in regions]
        todo = [bool(h) for h in held]
        total = settings.rounding_steps * sum(todo)
        ahead = [settings.rounding_steps * sum(todo[:index]) for index in range(len(regions))]

        def fit(index: int, region: Region, x: torch.Tensor, target: torch.Tensor) -> None:
            fit_rounding(ours, region, held[index], x, target, settings.rounding_steps, settings, index,
                         lambda step: on_step(ahead[index] + step, total))

        walk_regions(theirs, ours, regions, images.to(device), todo, fit, model, saver)
        on_step(total, total)
    return model.eval()
