"""The algebra of a factorised conv as (first factor, last factor), shared by the corrections and the proxy.

Every method's rank-r factors are put in one *normal form*: ``LayerFactors`` with unit singular values,
``u`` and ``vh`` carrying the scale, so each batch matrix is ``u @ vh`` and ``from_factors`` builds the
same layer. In it the first factor (the one kept) and the last factor (the one a correction refits) are:

- dac: first ``vh`` (per input channel, r filters of k*k), last ``u`` (the 1x1, per input channel);
- channel: first ``vh`` (k x k conv to r channels), last ``u`` (the 1x1);
- spatial: first ``u`` (kh x 1 conv to r channels), last ``vh`` (the 1 x kw conv).

For speed the proxy runs a factorised layer as one dense conv with the reconstructed weight: the same
function (the factors are linear), at the original conv's speed rather than a depthwise one's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dac_search.decompose.factors import LayerFactors


def normal_form(factors: LayerFactors, rank: int) -> LayerFactors:
    """Rank-``rank`` factors with the singular values folded into ``u`` and ``vh`` (all s = 1)."""
    u, s, vh = factors.u[:, :, :rank], factors.s[:, :rank], factors.vh[:, :rank, :]
    if factors.method == "dac":  # the 1x1 carries the scale; the depthwise filters stay orthonormal
        u, vh = u * s[:, None, :], vh
    else:
        root = s.sqrt()
        u, vh = u * root[:, None, :], vh * root[:, :, None]
    return LayerFactors(factors.method, u, torch.ones_like(s), vh, factors.weight_norm_sq)


def dense_weight(factors: LayerFactors, weight_shape: tuple[int, ...], groups: int) -> torch.Tensor:
    """The (n, c/g, kh, kw) conv weight a normal-form factor set computes (inverse of the SVD reshape)."""
    n, cg, kh, kw = weight_shape
    g, ng = groups, n // groups
    matrices = factors.u @ factors.vh
    if factors.method == "dac":
        return matrices.reshape(g, cg, ng, kh, kw).permute(0, 2, 1, 3, 4).reshape(n, cg, kh, kw)
    if factors.method == "spatial":
        return matrices.reshape(g, cg, kh, ng, kw).permute(0, 3, 1, 2, 4).reshape(n, cg, kh, kw)
    if factors.method == "channel":
        return matrices.reshape(n, cg, kh, kw)
    raise ValueError(f"unknown method {factors.method!r}")


def padding_of(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of ``conv``, 'same' and 'valid' included."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        pads: list[int] = []
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    ph, pw = conv.padding  # type: ignore[misc]
    return (pw, pw, ph, ph)


def patches_at(conv: nn.Conv2d, x: torch.Tensor, index: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """(c, P, kh, kw): the input window ``conv`` reads at each sampled output position, channel-major.

    ``index`` holds flat positions into batch x out_h x out_w; gathered directly, so no full unfold.
    """
    pads = padding_of(conv)
    if any(pads):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pads, mode=mode)
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    oh, ow = out_hw
    n, c, height, width = x.shape
    image, pixel = index // (oh * ow), index % (oh * ow)
    rows = (pixel // ow * sh)[:, None] + torch.arange(kh) * dh  # (P, kh)
    cols = (pixel % ow * sw)[:, None] + torch.arange(kw) * dw  # (P, kw)
    flat = (image[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]  # (P, kh, kw)
    channel_major = x.transpose(0, 1).reshape(c, n * height * width)
    return channel_major.index_select(1, flat.reshape(-1)).reshape(c, len(index), kh, kw)


def features(factors: LayerFactors, windows: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Per group, (P, f): what the first factor makes of the sampled windows, in the last factor's order."""
    c, p, kh, kw = windows.shape
    cg = c // groups
    dtype = windows.dtype
    if factors.method == "dac":  # (c, P, r) -> per group (P, cg*r), input-channel major as the 1x1 reads it
        z = torch.bmm(windows.reshape(c, p, kh * kw), factors.vh.to(dtype).transpose(1, 2))
        return [z[i * cg:(i + 1) * cg].transpose(0, 1).reshape(p, -1) for i in range(groups)]
    if factors.method == "channel":
        flat = windows.reshape(groups, cg, p, kh * kw).permute(0, 2, 1, 3).reshape(groups, p, cg * kh * kw)
        return [flat[i] @ factors.vh[i].to(dtype).T for i in range(groups)]
    if factors.method == "spatial":  # (P, r, kw): the vertical outputs the 1 x kw conv reads
        grouped = windows.reshape(groups, cg, p, kh, kw)
        first = factors.u.to(dtype).reshape(groups, cg, kh, -1)
        return [torch.einsum("ipab,iaj->pjb", grouped[i], first[i]).reshape(p, -1) for i in range(groups)]
    raise ValueError(f"unknown method {factors.method!r}")


def last_factor(factors: LayerFactors, weight_shape: tuple[int, ...], groups: int) -> list[torch.Tensor]:
    """Per group, (n/g, f): the last factor as the matrix that multiplies ``features``."""
    n, _, _, kw = weight_shape
    ng = n // groups
    if factors.method == "dac":
        c, _, r = factors.u.shape
        cg = c // groups
        return [factors.u[i * cg:(i + 1) * cg].permute(1, 0, 2).reshape(ng, cg * r) for i in range(groups)]
    if factors.method == "channel":
        return [factors.u[i] for i in range(groups)]
    if factors.method == "spatial":
        r = factors.vh.shape[1]
        return [factors.vh[i].reshape(r, ng, kw).permute(1, 0, 2).reshape(ng, r * kw) for i in range(groups)]
    raise ValueError(f"unknown method {factors.method!r}")


def with_last_factor(factors: LayerFactors, matrices: list[torch.Tensor], weight_shape: tuple[int, ...],
                     groups: int) -> LayerFactors:
    """The same normal-form factors with the last factor replaced (inverse of ``last_factor``)."""
    n, _, _, kw = weight_shape
    ng = n // groups
    dtype = factors.u.dtype
    stacked = torch.stack([m.to(dtype) for m in matrices])  # (g, ng, f)
    u, vh = factors.u, factors.vh
    if factors.method == "dac":
        r = factors.u.shape[2]
        u = stacked.reshape(groups, ng, -1, r).permute(0, 2, 1, 3).reshape(-1, ng, r)
    elif factors.method == "channel":
        u = stacked
    elif factors.method == "spatial":
        r = factors.vh.shape[1]
        vh = stacked.reshape(groups, ng, r, kw).permute(0, 2, 1, 3).reshape(groups, r, ng * kw)
    else:
        raise ValueError(f"unknown method {factors.method!r}")
    return LayerFactors(factors.method, u, factors.s, vh, factors.weight_norm_sq)

