"""Passes that skip what a plan cannot change: the network before its first changed layer, and, when only
the fit matters, everything after the last layer it fits.

The search's single-layer table scores every option of every layer alone (781 changes on resnet50), and each
score was two whole forward passes: the fit on one batch, the score on another. But a change at one layer
leaves every module that finishes before it as it was. ``record_prefix`` runs the original once up to that
layer and keeps the outputs of the modules that finish before it (the largest such: whole blocks, not their
parts); ``run_network`` then has those modules return their recorded outputs instead of computing them, and
stops the pass after ``stop_after`` when the caller wants the fitted layers, not the logits. A prefix is
checked once against a full pass (``verify_prefix``): a network whose modules do not run the same way every
time (control flow on values, modules shared between places) is simply scored the slow way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from dac_search.proxies._hooks import eval_mode, removing


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


def _stop(*hook_args: Any) -> None:
    """A forward hook or pre-hook that ends the pass."""
    raise _Stop


@dataclass(frozen=True)
class Prefix:
    """What the original network's modules before ``cut`` returned on ``inputs``, call by call."""

    cut: str
    inputs: torch.Tensor
    outputs: Mapping[str, tuple[Any, ...]]  # module name -> its outputs before the cut, in call order


@dataclass(frozen=True)
class PartialPass:
    """How much of a pass to run: replay ``prefix`` (None: compute it), stop after ``stop_after`` (None: to the
    logits, which are None otherwise)."""

    prefix: Prefix | None = None
    stop_after: str | None = None


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(len(parts))}


def _clone(value: Any) -> Any:
    return tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, value)


def record_prefix(model: nn.Module, inputs: torch.Tensor, cut: str) -> Prefix | None:
    """Run ``model`` on ``inputs`` until module ``cut`` is called, keeping the outputs of the children of the
    cut's ancestors that finished by then; None when ``cut`` never runs."""
    around = _ancestors(cut)
    recorded: dict[str, list[Any]] = {}

    def keep(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            recorded.setdefault(name, []).append(_clone(output))  # cloned: later in-place ops change it
        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in model.named_modules()
               if name and name not in around and name != cut and name.rpartition(".")[0] in around]
    handles.append(model.get_submodule(cut).register_forward_pre_hook(_stop))
    with removing(handles), eval_mode(model), torch.no_grad():
        try:
            model(inputs)
        except _Stop:
            return Prefix(cut, inputs, {name: tuple(outputs) for name, outputs in recorded.items()})
    return None


def verify_prefix(model: nn.Module, prefix: Prefix, expected: torch.Tensor) -> bool:
    """True when ``model`` replaying ``prefix`` gives ``expected`` (its own full pass's output)."""
    with eval_mode(model), torch.no_grad():
        out = run_network(model, prefix.inputs, PartialPass(prefix))
    return isinstance(out, torch.Tensor) and out.shape == expected.shape and torch.allclose(
        out, expected, rtol=1e-4, atol=1e-5)


@contextmanager
def _replaying(network: nn.Module, prefix: Prefix) -> Iterator[None]:
    """The prefix's modules in ``network`` (found by name) return their recorded outputs for as many calls as
    were recorded, then compute again."""
    patched: list[tuple[nn.Module, Any]] = []

    def replay(module: nn.Module, outputs: tuple[Any, ...]) -> Callable[..., Any]:
        compute = module.forward
        calls = [0]

        def forward(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return _clone(outputs[calls[0] - 1]) if calls[0] <= len(outputs) else compute(*args, **kwargs)
        return forward

    try:
        for name, outputs in prefix.outputs.items():
            module = network.get_submodule(name)
            patched.append((module, module.__dict__.get("forward")))
            module.forward = replay(module, outputs)
        yield
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own


def run_network(network: nn.Module, inputs: torch.Tensor, partial: PartialPass | None = None) -> torch.Tensor | None:
    """``network(inputs)``, or only the part ``partial`` asks for (then None when it stops early)."""
    if partial is None:
        return network(inputs)
    if partial.prefix is not None and partial.prefix.inputs is not inputs:
        raise ValueError("a prefix replays the inputs it was recorded on")
    handles = []
    if partial.stop_after is not None:
        handles.append(network.get_submodule(partial.stop_after).register_forward_hook(_stop))
    with removing(handles):
        try:
            if partial.prefix is None:
                return network(inputs)
            with _replaying(network, partial.prefix):
                return network(inputs)
        except _Stop:
            return None
