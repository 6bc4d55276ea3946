"""Cached SVD factors of a conv weight, one batched SVD per (layer, method).

A new rank is a slice of the cached factors, never a new SVD: the search asks for thousands of
ranks of the same few dozen layers.

Every method reshapes the weight into a batch of matrices ``M[b] = U[b] diag(S[b]) Vh[b]``:

- ``dac``: one matrix per input channel i, ``T[:, i]`` as (outputs of its group) x (kh*kw)
  (Li et al. 2019); rank r gives r depthwise k x k filters per input channel and a 1x1 conv.
- ``spatial``: one matrix per group, (c_in*kh) x (c_out*kw) (Jaderberg et al. 2014 in the closed
  form of Tai et al. 2016); rank r gives a kh x 1 conv to r channels then a 1 x kw conv.
- ``channel``: one matrix per group, c_out x (c_in*kh*kw); rank r gives a k x k conv to r channels
  then a 1x1 conv. The only method that can help a 1x1 conv: its two 1x1 convs of r channels per group
  cost ``r * (cg + ng)`` against ``cg * ng``, cheaper below ``r = cg * ng / (cg + ng)``.

Which method can take which conv is decided per method (``refusal``): depthwise convs are refused by
all, 1x1 convs by ``dac`` (its depthwise factors would be 1x1 scalings and its 1x1 as dear as the conv)
and ``spatial`` (no kernel to separate).
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from dac_search.errors import DecompositionError
from dac_search.methods import METHODS


@dataclass(frozen=True, eq=False)
class LayerFactors:
    """Batched SVD of one conv weight for one method; singular values sorted, descending."""

    method: str
    u: torch.Tensor  # (batch, rows, m)
    s: torch.Tensor  # (batch, m)
    vh: torch.Tensor  # (batch, m, cols)
    weight_norm_sq: float

    @property
    def max_rank(self) -> int:
        return int(self.s.shape[1])

    def discarded_energy(self, rank: int) -> float:
        """Squared Frobenius norm of the weight lost by keeping ``rank`` singular values."""
        return float(self.s[:, rank:].double().pow(2).sum())

    def relative_error(self, rank: int) -> float:
        """||W - W_r||_F / ||W||_F, in closed form from the discarded singular values."""
        if self.weight_norm_sq == 0.0:
            return 0.0
        return (self.discarded_energy(rank) / self.weight_norm_sq) ** 0.5

    def relative_errors(self) -> torch.Tensor:
        """Relative error at every rank 0..max_rank in one pass (index = rank)."""
        energy = self.s.double().pow(2).sum(0)  # (m,)
        tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
        if self.weight_norm_sq == 0.0:
            return torch.zeros_like(tail)
        return (tail / self.weight_norm_sq).clamp_min(0).sqrt()


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise DecompositionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def refusal(conv: nn.Module, method: str) -> str | None:
    """Why ``method`` cannot help ``conv``, or None when it can."""
    _check_method(method)
    if not isinstance(conv, nn.Conv2d):
        return f"only nn.Conv2d layers can be decomposed, not {type(conv).__name__}"
    if conv.transposed:
        return "transposed convs are not supported"
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return "a depthwise conv is already as cheap as its factors"
    kh, kw = conv.kernel_size
    if kh * kw == 1 and method == "dac":
        return ("method 'dac' cannot help a 1x1 conv: its depthwise factors would be 1x1 scalings and its 1x1 "
                "as dear as the conv; use method 'channel'")
    if kh * kw == 1 and method == "spatial":
        return "method 'spatial' cannot help a 1x1 conv: it has no kernel to separate; use method 'channel'"
    return None


def can_decompose(conv: nn.Module, method: str) -> bool:
    return refusal(conv, method) is None


def check_decomposable(conv: nn.Module, method: str = "dac") -> None:
    """Refuse, with a reason, a conv ``method`` cannot help."""
    reason = refusal(conv, method)
    if reason is not None:
        raise DecompositionError(reason)


def _weight_matrices(weight: torch.Tensor, groups: int, method: str) -> torch.Tensor:
    """Reshape a (n, c/g, kh, kw) weight into the batch of matrices the method factorises."""
    n, cg, kh, kw = weight.shape
    ng = n // groups
    w = weight.detach().reshape(groups, ng, cg, kh, kw)
    if method == "dac":  # per input channel: (g*cg) x ng x (kh*kw)
        return w.permute(0, 2, 1, 3, 4).reshape(groups * cg, ng, kh * kw)
    if method == "spatial":  # per group: (cg*kh) x (ng*kw)
        return w.permute(0, 2, 3, 1, 4).reshape(groups, cg * kh, ng * kw)
    if method == "channel":  # per group: ng x (cg*kh*kw)
        return w.reshape(groups, ng, cg * kh * kw)
    raise DecompositionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def compute_factors(conv: nn.Conv2d, method: str) -> LayerFactors:
    """One batched SVD, in float64 so full-rank reconstructions are exact to 1e-12."""
    check_decomposable(conv, method)
    matrices = _weight_matrices(conv.weight, conv.groups, method).double()
    u, s, vh = torch.linalg.svd(matrices, full_matrices=False)
    return LayerFactors(method, u, s, vh, float(matrices.pow(2).sum()))


# Keyed by the weight's identity and held weakly, so a dropped model frees its factors; the version
# counter invalidates an entry when the weight is modified in place. (Tensors compare elementwise,
# so a WeakKeyDictionary cannot hold them.)
_CACHE: dict[int, tuple[weakref.ref[torch.Tensor], dict[str, tuple[int, LayerFactors]]]] = {}
# Behind it, keyed by the weight's values: a copy of a model has new weight tensors of the same values, and a
# plan that prunes is built on one. Without this, every factorised layer of every such plan paid its SVD
# again: half of a resnet50 search's time (253 of 508 s over 60 trials and the final measurement).
# Bounded in bytes, the least recently used out first.
_BY_VALUE: OrderedDict[tuple[bytes, str], LayerFactors] = OrderedDict()
BY_VALUE_BYTES = 1 << 30


def clear_cache() -> None:
    """Forget every cached factorisation (benchmarks that pay for each SVD again)."""
    _CACHE.clear()
    _BY_VALUE.clear()


def _value_key(weight: torch.Tensor, method: str) -> tuple[bytes, str]:
    data = weight.detach().cpu().contiguous()
    digest = hashlib.blake2b(data.reshape(-1).view(torch.uint8).numpy(), digest_size=20)
    digest.update(repr((tuple(data.shape), str(data.dtype))).encode())
    return digest.digest(), method


def _by_value(weight: torch.Tensor, conv: nn.Conv2d, method: str) -> LayerFactors:
    key = _value_key(weight, method)
    factors = _BY_VALUE.get(key)
    if factors is not None:
        _BY_VALUE.move_to_end(key)
        return factors
    factors = compute_factors(conv, method)
    _BY_VALUE[key] = factors
    held = sum(_nbytes(f) for f in _BY_VALUE.values())
    while held > BY_VALUE_BYTES and len(_BY_VALUE) > 1:
        held -= _nbytes(_BY_VALUE.popitem(last=False)[1])
    return factors


def _nbytes(factors: LayerFactors) -> int:
    return sum(t.numel() * t.element_size() for t in (factors.u, factors.s, factors.vh))


def _entries(weight: torch.Tensor) -> dict[str, tuple[int, LayerFactors]]:
    key = id(weight)
    held = _CACHE.get(key)
    if held is None or held[0]() is not weight:
        held = (weakref.ref(weight, lambda _ref, key=key: _CACHE.pop(key, None)), {})
        _CACHE[key] = held
    return held[1]


def factorize(conv: nn.Conv2d, method: str = "dac") -> LayerFactors:
    """Factors of ``conv`` for ``method``, computed once per weight and reused for every rank."""
    check_decomposable(conv, method)
    weight = conv.weight
    entries = _entries(weight)
    cached = entries.get(method)
    if cached is not None and cached[0] == weight._version:
        return cached[1]
    factors = _by_value(weight, conv, method)
    entries[method] = (weight._version, factors)
    return factors


def max_rank(conv: nn.Conv2d, method: str = "dac") -> int:
    """Largest meaningful rank: the full rank of the matrices the method factorises.

    0 where ``method`` cannot take this conv (a 1x1 for ``dac``, any depthwise conv), so a loop over
    ranks 1..max_rank offers nothing there; not a conv at all is an error.
    """
    reason = refusal(conv, method)
    if not isinstance(conv, nn.Conv2d):
        raise DecompositionError(reason)
    if reason is not None:
        return 0
    n, cg, kh, kw = conv.weight.shape
    ng = n // conv.groups
    if method == "dac":
        return min(ng, kh * kw)
    if method == "spatial":
        return min(cg * kh, ng * kw)
    return min(ng, cg * kh * kw)  # channel
