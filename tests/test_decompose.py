"""Every method and variant against nn.Conv2d, numerically; truncation error against its closed form."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from dac_search import DecompositionError, decompose_conv, factorize, max_rank
from dac_search.decompose import DacConv2d

torch.manual_seed(0)
torch.set_grad_enabled(False)

KINDS = [("dac", "grouped"), ("dac", "stacked"), ("spatial", None), ("channel", None)]
GRID = [  # kernel, stride, padding, dilation, groups, bias, padding_mode
    *itertools.product([(3, 3), (3, 5), (2, 2)], [1, 2], [1, (2, 0)], [1, 2], [1, 2], [True, False], ["zeros"]),
    ((3, 3), 1, "same", 1, 1, True, "zeros"), ((5, 3), 1, "same", 2, 2, False, "zeros"),
    ((3, 3), 1, "valid", 1, 1, True, "zeros"),
    ((3, 3), 1, 1, 1, 1, True, "reflect"), ((3, 3), 2, 1, 1, 2, False, "replicate"),
    ((3, 3), 1, 1, 1, 1, False, "circular"), ((3, 3), 1, "same", 1, 1, True, "reflect"),
]


@pytest.mark.parametrize("method,variant", KINDS)
def test_full_rank_reproduces_conv_over_the_grid(method: str, variant: str | None) -> None:
    worst = 0.0
    for kernel, stride, padding, dilation, groups, bias, padding_mode in GRID:
        conv = nn.Conv2d(4, 6, kernel, stride, padding, dilation, groups, bias, padding_mode)
        x = torch.randn(2, 4, 11, 12)
        layer = decompose_conv(conv, max_rank(conv, method), method, variant)
        expected = conv(x)
        worst = max(worst, float((layer(x) - expected).norm() / expected.norm()))
    assert worst < 1e-5


def dac_effective_weight(layer: DacConv2d, conv: nn.Conv2d) -> torch.Tensor:
    """Rebuild the k x k weight the grouped DAC layer computes: W[o, i] = sum_j P[o, i*r+j] D[i*r+j]."""
    r, g = layer.rank, conv.groups
    n, cg = conv.out_channels, conv.in_channels // g
    depthwise = layer.depthwise[0].weight.reshape(conv.in_channels, r, *conv.kernel_size)
    pointwise = layer.pointwise.weight.reshape(g, n // g, cg, r)
    depthwise = depthwise.reshape(g, cg, r, *conv.kernel_size)
    return torch.einsum("gocr,gcrhw->gochw", pointwise, depthwise).reshape(conv.weight.shape)


@pytest.mark.parametrize("groups", [1, 2])
def test_truncated_dac_error_equals_discarded_singular_values(groups: int) -> None:
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=groups)
    factors = factorize(conv, "dac")
    for rank in range(1, max_rank(conv, "dac") + 1):
        layer = decompose_conv(conv, rank, "dac", "grouped")
        weight = dac_effective_weight(layer, conv).double()
        actual = float((weight - conv.weight.double()).norm() / conv.weight.double().norm())
        discarded = float(factors.s[:, rank:].pow(2).sum().sqrt() / conv.weight.double().norm())
        assert actual == pytest.approx(discarded, rel=1e-5, abs=1e-7)
        assert factors.relative_error(rank) == pytest.approx(discarded, rel=1e-9, abs=1e-12)
    assert factors.relative_errors()[max_rank(conv, "dac")] == 0


@pytest.mark.parametrize("method,variant", KINDS)
def test_truncated_output_error_shrinks_with_rank(method: str, variant: str | None) -> None:
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 8, 8)
    errors = [float((decompose_conv(conv, r, method, variant)(x) - conv(x)).norm())
              for r in range(1, max_rank(conv, method) + 1)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-4 * errors[0]


def test_grouped_and_stacked_compute_the_same_function() -> None:
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
    x = torch.randn(2, 8, 9, 9)
    for rank in (1, 3, 7):
        grouped = decompose_conv(conv, rank, "dac", "grouped")(x)
        stacked = decompose_conv(conv, rank, "dac", "stacked")(x)
        torch.testing.assert_close(grouped, stacked, rtol=1e-5, atol=1e-6)


def test_dac_structure_is_the_papers() -> None:
    conv = nn.Conv2d(8, 16, 3, padding=1)
    layer = decompose_conv(conv, 3, "dac", "grouped")
    depthwise = layer.depthwise[0]
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (8, 24, 8)
    assert layer.pointwise.weight.shape == (16, 24, 1, 1)
    stacked = decompose_conv(conv, 3, "dac", "stacked")
    assert [m.out_channels for m in stacked.depthwise] == [8, 8, 8]


def test_one_svd_per_layer_and_method_is_cached() -> None:
    conv = nn.Conv2d(8, 16, 3)
    first = factorize(conv, "dac")
    assert factorize(conv, "dac") is first
    decompose_conv(conv, 2)
    assert factorize(conv, "dac") is first
    with torch.no_grad():
        conv.weight.mul_(2)  # an in-place edit invalidates the cached factors
    doubled = factorize(conv, "dac")
    assert doubled is not first and torch.allclose(doubled.s, 2 * first.s)


def test_a_copy_of_a_model_reuses_its_factors_until_its_weights_change() -> None:
    """A plan that prunes is built on a copy of the model: its unpruned layers' weights are new tensors of the
    same values, and must not cost an SVD each again."""
    conv = nn.Conv2d(8, 16, 3)
    first = factorize(conv, "channel")
    copied = copy.deepcopy(conv)
    assert factorize(copied, "channel") is first
    assert factorize(copied, "dac") is factorize(conv, "dac")
    with torch.no_grad():
        copied.weight[0].zero_()
    assert factorize(copied, "channel") is not first
    assert factorize(nn.Conv2d(8, 16, 3), "channel") is not first  # other values, same shape


@pytest.mark.parametrize("conv,message", [
    (nn.Conv2d(8, 8, 1), "1x1"),
    (nn.Conv2d(8, 8, 3, groups=8), "depthwise"),
    (nn.Linear(4, 4), "Conv2d"),
])
def test_refuses_what_it_cannot_help(conv: nn.Module, message: str) -> None:
    with pytest.raises(DecompositionError, match=message):
        decompose_conv(conv, 1)


@pytest.mark.parametrize("rank", [0, 10, -1, 2.5, True])
def test_refuses_ranks_out_of_range(rank: object) -> None:
    with pytest.raises(DecompositionError, match="out of range"):
        decompose_conv(nn.Conv2d(8, 16, 3), rank)  # type: ignore[arg-type]


def test_refuses_unknown_method_and_variant() -> None:
    conv = nn.Conv2d(8, 16, 3)
    with pytest.raises(DecompositionError, match="unknown method"):
        decompose_conv(conv, 1, "tucker")
    with pytest.raises(DecompositionError, match="variant"):
        decompose_conv(conv, 1, "spatial", "stacked")
