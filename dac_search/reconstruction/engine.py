"""Block-wise reconstruction: every region of the plan's network fitted by gradient steps to the original's.

BRECQ's reconstruction (Li et al. 2021) run on synthetic images, as Genie (Jeon et al. 2023) does for
quantization, here for factorised and pruned networks. Region by region (``regions``), in order: the
region's input is the plan's own network's output at the cut before it (the regions already fitted
included, so each absorbs the drift of those before it), its target the original network's output at the
cut after it, and every weight of the region is trainable (the factors, the pruned convs, the BatchNorm
affine terms, a removed branch's constant) under Adam on the mean squared error. Optionally the whole
network then distils the original's logits (KL). Nothing here sees a real image or a label.

Deterministic on one machine: the images come from the plan's seed, each region's batches from its own
generator, so a plan rebuilds the same weights; a run cut off after a region resumes there exactly.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dac_search.reconstruction.regions import Region, RegionRunner, paired_regions
from dac_search.reconstruction.settings import ReconstructionSettings

EVAL_CHUNK = 128  # images per forward pass where nothing is trained

OnStep = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass(frozen=True)
class Checkpoint:
    """Regions ``done`` and the network's weights after them."""

    done: int
    state: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Saver:
    """Where a reconstruction keeps its progress: ``load`` the last checkpoint (or None), ``save`` one."""

    load: Callable[[], Checkpoint | None]
    save: Callable[[Checkpoint], None]


def compute_device() -> torch.device:
    """CUDA where there is one, else the CPU's threads."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def changed_regions(original: RegionRunner, model: RegionRunner, regions: list[Region]) -> list[bool]:
    """For each region: does it call a module whose type or weights differ from the original's?"""
    def differs(name: str) -> bool:
        theirs, ours = original.graph_module.get_submodule(name), model.graph_module.get_submodule(name)
        if type(theirs) is not type(ours):
            return True
        a, b = theirs.state_dict(), ours.state_dict()
        return a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a)
    return [any(differs(name) for name in region.modules) for region in regions]


def fitted_regions(original: nn.Module, model: nn.Module, example: torch.Tensor, settings: ReconstructionSettings
                   ) -> tuple[RegionRunner, RegionRunner, list[Region], list[bool]]:
    """The runners, the regions (cut as ``paired_regions`` finds on ``example``), and which of them the
    settings fit (those with weights, changed or all)."""
    theirs, ours, regions = paired_regions(original, model, example, settings.regions)
    changed = changed_regions(theirs, ours, regions) if settings.scope == "changed" else [True] * len(regions)
    fitted = [c and any(True for _ in ours.parameters(r)) for c, r in zip(changed, regions)]
    return theirs, ours, regions, fitted


def total_steps(fitted: list[bool], settings: ReconstructionSettings) -> int:
    return sum(fitted) * settings.steps + settings.logit_steps


def reconstruct(original: nn.Module, model: nn.Module, images: torch.Tensor, settings: ReconstructionSettings,
                *, on_step: OnStep | None = None, saver: Saver | None = None,
                device: torch.device | None = None) -> nn.Module:
    """Fit ``model`` (the plan's float network, changed in place and returned, in eval mode, on the CPU)
    to ``original`` on ``images``; ``original`` is left as it was."""
    on_step = on_step or (lambda done, total: None)
    with on_device(original, model, device) as device:
        theirs, ours, regions, fitted = fitted_regions(original, model, images[:1].to(device), settings)
        total = total_steps(fitted, settings)
        ahead = [settings.steps * sum(fitted[:index]) for index in range(len(regions))]

        def fit(index: int, region: Region, x: torch.Tensor, target: torch.Tensor) -> None:
            _fit_region(ours, region, x, target, settings, index, lambda step: on_step(ahead[index] + step, total))

        x_theirs, done_regions = walk_regions(theirs, ours, regions, images.to(device), fitted, fit, model, saver)
        if settings.logit_steps and done_regions <= len(regions):
            steps_done = settings.steps * sum(fitted)
            _fit_logits(model, images.to(device), x_theirs, settings, lambda step: on_step(steps_done + step, total))
            if saver:
                saver.save(Checkpoint(len(regions) + 1, _cpu_state(model)))
        on_step(total, total)
    return model.eval()


@contextmanager
def on_device(original: nn.Module, model: nn.Module, device: torch.device | None) -> Iterator[torch.device]:
    """Both networks in eval mode on ``device`` (None: ``compute_device()``) within; after, ``original``
    where it was and ``model`` on the CPU."""
    device = device or compute_device()
    original.eval()
    model.eval()
    original_device = next(original.parameters()).device
    original.to(device)
    model.to(device)
    try:
        yield device
    finally:
        original.to(original_device)
        model.cpu()


FitRegion = Callable[[int, Region, torch.Tensor, torch.Tensor], None]  # (index, region, its input, its target)


def walk_regions(theirs: RegionRunner, ours: RegionRunner, regions: list[Region], images: torch.Tensor,
                 todo: list[bool], fit: FitRegion, model: nn.Module, saver: Saver | None
                 ) -> tuple[torch.Tensor, int]:
    """Region by region: ``fit`` each one ``todo`` says (from the last checkpoint on), on the plan's own
    network's output at the cut before it and the original's at the cut after it; a checkpoint after each.
    Returns the original's output and the regions a checkpoint had done."""
    checkpoint = saver.load() if saver else None
    done_regions = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint.state)
        done_regions = checkpoint.done
    x_theirs = x_ours = images
    for index, region in enumerate(regions):
        target = _forward(theirs, region, x_theirs)
        if index >= done_regions and todo[index]:
            fit(index, region, x_ours, target)
            if saver:
                saver.save(Checkpoint(index + 1, _cpu_state(model)))
        x_ours = _forward(ours, region, x_ours)
        x_theirs = target
    return x_theirs, done_regions


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


@torch.no_grad()
def _forward(runner: RegionRunner, region: Region, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([runner.run(region, chunk) for chunk in x.split(EVAL_CHUNK)])


def region_generator(settings: ReconstructionSettings, index: int) -> torch.Generator:
    """Each region's batches from its own seed: a resumed run draws what an unbroken one would have."""
    return torch.Generator().manual_seed(settings.seed * 1_000_003 + index)


def _fit_region(runner: RegionRunner, region: Region, x: torch.Tensor, target: torch.Tensor,
                settings: ReconstructionSettings, index: int, on_step: Callable[[int], None]) -> None:
    parameters = list(runner.parameters(region))
    with _trainable(parameters), torch.enable_grad():  # a caller's no_grad (a proxy, a notebook) must not stop it
        _fit_region_steps(runner, region, parameters, x, target, settings, index, on_step)


@contextmanager
def _trainable(parameters: list[nn.Parameter]) -> Iterator[None]:
    """Gradients on for ``parameters`` within, their own flags back after (a removed branch's constant is off)."""
    flags = [p.requires_grad for p in parameters]
    for parameter in parameters:
        parameter.requires_grad_(True)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, flags):
            parameter.requires_grad_(flag)


def _fit_region_steps(runner: RegionRunner, region: Region, parameters: list[nn.Parameter], x: torch.Tensor,
                      target: torch.Tensor, settings: ReconstructionSettings, index: int,
                      on_step: Callable[[int], None]) -> None:
    optimiser = torch.optim.Adam(parameters, lr=settings.lr)
    generator = region_generator(settings, index)
    scale = float(target.pow(2).mean()) or 1.0  # the loss in units of the target's power: one lr fits all regions
    for step in range(settings.steps):
        batch = torch.randperm(len(x), generator=generator)[: settings.batch].to(x.device)
        loss = F.mse_loss(runner.run(region, x[batch]), target[batch]) / scale
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        on_step(step + 1)


def _fit_logits(model: nn.Module, images: torch.Tensor, logits: torch.Tensor, settings: ReconstructionSettings,
                on_step: Callable[[int], None]) -> None:
    """The whole network, its logits distilled from the original's (KL of the softmax)."""
    parameters = list(model.parameters())
    optimiser = torch.optim.Adam(parameters, lr=settings.logit_lr)
    generator = region_generator(settings, -1)
    with _trainable(parameters), torch.enable_grad():
        for step in range(settings.logit_steps):
            batch = torch.randperm(len(images), generator=generator)[: settings.batch].to(images.device)
            loss = F.kl_div(F.log_softmax(model(images[batch]), 1), F.log_softmax(logits[batch], 1),
                            log_target=True, reduction="batchmean")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            on_step(step + 1)


def seconds_per_step(original: nn.Module, model: nn.Module, images: torch.Tensor,
                     settings: ReconstructionSettings, probe_steps: int = 4) -> tuple[float, float]:
    """(seconds per region step summed over the fitted regions, seconds of the passes without training),
    timed on a copy (``probe_seconds``): what a wall-time budget is turned into steps with."""
    model = copy.deepcopy(model)
    theirs, ours, regions, fitted = fitted_regions(original, model, images[:1], settings)
    x = images[: settings.batch]
    started = time.perf_counter()
    for region in regions:
        x = _forward(ours, region, x)
    passes = (time.perf_counter() - started) * 2 * len(images) / max(1, len(x))  # both networks, every image
    probe = ReconstructionSettings(**{**settings.to_dict(), "steps": probe_steps})

    def fit(index: int, region: Region, x: torch.Tensor, target: torch.Tensor, on_step: Callable[[int], None]) -> None:
        _fit_region(ours, region, x, target, probe, index, on_step)

    step_cost = probe_seconds(ours, regions, fitted, images[: settings.batch], probe_steps, fit)
    return step_cost, passes


ProbeFit = Callable[[int, Region, torch.Tensor, torch.Tensor, Callable[[int], None]], None]


def probe_seconds(runner: RegionRunner, regions: list[Region], todo: list[bool], x: torch.Tensor,
                  probe_steps: int, fit: ProbeFit) -> float:
    """Seconds per step summed over the regions ``todo``, each timed by ``fit`` running ``probe_steps`` steps
    (index, region, input, target, on_step) on ``runner``, a copy's. A region's first step (allocation,
    warm-up) is left out of its timing: it measured several times the steady cost."""
    cost = 0.0
    for index, region in enumerate(regions):
        target = _forward(runner, region, x)
        if todo[index]:
            stamps: list[float] = []
            fit(index, region, x, target, lambda step: stamps.append(time.perf_counter()))  # noqa: B023 - during fit
            cost += (stamps[-1] - stamps[0]) / (probe_steps - 1)
        x = target
    return cost
