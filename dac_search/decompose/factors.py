"""Cached SVD factors of a conv weight, one batched SVD per (layer, method).

A new rank is a slice of the cached factors, never a new SVD: the search asks for thousands of
ranks of the same few dozen layers.

Every method reshapes the weight into a batch of matrices ``M[b] = U[b] diag(S[b]) Vh[b]``:

- ``dac``: one matrix per input channel i, ``T[:, i]`` as (outputs of its group) x (kh*kw)
  (Li et al. 2019); rank r gives r depthwise k x k filters per input channel and a 1x1 conv.
- ``spatial``: one matrix per group, (c_in*kh) x (c_out*kw) (Jaderberg et al. 2014 in the closed
  form of Tai et al. 2016); rank r gives a kh x 1 conv to r channels then a 1 x kw conv.
- ``channel``: one matrix per group, c_out x (c_in*kh*kw); rank r gives a k x k conv to r channels
  then a 1x1 conv.
"""

from __future__ import annotations

import weakref
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


def check_decomposable(conv: nn.Module) -> None:
    """Refuse, with a reason, the convs a low-rank factorisation cannot help."""
    if not isinstance(conv, nn.Conv2d):
        raise DecompositionError(f"only nn.Conv2d layers can be decomposed, not {type(conv).__name__}")
    kh, kw = conv.kernel_size
    if kh * kw == 1:
        raise DecompositionError("a 1x1 conv has no spatial kernel to factorise")
    if conv.groups > 1 and conv.groups == conv.in_channels:
        raise DecompositionError("a depthwise conv is already as cheap as its DAC factors")
    if conv.transposed:
        raise DecompositionError("transposed convs are not supported")


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
    check_decomposable(conv)
    matrices = _weight_matrices(conv.weight, conv.groups, method).double()
    u, s, vh = torch.linalg.svd(matrices, full_matrices=False)
    return LayerFactors(method, u, s, vh, float(matrices.pow(2).sum()))


# Keyed by the weight's identity and held weakly, so a dropped model frees its factors; the version
# counter invalidates an entry when the weight is modified in place. (Tensors compare elementwise,
# so a WeakKeyDictionary cannot hold them.)
_CACHE: dict[int, tuple[weakref.ref[torch.Tensor], dict[str, tuple[int, LayerFactors]]]] = {}


def _entries(weight: torch.Tensor) -> dict[str, tuple[int, LayerFactors]]:
    key = id(weight)
    held = _CACHE.get(key)
    if held is None or held[0]() is not weight:
        held = (weakref.ref(weight, lambda _ref, key=key: _CACHE.pop(key, None)), {})
        _CACHE[key] = held
    return held[1]


def factorize(conv: nn.Conv2d, method: str = "dac") -> LayerFactors:
    """Factors of ``conv`` for ``method``, computed once per weight and reused for every rank."""
    if method not in METHODS:
        raise DecompositionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    check_decomposable(conv)
    weight = conv.weight
    entries = _entries(weight)
    cached = entries.get(method)
    if cached is not None and cached[0] == weight._version:
        return cached[1]
    factors = compute_factors(conv, method)
    entries[method] = (weight._version, factors)
    return factors


def max_rank(conv: nn.Conv2d, method: str = "dac") -> int:
    """Largest meaningful rank: the full rank of the matrices the method factorises."""
    check_decomposable(conv)
    n, cg, kh, kw = conv.weight.shape
    ng = n // conv.groups
    if method == "dac":
        return min(ng, kh * kw)
    if method == "spatial":
        return min(cg * kh, ng * kw)
    if method == "channel":
        return min(ng, cg * kh * kw)
    raise DecompositionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
