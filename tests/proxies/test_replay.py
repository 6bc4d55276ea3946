"""Replaying the unchanged front of a pass: the single-layer table's scores, in fewer passes, unchanged."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from dac_search.methods import default_variant
from dac_search.plan import LayerChoice, RankPlan
from dac_search.proxies import ModelProxy
from dac_search.proxies.model import layer_sensitivity
from dac_search.proxies.replay import PartialPass, record_prefix, run_network, verify_prefix

CHOICES = [("dac", 1), ("dac", 3), ("spatial", 4), ("channel", 8), ("prune", 0), ("prune", 8)]
LAYERS = ["conv1", "layer1.0.conv1", "layer1.2.conv2", "layer2.0.conv1", "layer3.2.conv1", "layer3.2.conv2"]


def _ranks(name: str, method: str) -> list[int]:
    if method == "prune" and not name.endswith(".conv1"):  # only a block's first conv feeds one conv alone
        return []
    return [rank for m, rank in CHOICES if m == method]


@pytest.mark.parametrize("correction", [None, "refit", "stream"])
def test_the_single_layer_table_scores_what_each_plan_scores_alone(resnet20: nn.Module, distilled: torch.Tensor,
                                                                  correction: str | None) -> None:
    """Every method, a removed branch (prune at 0) and a pruned width included; fitted on one batch, scored on
    another (the search's proxy) or on the same one (no correction)."""
    fit, scored = distilled[:8], distilled[8:]
    proxy = ModelProxy(resnet20, scored, correction, fit_inputs=fit)
    table = layer_sensitivity(proxy, LAYERS, ["dac", "spatial", "channel", "prune"], _ranks)
    assert len(table) > 20
    for (name, method, rank), kl in table.items():
        choice = LayerChoice(method, rank, default_variant(method))
        alone = proxy.score(RankPlan({name: choice})).kl  # outside ``changing``: whole passes
        assert kl == pytest.approx(alone, rel=1e-4, abs=1e-9), (name, method, rank)
    assert len({round(v, 12) for v in table.values()}) > len(table) // 2  # not one value everywhere


def test_within_changing_a_plan_of_other_layers_is_scored_whole(resnet20: nn.Module, distilled: torch.Tensor) -> None:
    proxy = ModelProxy(resnet20, distilled[8:], "refit", fit_inputs=distilled[:8])
    one = LayerChoice("dac", 1, "stacked")
    plan = RankPlan({"layer1.0.conv1": one, "layer2.0.conv1": one})
    other = RankPlan({"layer1.0.conv1": one})
    outside = proxy.score(plan).kl, proxy.score(other).kl
    with proxy.changing("layer2.0.conv1"):  # the plans change an earlier layer: nothing may be replayed
        inside = proxy.score(plan).kl, proxy.score(other).kl
    assert inside == pytest.approx(outside, rel=1e-6)


def test_a_prefix_replays_whole_blocks_and_stops_where_asked(resnet20: nn.Module, distilled: torch.Tensor) -> None:
    x = distilled[:4]
    prefix = record_prefix(resnet20, x, "layer2.1.conv1")
    assert prefix is not None
    assert {"layer1", "layer2.0"} <= set(prefix.outputs) and "layer1.0.conv1" not in prefix.outputs
    with torch.no_grad():
        expected = resnet20(x)
        assert verify_prefix(resnet20, prefix, expected)
        assert run_network(resnet20, x, PartialPass(prefix, stop_after="layer2.1.conv1")) is None
        with pytest.raises(ValueError, match="inputs it was recorded on"):
            run_network(resnet20, x.clone(), PartialPass(prefix))
        assert torch.equal(resnet20(x), expected)  # every module computes again afterwards
    assert record_prefix(resnet20, x, "layer2.1") is not None
    assert "forward" not in vars(resnet20.layer1)


class _Drifting(nn.Module):
    """Adds how often it ran: the same input gives another output on every pass."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + self.calls


def test_a_network_that_does_not_run_the_same_way_twice_fails_the_check() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), _Drifting(), nn.Conv2d(4, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    prefix = record_prefix(net, x, "2")
    assert prefix is not None
    with torch.no_grad():
        assert not verify_prefix(net, prefix, net(x))


def test_a_torchvision_bottleneck_network_replays_exactly() -> None:
    """Modules called more than once (a Bottleneck's one ReLU runs three times) replay call by call."""
    net = torchvision.models.resnet50(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
    for cut in ("layer1.0.conv3", "layer3.1.conv2", "fc"):
        prefix = record_prefix(net, x, cut)
        assert prefix is not None and verify_prefix(net, prefix, expected), cut


def test_choices_outside_the_space_are_measured_with_one_replayed_prefix_per_layer(
        resnet20: nn.Module, distilled: torch.Tensor, fresh_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """The uniform baseline's ranks: prefetched together, they score what each scores when asked alone."""
    from dac_search.precision import QuantScheme
    from dac_search.search.context import Penalties

    proxy = ModelProxy(resnet20, distilled[8:], "refit", fit_inputs=distilled[:8])
    prefixes = []
    changing = proxy.changing
    monkeypatch.setattr(proxy, "changing", lambda layer: prefixes.append(layer) or changing(layer))
    plans = [RankPlan({name: LayerChoice("dac", rank, "grouped") for name in LAYERS[1:4]}) for rank in (1, 2, 3)]
    penalty = Penalties(proxy, QuantScheme(), {})
    penalty.prefetch(plans)
    assert sorted(prefixes) == sorted(LAYERS[1:4])  # one prefix per layer, not one per (layer, rank)
    alone = layer_sensitivity(proxy, LAYERS[1:4], ["dac"], [1, 2, 3])
    assert penalty.choices == pytest.approx(alone, rel=1e-6)
    for plan in plans:  # no further measurement: every choice was prefetched
        penalty.additive(plan)
    assert len(prefixes) == 3 + 3
