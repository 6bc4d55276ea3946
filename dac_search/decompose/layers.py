"""Factorised conv layers, each built from an existing ``nn.Conv2d`` with ``from_conv``.

The same DAC factors can be run by two implementations (``variant``) that compute the same
function at very different speeds on a given runtime; which is faster is measured, not assumed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from dac_search.decompose.factors import LayerFactors, check_decomposable, factorize, max_rank
from dac_search.errors import DecompositionError
from dac_search.methods import VARIANTS


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _new_conv(in_channels: int, out_channels: int, weight: torch.Tensor, bias: torch.Tensor | None,
              **kwargs: object) -> nn.Conv2d:
    """An nn.Conv2d holding ``weight`` without paying for a random initialisation first."""
    conv = nn.utils.skip_init(nn.Conv2d, in_channels, out_channels, tuple(weight.shape[2:]),
                              bias=bias is not None, device=weight.device, dtype=weight.dtype, **kwargs)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


class FactorizedConv2d(nn.Module):
    """Base of the factorised layers: remembers what it replaced and how (method, rank, variant)."""

    method: ClassVar[str]
    variants: ClassVar[tuple[str | None, ...]] = (None,)
    output_conv: ClassVar[str]  # the factor whose output is the layer's: a BatchNorm after the layer folds into it

    def __init__(self, rank: int, variant: str | None) -> None:
        super().__init__()
        self.rank = rank
        self.variant = variant

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, variant: str | None = None) -> FactorizedConv2d:
        return cls.from_factors(conv, factorize(conv, cls.method), rank, variant)

    @classmethod
    def from_factors(cls, conv: nn.Conv2d, factors: LayerFactors, rank: int,
                     variant: str | None = None) -> FactorizedConv2d:
        """Build from given factors of ``conv`` (its cached SVD, or factors a correction refitted)."""
        check_decomposable(conv, cls.method)
        variant = cls.variants[0] if variant is None else variant
        if variant not in cls.variants:
            allowed = ", ".join(v for v in cls.variants if v) or "none"
            raise DecompositionError(f"method {cls.method!r} has no variant {variant!r} (variants: {allowed})")
        if factors.method != cls.method:
            raise DecompositionError(f"factors of method {factors.method!r} cannot build a {cls.method!r} layer")
        limit = min(max_rank(conv, cls.method), factors.max_rank)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise DecompositionError(
                f"rank {rank!r} is out of range for method {cls.method!r} on this layer: 1..{limit}")
        return cls._build(conv, factors, rank, variant)

    @classmethod
    def _build(cls, conv: nn.Conv2d, factors: LayerFactors, rank: int,
               variant: str | None) -> FactorizedConv2d:
        raise NotImplementedError

    def extra_repr(self) -> str:
        suffix = f", variant={self.variant}" if self.variant else ""
        return f"method={self.method}, rank={self.rank}{suffix}"


def _spatial_kwargs(conv: nn.Conv2d) -> dict[str, object]:
    return {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
            "padding_mode": conv.padding_mode}


class DacConv2d(FactorizedConv2d):
    """DAC (Li et al. 2019): r depthwise k x k filters per input channel, then a 1x1 conv.

    ``grouped``: one depthwise conv with channel multiplier r (channel i*r+j = filter j of input i).
    ``stacked``: r depthwise convs of multiplier 1, concatenated (channel j*c+i), then the 1x1 with
    its input channels reordered to match; many runtimes only have fast kernels for multiplier 1.
    """

    method = "dac"
    variants = VARIANTS["dac"]
    output_conv = "pointwise"

    def __init__(self, depthwise: list[nn.Conv2d], pointwise: nn.Conv2d, rank: int, variant: str,
                 permutation: torch.Tensor | None = None) -> None:
        super().__init__(rank, variant)
        self.depthwise = nn.ModuleList(depthwise)
        self.pointwise = pointwise
        self.register_buffer("permutation", permutation, persistent=False)

    @classmethod
    def _build(cls, conv: nn.Conv2d, factors: LayerFactors, rank: int, variant: str | None) -> DacConv2d:
        c, n, g = conv.in_channels, conv.out_channels, conv.groups
        cg, ng = c // g, n // g
        kh, kw = conv.kernel_size
        dtype = conv.weight.dtype
        filters = factors.vh[:, :rank, :].to(dtype)  # (c, r, kh*kw)
        mixing = (factors.u[:, :, :rank] * factors.s[:, None, :rank]).to(dtype)  # (c, ng, r)
        # 1x1 weight in grouped order: [group*ng + o, i_local*r + j]
        pointwise_weight = mixing.reshape(g, cg, ng, rank).permute(0, 2, 1, 3).reshape(n, cg * rank, 1, 1)
        bias = None if conv.bias is None else conv.bias.detach()
        spatial = _spatial_kwargs(conv)
        permutation = None
        if variant == "grouped" or rank == 1:
            depthwise = [_new_conv(c, c * rank, filters.reshape(c * rank, 1, kh, kw), None, groups=c, **spatial)]
        else:
            depthwise = [_new_conv(c, c, filters[:, j].reshape(c, 1, kh, kw), None, groups=c, **spatial)
                         for j in range(rank)]
            if g == 1:  # fold the reorder into the 1x1 weight: column j*c+i takes column i*r+j
                pointwise_weight = pointwise_weight.reshape(n, c, rank).transpose(1, 2).reshape(n, c * rank, 1, 1)
            else:  # groups need contiguous channels: gather back to grouped order
                index = torch.arange(c * rank, device=conv.weight.device)
                permutation = (index % rank) * c + index // rank
        pointwise = _new_conv(c * rank, n, pointwise_weight, bias, groups=g)
        return cls(depthwise, pointwise, rank, variant or "grouped", permutation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.depthwise) == 1:
            y = self.depthwise[0](x)
        else:
            y = torch.cat([conv(x) for conv in self.depthwise], dim=1)
            if self.permutation is not None:
                y = y.index_select(1, self.permutation)
        return self.pointwise(y)


class SpatialConv2d(FactorizedConv2d):
    """Spatial SVD (Jaderberg et al. 2014, closed form of Tai et al. 2016): kh x 1 conv to r channels
    per group, then 1 x kw conv. Zero, reflect, replicate and circular padding all separate per axis."""

    method = "spatial"
    output_conv = "horizontal"

    def __init__(self, vertical: nn.Conv2d, horizontal: nn.Conv2d, rank: int) -> None:
        super().__init__(rank, None)
        self.vertical = vertical
        self.horizontal = horizontal

    @classmethod
    def _build(cls, conv: nn.Conv2d, factors: LayerFactors, rank: int, variant: str | None) -> SpatialConv2d:
        c, n, g = conv.in_channels, conv.out_channels, conv.groups
        cg, ng = c // g, n // g
        kh, kw = conv.kernel_size
        dtype = conv.weight.dtype
        root = factors.s[:, :rank].sqrt()  # (g, r)
        u = factors.u[:, :, :rank] * root[:, None, :]  # (g, cg*kh, r)
        vh = factors.vh[:, :rank, :] * root[:, :, None]  # (g, r, ng*kw)
        vertical_weight = u.reshape(g, cg, kh, rank).permute(0, 3, 1, 2).reshape(g * rank, cg, kh, 1)
        horizontal_weight = vh.reshape(g, rank, ng, kw).permute(0, 2, 1, 3).reshape(n, rank, 1, kw)
        sh, sw = conv.stride
        dh, dw = conv.dilation
        if isinstance(conv.padding, str):
            pad_v: str | tuple[int, int] = conv.padding
            pad_h: str | tuple[int, int] = conv.padding
        else:
            ph, pw = _pair(conv.padding)
            pad_v, pad_h = (ph, 0), (0, pw)
        vertical = _new_conv(c, g * rank, vertical_weight.to(dtype), None, stride=(sh, 1), padding=pad_v,
                             dilation=(dh, 1), groups=g, padding_mode=conv.padding_mode)
        bias = None if conv.bias is None else conv.bias.detach()
        horizontal = _new_conv(g * rank, n, horizontal_weight.to(dtype), bias, stride=(1, sw), padding=pad_h,
                               dilation=(1, dw), groups=g, padding_mode=conv.padding_mode)
        return cls(vertical, horizontal, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.horizontal(self.vertical(x))


class ChannelConv2d(FactorizedConv2d):
    """Channel SVD of the weight matrix: a k x k conv to r channels per group, then a 1x1 conv.

    On a 1x1 conv both are 1x1 (the first keeps the stride and padding): cheaper than the conv for
    ``r < cg * ng / (cg + ng)``."""

    method = "channel"
    output_conv = "expand"

    def __init__(self, reduce: nn.Conv2d, expand: nn.Conv2d, rank: int) -> None:
        super().__init__(rank, None)
        self.reduce = reduce
        self.expand = expand

    @classmethod
    def _build(cls, conv: nn.Conv2d, factors: LayerFactors, rank: int, variant: str | None) -> ChannelConv2d:
        c, n, g = conv.in_channels, conv.out_channels, conv.groups
        cg = c // g
        kh, kw = conv.kernel_size
        dtype = conv.weight.dtype
        root = factors.s[:, :rank].sqrt()
        reduce_weight = (factors.vh[:, :rank, :] * root[:, :, None]).reshape(g * rank, cg, kh, kw)
        expand_weight = (factors.u[:, :, :rank] * root[:, None, :]).reshape(n, rank, 1, 1)
        reduce = _new_conv(c, g * rank, reduce_weight.to(dtype), None, groups=g, **_spatial_kwargs(conv))
        bias = None if conv.bias is None else conv.bias.detach()
        expand = _new_conv(g * rank, n, expand_weight.to(dtype), bias, groups=g)
        return cls(reduce, expand, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))


# Method name -> layer class; the one place a new method is registered.
LAYERS: dict[str, type[FactorizedConv2d]] = {cls.method: cls for cls in (DacConv2d, SpatialConv2d, ChannelConv2d)}
