"""A plan applied to a model: pruning, the factorised layers, then the plan's correction. One plan, one model.

``decompose_model`` is the model a plan names: what ``dac-search export`` writes and what a Python user gets
from the same plan file. The correction (``refit``, ``bias``, ``stream``) is fitted on synthetic inputs of the
plan's input shape, as many as the plan names (``fit_of``: by default four times the batch the search scores
plans with, so the same layers as scored, fitted on more evidence), made deterministically (seed 0), so the
plan alone rebuilds the model.

Pruning (``dac_search.decompose.prune``) comes first: the factorised layers and their correction work on
the pruned network. Under ``refit`` a pruned producer's consumer conv is refitted too (weight and bias,
ridge least squares over its whole window, as ThiNet / He et al. 2017 do with data, here on the
synthetic inputs), but only where it lost input channels, so a prune that keeps every channel stays the
identity. Every fitted layer, refitted consumer or factorised layer, is fitted in one forward pass in
execution order: its input from the already corrected pruned network, its target always the *original*
model's output at that layer (for a consumer that is itself pruned, at the channels it keeps). A
consumer that is also factorised is refitted through its factorisation's last factor (the SVD is of the
sliced consumer), like any other factorised layer. ``bias`` leaves pruned layers as sliced: it corrects
factorised layers only. A refitted consumer's bias is folded into the BatchNorm after it (its running
mean) where there is one, so the architecture, and the cost, stay those of the uncorrected plan. A
removed branch (prune at rank 0) gives its mean output on the inputs, under either correction.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dac_search.decompose import Pruning, check_plan, replace_layers, residual_shortcuts
from dac_search.decompose.prune import branch_constant
from dac_search.errors import ConfigError
from dac_search.plan import RankPlan
from dac_search.progress import OnProgress
from dac_search.proxies._hooks import removing
from dac_search.proxies.calibration import quantized
from dac_search.proxies.correction import (
    REFITS,
    BranchInputs,
    LayerTarget,
    Reference,
    RefitSettings,
    assemble,
    assemble_dense,
    check_correction,
    default_inputs,
    fit_conv,
    fit_of,
    initial_layers,
    reference,
    run_plan,
)
from dac_search.proxies.replay import PartialPass
from dac_search.proxies.synthetic import cache_root, model_fingerprint, synthetic_inputs
from dac_search.reconstruction import build
from dac_search.reconstruction.engine import OnStep

PlanLike = RankPlan | Mapping[str, Any] | str | os.PathLike[str]


def decompose_model(model: nn.Module, plan: PlanLike, inputs: torch.Tensor | None = None, *,
                    on_step: OnStep | None = None) -> nn.Module:
    """The model ``plan`` names, in eval mode: a deep copy of ``model``, the original left untouched. It is
    the model ``dac-search export`` writes.

    A plan with int8 layers gives its int8 model (``dac_search.int8_model.Int8Model``: called, it runs the
    quantized file in ONNX Runtime), calibrated as the plan's ``quantization`` says.

    ``plan``: a ``RankPlan``, its dict form or a path to its JSON. A plan with a correction needs its
    ``input_shape`` (every plan the search writes has it) to make the synthetic inputs the correction is
    fitted on; without one this raises ``ConfigError`` rather than return a model the plan does not name.
    ``inputs``: fit the correction on these instead. A plan with a ``reconstruction`` is then fitted by
    gradient steps, once per plan and weights (cached; a cut-off one resumes); ``on_step`` is called with
    (steps done, steps in all) while it runs.
    """
    return build_model(model, plan, inputs, on_step=on_step)


def build_model(model: nn.Module, plan: PlanLike, inputs: torch.Tensor | None = None, *,
                settings: RefitSettings | None = None, dense: bool = False,
                ref: Reference | None = None, branches: BranchInputs | None = None,
                partial: PartialPass | None = None, on_step: OnStep | None = None) -> nn.Module:
    """``decompose_model`` with the plumbing the proxy and the benchmarks use.

    ``dense``: the same function with dense convs, to measure accuracy fast on CPU (never to deploy); an
    int8 plan then gives its float model.
    ``ref``: the original model's reference on ``inputs`` at every layer, when the caller has it already
    (a ``ModelProxy`` does), so it is not computed again; ``branches``: likewise, under ``stream``, the
    residual branches of ``model`` (``stream_branches``), so the model is not traced again. ``partial``: the
    part of the fitting pass to run (a ``ModelProxy`` scoring one layer's change replays the front before it
    and stops after its last fitted layer).

    A plan with a ``reconstruction`` is then fitted by gradient steps (``dac_search.reconstruction``; its
    factorised layers stay factorised even when ``dense`` is asked for, as a dense conv would fit outside
    the rank), once per plan and weights: the result is cached, and a cut-off one resumes. ``on_step``:
    called with (steps done, steps in all) while it runs.
    """
    plan = RankPlan.coerce(plan)
    rebuilt = plan.reconstruction is not None and plan.reconstruction.trains
    built = float_model(model, plan, inputs, settings=settings, dense=dense and not rebuilt, ref=ref,
                        branches=branches, partial=partial)
    if rebuilt:
        built = reconstructed(model, built, plan, on_step)
    if plan.int8_layers and not dense:
        return quantized(built, plan, model)
    return built


def float_model(model: nn.Module, plan: RankPlan, inputs: torch.Tensor | None = None, *,
                settings: RefitSettings | None = None, dense: bool = False, ref: Reference | None = None,
                branches: BranchInputs | None = None, partial: PartialPass | None = None) -> nn.Module:
    """The plan's layers, every one in fp32 (``decompose_model`` before quantization)."""
    check_correction(plan.correction)
    pruning = check_plan(model, plan)
    base = pruning.apply(model) if pruning.keep else model
    _, factorised = plan.split()
    if plan.correction is None or not plan.layers:
        if dense:
            return assemble_dense(base, initial_layers(base, factorised))
        return replace_layers(base, factorised).eval()
    if inputs is None:
        inputs = fit_inputs(model, plan)
        settings = settings or fit_of(plan.input_shape, plan.fit_images)[1]
    consumers = refitted_consumers(model, pruning, factorised) if plan.correction in REFITS else {}
    removed = pruning.removed
    if branches is None:
        branches = stream_branches(model, plan.correction)
    if ref is None:
        ref = reference(model, inputs, [*factorised.layers, *consumers, *(s.consumer for s in removed.values())],
                        settings, branches.shortcuts if branches else None)
    workbench = copy.deepcopy(base)
    for site in removed.values():  # a removed branch gives its mean output, under either correction
        constant = branch_constant(model, site, ref.targets[site.consumer].mean)
        with torch.no_grad():
            workbench.get_submodule(site.consumer).bias.copy_(constant)
    handles = [workbench.get_submodule(name).register_forward_pre_hook(
        _consumer_refit(workbench, name, ref.targets[name], channels, pruning, settings or RefitSettings(), branches))
        for name, channels in consumers.items()]
    with removing(handles):
        result = run_plan(base, workbench, factorised, inputs, ref, plan.correction, settings, branches, partial)
    fitted = workbench if pruning.keep else model  # the pruned network with its consumers refitted
    return assemble_dense(fitted, result.layers) if dense else assemble(fitted, factorised, result.layers)


def fit_inputs(model: nn.Module, plan: RankPlan, on_progress: OnProgress | None = None) -> torch.Tensor:
    """The synthetic images a corrected plan's own model is fitted on (``fit_of``), made once and cached."""
    if plan.input_shape is None:
        raise ConfigError(f"the plan asks for the {plan.correction!r} correction but has no input_shape "
                          "to make the synthetic inputs it is fitted on; add \"input_shape\" to the plan")
    images, _ = fit_of(plan.input_shape, plan.fit_images)
    return default_inputs(model, plan.input_shape, kind=plan.inputs, n=images, on_progress=on_progress)


def reconstructed(model: nn.Module, built: nn.Module, plan: RankPlan, on_step: OnStep | None = None) -> nn.Module:
    """``built``, the plan's closed-form float network, reconstructed as the plan's settings say (its int8
    layers' rounding learned too, where the settings ask for it)."""
    settings = plan.reconstruction
    assert settings is not None
    if plan.input_shape is None:
        raise ConfigError("the plan asks for a reconstruction but has no input_shape to make its synthetic "
                          "images; add \"input_shape\" to the plan")
    images = synthetic_inputs(model, plan.input_shape, settings.inputs, settings.images, settings.seed)
    caches = reconstruction_cache(model, plan.in_fp32()), reconstruction_cache(model, plan)
    return build.reconstructed(model, built, images, settings, plan.int8_layers, caches, on_step)


def reconstruction_cache(model: nn.Module, plan: RankPlan) -> Path:
    """Where the reconstructed weights of ``plan`` on ``model`` are kept: named by the weights and the plan
    (its float form for the float network, the whole plan for the int8 layers' learned rounding)."""
    key = hashlib.sha256(f"{model_fingerprint(model)}|{plan.to_json()}".encode()).hexdigest()
    return cache_root() / "reconstructed" / key


def stream_branches(model: nn.Module, correction: str | None) -> BranchInputs | None:
    """Under ``stream``, the residual branches of ``model`` whose last conv is fitted to the residual stream."""
    if correction != "stream":
        return None
    return BranchInputs(model, residual_shortcuts(model))


def refitted_consumers(model: nn.Module, pruning: Pruning, factorised: RankPlan) -> dict[str, torch.Tensor | None]:
    """Consumer -> its output channels kept (None: all), for every dense consumer that lost input channels."""
    out: dict[str, torch.Tensor | None] = {}
    for producer, site in pruning.sites.items():
        if producer in pruning.removed:
            continue  # nothing left to refit: the branch is a constant
        lost = len(pruning.keep[producer]) < model.get_submodule(producer).out_channels
        if lost and site.consumer not in factorised.layers:
            out[site.consumer] = pruning.keep.get(site.consumer)
    return out


def _consumer_refit(workbench: nn.Module, name: str, target: LayerTarget, channels: torch.Tensor | None,
                    pruning: Pruning, settings: RefitSettings, branches: BranchInputs | None
                    ) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
    """A pre-hook refitting consumer ``name`` on its first input, in place; its bias folded into the next BN."""
    site = next(site for site in pruning.sites.values() if site.consumer == name)
    done: list[bool] = []

    def hook(conv: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if done:
            return
        fitted_to = target if branches is None else branches.target(name, target)
        weight, bias = fit_conv(conv, args[0], fitted_to, settings.ridge, channels)  # type: ignore[arg-type]
        with torch.no_grad():
            conv.weight.copy_(weight)
            if conv.bias is not None:
                conv.bias.copy_(bias)
            elif site.consumer_norm is not None:  # BN(Wx + b) is BN with running mean - b applied to Wx
                workbench.get_submodule(site.consumer_norm).running_mean.sub_(bias)
            else:
                conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
        done.append(True)
    return hook
