"""Baseline allocators: plans that apply, FLOPs targets met (greedy within one layer's step)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dac_search import decompose_model
from dac_search.allocate import (
    FIRST_CONV,
    allocate,
    allocate_energy,
    allocate_greedy,
    allocate_uniform,
    greedy_walk,
    layer_hulls,
    refill,
)
from dac_search.cost import CostModel
from dac_search.decompose import DacConv2d
from dac_search.errors import ConfigError
from dac_search.hull import Option, lower_hull
from dac_search.plan import LayerChoice
from dac_search.proxies import ModelProxy, layer_error_table

from .conftest import SHAPE

METHODS = ("dac", "spatial", "channel", "mixed")


@pytest.fixture(scope="module")
def costs(resnet20: nn.Module) -> CostModel:
    return CostModel(resnet20, SHAPE)


def largest_step(costs: CostModel, resnet20: nn.Module, method: str, proxy: str) -> int:
    """The biggest FLOPs drop any single greedy step can make on this model."""
    methods = ("dac", "spatial", "channel") if method == "mixed" else (method,)
    names = [n for n in costs.geometry if n != "conv1"]
    table = layer_error_table(resnet20, SHAPE, methods, weighted=proxy == "bn-weight", layers=names)
    hulls = layer_hulls(costs, names, methods, table)
    return max(h[i].cost - h[i + 1].cost for h in hulls.values() for i in range(len(h) - 1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [0.6, 0.4])
def test_greedy_hits_its_target_within_one_layer_step(resnet20: nn.Module, costs: CostModel, method: str,
                                                      target: float) -> None:
    plan = allocate_greedy(resnet20, SHAPE, target, method, "bn-weight")
    flops = costs.cost(plan).flops
    goal = target * costs.baseline.flops
    assert goal - largest_step(costs, resnet20, method, "bn-weight") < flops <= goal
    assert "conv1" not in plan.layers  # the first conv is kept, like the paper
    if method != "mixed":
        assert {c.method for c in plan.layers.values()} == {method}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["uniform", "energy", "greedy"])
def test_every_allocator_makes_a_plan_that_applies(resnet20: nn.Module, costs: CostModel, kind: str,
                                                   method: str) -> None:
    plan = allocate(kind, resnet20, SHAPE, 0.5, method, "weight")
    assert plan.layers and plan.input_shape == SHAPE
    assert costs.cost(plan).flops <= 0.5 * costs.baseline.flops
    decomposed = decompose_model(resnet20, plan)
    with torch.no_grad():
        assert decomposed(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_greedy_on_the_model_proxy_measures_its_table_and_carries_the_correction(
        resnet20: nn.Module, costs: CostModel, distilled: torch.Tensor) -> None:
    proxy = ModelProxy(resnet20, distilled[:8], "bias")
    early = tuple(n for n in costs.geometry if not n.startswith("layer3"))  # keep the test short: 6 layers
    uniform = allocate("uniform", resnet20, SHAPE, 0.8, skip=early)
    uniform_kl = proxy.score(uniform).kl
    for lazy in (False, True):
        plan = allocate("greedy", resnet20, SHAPE, 0.8, "dac", proxy, lazy=lazy, skip=early)
        assert plan.correction == "bias" and set(plan.layers) <= {n for n in costs.geometry if n not in early}
        assert 0.7 * costs.baseline.flops < costs.cost(plan).flops <= 0.8 * costs.baseline.flops
        assert proxy.score(plan).kl < uniform_kl  # it beats the paper's uniform rank on its own proxy
    with pytest.raises(ConfigError, match="lazy"):
        allocate("greedy", resnet20, SHAPE, 0.6, "dac", "weight", lazy=True)


def test_uniform_is_one_rank_or_one_share(resnet20: nn.Module) -> None:
    plan = allocate_uniform(resnet20, SHAPE, 4)
    assert {c for c in plan.layers.values()} == {LayerChoice("dac", 4, "grouped")}
    assert len(plan.layers) == 18 and "conv1" not in plan.layers
    shares = allocate_uniform(resnet20, SHAPE, 0.5, "channel")
    assert shares.layers["layer1.0.conv1"].rank == 8 and shares.layers["layer3.0.conv2"].rank == 32
    everything = allocate_uniform(resnet20, SHAPE, 2, skip=())
    assert everything.layers["conv1"] == LayerChoice("dac", 2, "grouped")
    assert isinstance(decompose_model(resnet20, everything).conv1, DacConv2d)
    with pytest.raises(ConfigError):
        allocate_uniform(resnet20, SHAPE, 0)


def test_mixed_picks_the_cheapest_method_at_the_same_weight_error(resnet20: nn.Module, costs: CostModel) -> None:
    mixed = allocate_uniform(resnet20, SHAPE, 4, "mixed")
    dac = allocate_uniform(resnet20, SHAPE, 4, "dac")
    assert costs.cost(mixed).flops <= costs.cost(dac).flops
    assert len({c.method for c in mixed.layers.values()}) > 1


def test_energy_keeps_more_ranks_for_more_energy(resnet20: nn.Module, costs: CostModel) -> None:
    low, high = allocate_energy(resnet20, SHAPE, 0.6), allocate_energy(resnet20, SHAPE, 0.9)
    assert costs.cost(low).flops < costs.cost(high).flops
    assert all(low.layers[n].rank <= high.layers[n].rank for n in low.layers if n in high.layers)


def test_greedy_walk_spends_the_slack_its_last_step_left() -> None:
    keep = Option(None, 100, 0.0)
    big = {"a": [keep, Option(None, 40, 1.0)], "b": [keep, Option(None, 90, 0.5)]}
    picked = greedy_walk(big, 200, 150.0)  # a's step is the cheaper per FLOP (1/60 < 0.5/10): 140 <= 150
    assert picked == {"a": big["a"][1], "b": keep}
    position = {"a": 1, "b": 1}
    refill(big, position, 130, 150.0)  # 20 FLOPs of slack: b goes back up (10 FLOPs), a cannot (60)
    assert position == {"a": 1, "b": 0}


def test_lower_hull_drops_dominated_and_concave_options() -> None:
    keep, a, b, c, d = (Option(None, 100, 0.0), Option(None, 80, 1.0), Option(None, 60, 5.0),
                        Option(None, 40, 6.0), Option(None, 50, 9.0))
    assert lower_hull([keep, a, b, c, d]) == (keep, a, c)  # b lies above a-c; d is dearer and worse than c


def test_bad_requests_are_refused(resnet20: nn.Module) -> None:
    with pytest.raises(ConfigError, match="allocator"):
        allocate("random", resnet20, SHAPE, 0.5)
    with pytest.raises(ConfigError, match="method"):
        allocate("uniform", resnet20, SHAPE, 0.5, "svd")
    with pytest.raises(ConfigError, match="flops_fraction"):
        allocate("greedy", resnet20, SHAPE, 1.5)
    with pytest.raises(ConfigError, match="skip"):
        allocate_uniform(resnet20, SHAPE, 3, skip=("nope",))
    assert allocate_uniform(resnet20, SHAPE, 3, skip=(FIRST_CONV, "layer1.0.conv1")).layers.keys().isdisjoint(
        {"conv1", "layer1.0.conv1"})
