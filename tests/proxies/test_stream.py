"""The ``stream`` correction: a residual branch's last conv fitted to the original residual stream."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from dac_search import decompose_model
from dac_search.decompose import residual_shortcuts
from dac_search.plan import LayerChoice, RankPlan
from dac_search.zoo.cifar_resnet import CifarResNet

from .conftest import SHAPE


def test_the_shortcuts_are_the_parameter_free_paths_of_removable_branches() -> None:
    model = CifarResNet(20).eval()
    shortcuts = residual_shortcuts(model)
    assert sorted(shortcuts) == sorted(f"layer{s}.{b}.conv2" for s in (1, 2, 3) for b in range(3))
    assert (
        shortcuts["layer2.0.conv2"].producer == "layer2.0.conv1" and shortcuts["layer2.0.conv2"].norm == "layer2.0.bn2"
    )
    x = torch.randn(2, 16, 32, 32)
    assert torch.equal(shortcuts["layer1.1.conv2"].path(x), x)  # identity
    assert torch.equal(shortcuts["layer2.0.conv2"].path(x), model.layer2[0].shortcut(x))  # option A: subsample, pad
    resnet18 = residual_shortcuts(torchvision.models.resnet18())
    assert "layer1.0.conv2" in resnet18 and "layer2.0.conv2" not in resnet18  # a projection shortcut has weights
    assert (
        residual_shortcuts(torchvision.models.resnet50()) == {}
    )  # a bottleneck's branch input is not conv3's producer's


def _plan(rank: int, layers: tuple[str, ...], correction: str) -> RankPlan:
    return RankPlan({name: LayerChoice("dac", rank, "stacked") for name in layers}, "cifar10-resnet20", SHAPE,
                    correction)


def _stream_error(built: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    """Squared error of the residual stream after layer1 against the original's, on ``x``."""
    with torch.no_grad():
        stem = torch.relu(model.bn1(model.conv1(x)))
        return float((built.layer1(stem) - model.layer1(stem)).pow(2).mean())


BRANCHES = ("layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "layer1.2.conv1", "layer1.2.conv2")


def test_stream_leaves_less_error_in_the_residual_stream_than_refit(resnet20: nn.Module,
                                                                    distilled: torch.Tensor) -> None:
    refit = decompose_model(resnet20, _plan(1, BRANCHES, "refit"), distilled)
    stream = decompose_model(resnet20, _plan(1, BRANCHES, "stream"), distilled)
    refit_error, stream_error = _stream_error(refit, resnet20, distilled), _stream_error(stream, resnet20, distilled)
    assert stream_error < 0.95 * refit_error, (stream_error, refit_error)


def test_stream_is_refit_where_no_branch_ends_and_the_identity_at_full_rank(resnet20: nn.Module,
                                                                           distilled: torch.Tensor) -> None:
    firsts = tuple(name for name in BRANCHES if name.endswith("conv1"))  # no conv here feeds a residual add
    x = distilled[:4]
    with torch.no_grad():
        refit = decompose_model(resnet20, _plan(2, firsts, "refit"), distilled)(x)
        stream = decompose_model(resnet20, _plan(2, firsts, "stream"), distilled)(x)
        assert torch.equal(refit, stream)
        full = decompose_model(resnet20, _plan(9, BRANCHES, "stream"), distilled)
        assert float((full(x) - resnet20(x)).abs().max()) < 1e-3  # nothing lost upstream, nothing to cancel


def test_a_stream_plan_round_trips_and_rebuilds_the_same_model(resnet20: nn.Module, distilled: torch.Tensor,
                                                               tmp_path: Path) -> None:
    plan = RankPlan({"layer1.1.conv1": LayerChoice("prune", 8), "layer1.1.conv2": LayerChoice("dac", 2, "stacked"),
                     "layer2.2.conv1": LayerChoice("prune", 0), "layer3.1.conv1": LayerChoice("prune", 32)},
                    "cifar10-resnet20", SHAPE, "stream")
    path = plan.save(tmp_path / "plan.json")
    assert RankPlan.load(path) == plan
    first, again = decompose_model(resnet20, path, distilled), decompose_model(resnet20, plan, distilled)
    with torch.no_grad():
        assert torch.equal(first(distilled[:2]), again(distilled[:2]))
