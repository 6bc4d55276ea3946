"""Layer proxies against their closed forms, recomputed here from an explicit SVD of hand-made weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dac_search.decompose import decompose_conv, max_rank
from dac_search.proxies import channel_importance, following_batchnorms, layer_error_table, weight_error

from .conftest import SHAPE


def truncated_weight(weight: torch.Tensor, method: str, rank: int) -> torch.Tensor:
    """W_r for one method (groups = 1), by SVD of the matrix that method factorises, written out plainly."""
    n, c, kh, kw = weight.shape
    w = weight.double()
    if method == "dac":  # one (n x kh*kw) matrix per input channel
        out = torch.empty_like(w)
        for i in range(c):
            u, s, vh = torch.linalg.svd(w[:, i].reshape(n, kh * kw), full_matrices=False)
            out[:, i] = (u[:, :rank] * s[:rank] @ vh[:rank]).reshape(n, kh, kw)
        return out
    if method == "channel":  # n x (c*kh*kw)
        u, s, vh = torch.linalg.svd(w.reshape(n, -1), full_matrices=False)
        return (u[:, :rank] * s[:rank] @ vh[:rank]).reshape(n, c, kh, kw)
    # spatial: rows (input channel, kernel row), columns (output channel, kernel column)
    u, s, vh = torch.linalg.svd(w.permute(1, 2, 0, 3).reshape(c * kh, n * kw), full_matrices=False)
    return (u[:, :rank] * s[:rank] @ vh[:rank]).reshape(c, kh, n, kw).permute(2, 0, 1, 3)


@pytest.mark.parametrize("method", ["dac", "spatial", "channel"])
def test_weight_errors_equal_their_closed_forms(method: str) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 7, (3, 3), padding=1, bias=False).double()
    importance = torch.rand(7, dtype=torch.float64) * 3 + 0.1
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    for rank in range(1, max_rank(conv, method) + 1):
        w, w_r = conv.weight.detach().double(), truncated_weight(conv.weight.detach(), method, rank)
        plain = float((w - w_r).norm() / w.norm())
        a = importance[:, None, None, None]
        weighted = float((a * (w - w_r)).norm() / (a * w).norm())
        assert weight_error(conv, method, rank) == pytest.approx(plain, abs=1e-10)
        assert weight_error(conv, method, rank, importance) == pytest.approx(weighted, abs=1e-10)
        # the closed form describes the layer actually built: it computes conv2d with W_r
        layer = decompose_conv(conv, rank, method, "stacked" if method == "dac" else None)
        assert torch.allclose(layer(x), F.conv2d(x, w_r, padding=1), atol=1e-10)


def test_weighted_error_with_groups_matches_the_grouped_closed_form() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False).double()
    importance = torch.rand(6, dtype=torch.float64) + 0.5
    a = importance[:, None, None, None]
    w = conv.weight.detach().double()
    for rank in (1, 2):
        halves = [truncated_weight(w[g * 3:(g + 1) * 3], "dac", rank) for g in range(2)]
        w_r = torch.cat(halves)
        expected = float((a * (w - w_r)).norm() / (a * w).norm())
        assert weight_error(conv, "dac", rank, importance) == pytest.approx(expected, abs=1e-10)


def test_full_rank_has_no_error_and_uniform_importance_changes_nothing() -> None:
    conv = nn.Conv2d(6, 8, 3, bias=False)
    for method in ("dac", "spatial", "channel"):
        top = max_rank(conv, method)
        assert weight_error(conv, method, top) == pytest.approx(0.0, abs=1e-7)
        for rank in (1, top // 2 or 1):
            assert weight_error(conv, method, rank, torch.full((8,), 3.0)) == pytest.approx(
                weight_error(conv, method, rank), abs=1e-12)


def test_following_batchnorm_is_found_by_what_consumes_the_conv_output(resnet20: nn.Module) -> None:
    found = following_batchnorms(resnet20, SHAPE)
    assert found["conv1"] is resnet20.bn1
    assert found["layer2.0.conv2"] is resnet20.layer2[0].bn2
    assert len(found) == 19  # every 3x3 conv of ResNet-20 feeds its own BatchNorm

    class ReluFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(torch.relu(self.conv(x)))

    assert following_batchnorms(ReluFirst(), SHAPE) == {}  # not directly consumed: unweighted


def test_importance_is_the_batchnorm_scale(resnet20: nn.Module) -> None:
    bn = resnet20.layer1[0].bn1
    expected = bn.weight.detach().double().abs() / (bn.running_var.double() + bn.eps).sqrt()
    assert torch.allclose(channel_importance(resnet20, SHAPE)["layer1.0.conv1"], expected)


def test_error_table_covers_layers_methods_and_ranks(resnet20: nn.Module) -> None:
    table = layer_error_table(resnet20, SHAPE, ("dac", "channel"), weighted=True, layers=["layer1.0.conv1"],
                              ranks=[1, 2, 40])
    assert set(table) == {("layer1.0.conv1", m, r) for m in ("dac", "channel") for r in (1, 2)}  # 40 > max rank
    assert table[("layer1.0.conv1", "dac", 1)] > table[("layer1.0.conv1", "dac", 2)]
