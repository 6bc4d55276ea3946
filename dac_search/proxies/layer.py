"""Layer proxies: what a rank loses of one conv's weight, from its cached singular values alone.

Cheap enough for every (layer, method, rank) of a model, but blind to what the rest of the network
does with the error; the model proxy (``model.py``) sees through the network.

The weighted form counts each output channel by how much the next BatchNorm amplifies it,
``|gamma| / sqrt(var + eps)``: an error in a channel the BatchNorm scales up by 10 costs 100 times more
(squared) than one it scales down. With ``W = sum_j s_j u_j v_j^T`` and orthonormal singular vectors, the
weighted discarded energy is ``sum_{j >= r} s_j^2 * sum_o a_o^2 (output-side singular vector)_o^2``:
still a closed form, no layer built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from dac_search.decompose import decomposable_layers, factorize, max_rank
from dac_search.decompose.factors import LayerFactors
from dac_search.methods import STRUCTURAL
from dac_search.proxies._hooks import eval_mode, removing

RankChoice = Sequence[int] | Callable[[str, str], Iterable[int]] | None


def following_batchnorms(model: nn.Module, input_shape: Sequence[int]) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Conv name -> the BatchNorm that consumes that conv's output directly, found by one forward pass.

    Tensor identity (the BatchNorm's input *is* the conv's output) works for any model that runs,
    traceable or not; a conv whose output goes elsewhere first (an add, a ReLU) has no entry.
    """
    convs = decomposable_layers(model)
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    found: dict[str, nn.modules.batchnorm._BatchNorm] = {}

    def on_conv(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            produced[id(output)] = (name, output)  # the tensor is held, so its id cannot be reused
        return hook

    def on_bn(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        hit = produced.get(id(args[0]))
        if hit is not None and hit[1] is args[0]:
            found.setdefault(hit[0], module)  # type: ignore[arg-type]

    handles = [conv.register_forward_hook(on_conv(name)) for name, conv in convs.items()]
    handles += [m.register_forward_pre_hook(on_bn) for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with removing(handles), eval_mode(model), torch.no_grad():
        model(torch.zeros((1, *(int(v) for v in input_shape[1:]))))
    return found


def bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """How much the BatchNorm multiplies each channel at inference: |gamma| / sqrt(var + eps)."""
    scale = (bn.running_var.detach().double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double().abs()
    return scale


def channel_importance(model: nn.Module, input_shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """Conv name -> per-output-channel importance from the following BatchNorm (absent: unweighted)."""
    return {name: bn_scale(bn) for name, bn in following_batchnorms(model, input_shape).items()}


def _singular_weights(factors: LayerFactors, importance: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, m): sum over the output side of each singular vector of importance^2 * entry^2."""
    a2 = importance.double().pow(2)
    batch = factors.s.shape[0]
    if factors.method == "dac":  # batch = input channels (group-major); rows = that group's outputs
        ng = factors.u.shape[1]
        group = torch.arange(batch) // (batch // groups)
        rows = a2.reshape(groups, ng)[group]  # (batch, ng)
        return torch.einsum("bo,bom->bm", rows, factors.u.pow(2))
    if factors.method == "channel":  # batch = groups; rows = outputs
        return torch.einsum("bo,bom->bm", a2.reshape(groups, -1), factors.u.pow(2))
    if factors.method == "spatial":  # batch = groups; columns = (output, kw), output-major
        ng = a2.numel() // groups
        kw = factors.vh.shape[2] // ng
        cols = a2.reshape(groups, ng, 1).expand(groups, ng, kw).reshape(groups, ng * kw)
        return torch.einsum("bc,bmc->bm", cols, factors.vh.pow(2))
    raise ValueError(f"unknown method {factors.method!r}")


def weight_errors(conv: nn.Conv2d, method: str = "dac", importance: torch.Tensor | None = None) -> torch.Tensor:
    """Relative weight error at every rank 0..max_rank (index = rank), optionally importance-weighted.

    Unweighted: ``||W - W_r|| / ||W||``. Weighted: ``||diag(a)(W - W_r)|| / ||diag(a) W||`` over
    output channels ``o`` with weights ``a_o``.
    """
    factors = factorize(conv, method)
    if importance is None:
        return factors.relative_errors()
    energy = (factors.s.double().pow(2) * _singular_weights(factors, importance, conv.groups)).sum(0)  # (m,)
    tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
    total = float(tail[0])
    if total == 0.0:
        return torch.zeros_like(tail)
    return (tail / total).clamp_min(0).sqrt()


def weight_error(conv: nn.Conv2d, method: str, rank: int, importance: torch.Tensor | None = None) -> float:
    """Relative weight error of one rank (see ``weight_errors``)."""
    return float(weight_errors(conv, method, importance)[rank])


def resolve_ranks(ranks: RankChoice, name: str, method: str, limit: int) -> list[int]:
    """Ranks to tabulate for a layer: all (None), a fixed list (clipped to the layer), or a callable."""
    if ranks is None:
        chosen: Iterable[int] = range(1, limit + 1)
    elif callable(ranks):
        chosen = ranks(name, method)
    else:
        chosen = ranks
    lowest = 0 if method in STRUCTURAL else 1  # prune at rank 0 removes a residual branch
    return sorted({int(r) for r in chosen if lowest <= int(r) <= limit})


def layer_error_table(model: nn.Module, input_shape: Sequence[int], methods: Sequence[str] = ("dac",), *,
                      weighted: bool = False, layers: Sequence[str] | None = None,
                      ranks: RankChoice = None) -> dict[tuple[str, str, int], float]:
    """(layer, method, rank) -> relative weight error (BatchNorm-weighted if ``weighted``), no layer built;
    nothing for a (layer, method) the method cannot take."""
    convs = decomposable_layers(model, methods)
    names = list(convs) if layers is None else list(layers)
    importance: Mapping[str, torch.Tensor] = channel_importance(model, input_shape) if weighted else {}
    table: dict[tuple[str, str, int], float] = {}
    for name in names:
        conv = convs[name]
        for method in methods:
            limit = max_rank(conv, method)  # 0: the method cannot take this conv (DAC on a 1x1)
            if not limit:
                continue
            errors = weight_errors(conv, method, importance.get(name))
            for rank in resolve_ranks(ranks, name, method, limit):
                table[(name, method, rank)] = float(errors[rank])
    return table
