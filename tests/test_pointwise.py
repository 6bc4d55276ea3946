"""1x1 convs, factorised by the channel method alone: exact at full rank, priced and timed, refitted,
planned; DAC and spatial refuse them with a reason, every method refuses a depthwise conv."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import torchvision
from onnx import numpy_helper
from torch import nn

from dac_search import CostModel, DecompositionError, LayerChoice, RankPlan, count_cost, decompose_conv, decompose_model
from dac_search.allocate import (
    FIRST_CONV,
    allocate_greedy,
    candidate_ranks,
    eligible_layers,
    table_choices,
    table_ranks,
)
from dac_search.decompose import ChannelConv2d, check_decomposable, decomposable_layers, factorize, max_rank
from dac_search.latency import LatencyTableBuilder
from dac_search.latency.table import default_candidates
from dac_search.proxies import ModelProxy, layer_error_table
from dac_search.proxies.apply import build_model
from profilers.base import Conditions, LatencyResult, Profiler

torch.manual_seed(0)

SHAPE = (1, 8, 12, 12)
POINTWISE = [  # in, out, stride, padding, groups, bias
    (8, 12, 1, 0, 1, True), (8, 12, 1, 0, 2, False), (8, 16, 1, 0, 4, True), (8, 12, 2, 0, 1, True),
    (8, 16, 2, 1, 4, True), (12, 6, 1, 0, 2, False),
]


def pointwise(c: int, n: int, stride: int = 1, padding: int = 0, groups: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c, n, 1, stride, padding, groups=groups, bias=bias)


def channel_weight(layer: ChannelConv2d, conv: nn.Conv2d) -> torch.Tensor:
    """The 1x1 weight the two factors compute, per group: expand (ng x r) @ reduce (r x cg)."""
    g, r = conv.groups, layer.rank
    n, cg = conv.out_channels, conv.in_channels // g
    expand = layer.expand.weight.detach().double().reshape(g, n // g, r)
    reduce = layer.reduce.weight.detach().double().reshape(g, r, cg)
    return (expand @ reduce).reshape(conv.weight.shape)


@pytest.mark.parametrize("c,n,stride,padding,groups,bias", POINTWISE)
def test_full_rank_channel_reproduces_a_1x1_conv(c: int, n: int, stride: int, padding: int, groups: int,
                                                 bias: bool) -> None:
    conv = pointwise(c, n, stride, padding, groups, bias)
    layer = decompose_conv(conv, max_rank(conv, "channel"), "channel")
    assert max_rank(conv, "channel") == min(n // groups, c // groups)
    assert [m.kernel_size for m in (layer.reduce, layer.expand)] == [(1, 1), (1, 1)]
    x = torch.randn(2, c, 9, 10)
    with torch.no_grad():
        expected, actual = conv(x), layer(x)
    assert actual.shape == expected.shape and float((actual - expected).abs().max()) < 1e-5


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_truncation_error_is_the_discarded_singular_value_energy(groups: int) -> None:
    conv = pointwise(16, 24, groups=groups)
    factors = factorize(conv, "channel")
    original = conv.weight.detach().double()
    for rank in range(1, max_rank(conv, "channel") + 1):
        layer = decompose_conv(conv, rank, "channel")
        lost = float((channel_weight(layer, conv) - original).pow(2).sum())
        assert lost == pytest.approx(factors.discarded_energy(rank), rel=1e-5, abs=1e-10)
        assert factors.relative_error(rank) == pytest.approx((lost / float(original.pow(2).sum())) ** 0.5,
                                                             rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("conv,method,message", [
    (pointwise(8, 8), "dac", "method 'dac' cannot help a 1x1 conv.*use method 'channel'"),
    (pointwise(8, 8), "spatial", "method 'spatial' cannot help a 1x1 conv.*use method 'channel'"),
    (nn.Conv2d(8, 8, 3, groups=8), "channel", "depthwise"),
    (nn.Conv2d(8, 8, 1, groups=8), "channel", "depthwise"),
    (nn.Conv2d(8, 16, 3, groups=8), "dac", "depthwise"),
])
def test_each_method_refuses_what_it_cannot_help(conv: nn.Conv2d, method: str, message: str) -> None:
    with pytest.raises(DecompositionError, match=message):
        decompose_conv(conv, 1, method)
    with pytest.raises(DecompositionError, match=message):
        check_decomposable(conv, method)
    assert max_rank(conv, method) == 0  # no rank to offer: loops over 1..max_rank skip the pair
    with pytest.raises(DecompositionError, match="Conv2d"):
        max_rank(nn.Linear(4, 4), method)  # type: ignore[arg-type]


class PointwiseNet(nn.Module):
    """A stem, then grouped, strided and plain 1x1 convs with BatchNorms, and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.expand = nn.Conv2d(16, 32, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.grouped = nn.Conv2d(32, 24, 1, stride=2, groups=2, bias=True)
        self.bn2 = nn.BatchNorm2d(24)
        self.project = nn.Conv2d(24, 24, 1)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.expand(self.stem(x))))
        x = torch.relu(self.bn2(self.grouped(self.dw(x))))
        return self.head(self.project(x).mean((2, 3)))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(1)
    model = PointwiseNet()
    for bn in (model.bn1, model.bn2):  # non-trivial statistics, so the weighted proxy and refit see them
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return model.eval()


PLAN = {"stem": LayerChoice("channel", 6), "expand": LayerChoice("channel", 5),
        "grouped": LayerChoice("channel", 4), "project": LayerChoice("channel", 7)}


def test_cost_model_prices_factorised_1x1s_as_the_built_model_counts(net: nn.Module) -> None:
    costs = CostModel(net, SHAPE)
    assert list(costs.traced) == ["stem", "expand", "grouped", "project"]  # never the depthwise conv
    assert list(costs.geometry) == ["stem"]  # the convs DAC can take
    for rank in (1, 3, 8):
        plan = RankPlan({name: LayerChoice("channel", rank) for name in ("expand", "grouped", "project")})
        assert costs.cost(plan) == count_cost(decompose_model(net, plan), SHAPE)
    assert costs.cost(RankPlan(PLAN)) == count_cost(decompose_model(net, RankPlan(PLAN)), SHAPE)
    # grouped (2 groups of 16 -> 12), strided: r * (16 + 12) per group against 16 * 12 per group, at 6x6
    assert costs.layer("grouped").flops == 36 * 2 * 16 * 12
    assert costs.layer("grouped", LayerChoice("channel", 3)).flops == 36 * 2 * 3 * (16 + 12)


def test_candidates_are_the_cheaper_channel_ranks_and_nothing_of_dac(net: nn.Module) -> None:
    costs = CostModel(net, SHAPE)
    assert eligible_layers(net, costs, (FIRST_CONV,)) == []  # DAC: the stem only, and it is skipped
    assert eligible_layers(net, costs, (FIRST_CONV,), ("channel",)) == ["expand", "grouped", "project"]
    # cheaper below cg * ng / (cg + ng): 16 * 32 / 48 = 10.7; per group 16 * 12 / 28 = 6.9; 24 * 24 / 48 = 12
    for name, bound in (("expand", 10), ("grouped", 6), ("project", 11)):
        cheaper = candidate_ranks(costs, name, "channel", max_rank(net.get_submodule(name), "channel"))
        assert cheaper == list(range(1, bound + 1))
        spread = table_ranks(net, costs)(name, "channel")  # RANK_POINTS of them, the ends included
        assert set(spread) <= set(cheaper) and spread[0] == 1 and spread[-1] == bound
    ranks = table_ranks(net, costs)
    assert ranks("expand", "dac") == ranks("expand", "spatial") == []
    assert {c.method for c in table_choices(net, costs, "project", ("dac", "spatial", "channel"))} == {"channel"}
    assert max_rank(net.expand, "channel") == 16  # the limit stays the full rank


def test_allocators_reach_1x1s_with_channel_only(net: nn.Module) -> None:
    table = layer_error_table(net, SHAPE, ("dac", "spatial", "channel"), weighted=True)
    assert {(name, method) for name, method, _ in table} == {
        ("stem", "dac"), ("stem", "spatial"), ("stem", "channel"),
        ("expand", "channel"), ("grouped", "channel"), ("project", "channel")}
    plan = allocate_greedy(net, SHAPE, 0.75, "channel", "bn-weight")  # the stem kept: only 1x1s left to cut
    assert len(plan.layers) >= 2 and set(plan.layers) <= {"expand", "grouped", "project"}
    assert CostModel(net, SHAPE).cost(plan).flops <= 0.75 * count_cost(net, SHAPE).flops
    assert allocate_greedy(net, SHAPE, 0.75, "dac", "weight").layers == {}  # DAC has nothing but the stem
    proxy = ModelProxy(net, torch.randn(8, *SHAPE[1:]), "refit")  # single-layer KLs of 1x1 changes, refitted
    plan = allocate_greedy(net, SHAPE, 0.75, "mixed", proxy)
    assert plan.correction == "refit" and {c.method for c in plan.layers.values()} == {"channel"}
    assert proxy.score(plan).kl > 0


def test_refit_of_a_factorised_1x1_runs_and_keeps_shapes(net: nn.Module) -> None:
    inputs = torch.randn(16, *SHAPE[1:])
    x = torch.randn(4, *SHAPE[1:])
    with torch.no_grad():
        expected = net(x)
    errors = {}
    for correction in (None, "bias", "refit"):
        plan = RankPlan(PLAN, input_shape=SHAPE, correction=correction)
        built = decompose_model(net, plan, inputs)
        dense = build_model(net, plan, inputs, dense=True)
        for name, choice in PLAN.items():
            layer, conv = built.get_submodule(name), net.get_submodule(name)
            assert isinstance(layer, ChannelConv2d) and layer.rank == choice.rank
            assert layer.reduce.weight.shape == (conv.groups * choice.rank, conv.in_channels // conv.groups,
                                                 *conv.kernel_size)
            assert layer.expand.weight.shape == (conv.out_channels, choice.rank, 1, 1)
        with torch.no_grad():
            out = built(x)
            torch.testing.assert_close(out, dense(x), rtol=1e-4, atol=1e-5)
        assert out.shape == expected.shape and torch.isfinite(out).all()
        errors[correction] = float((out - expected).norm())
    assert errors["refit"] < errors[None]


def test_plan_with_a_1x1_channel_layer_round_trips_and_applies(net: nn.Module, tmp_path: Path) -> None:
    plan = RankPlan(PLAN, model="pointwise-net", input_shape=SHAPE)
    path = plan.save(tmp_path / "plan.json")
    loaded = RankPlan.load(path)
    assert loaded == plan and loaded.layers["grouped"] == LayerChoice("channel", 4)
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        torch.testing.assert_close(decompose_model(net, path)(x), decompose_model(net, plan)(x))
    full = RankPlan({"grouped": LayerChoice("channel", max_rank(net.grouped, "channel"))})
    with torch.no_grad():
        torch.testing.assert_close(decompose_model(net, full)(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers,message", [
    ({"expand": {"method": "dac", "rank": 1}}, "method 'dac' cannot help a 1x1 conv"),
    ({"expand": {"method": "spatial", "rank": 1}}, "use method 'channel'"),
    ({"dw": {"method": "channel", "rank": 1}}, "depthwise"),
    ({"expand": {"method": "channel", "rank": 17}}, "exceeds the limit 16"),
])
def test_plans_naming_what_a_method_refuses_are_clear_errors(net: nn.Module, layers: dict, message: str) -> None:
    from dac_search import PlanError

    with pytest.raises(PlanError, match=message):
        decompose_model(net, {"layers": layers})


def test_torchvision_1x1s_are_listed_for_channel_depthwise_never() -> None:
    resnet = torchvision.models.resnet50(weights=None)
    pointwise_names = {n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)}
    assert len(pointwise_names) == 36
    for_channel, for_dac = decomposable_layers(resnet, ("channel",)), decomposable_layers(resnet, ("dac",))
    assert pointwise_names <= set(for_channel) and not pointwise_names & set(for_dac)
    assert set(for_dac) == set(decomposable_layers(resnet, ("spatial",))) == set(for_channel) - pointwise_names
    mobilenet = torchvision.models.mobilenet_v2(weights=None)
    depthwise = {n for n, m in mobilenet.named_modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1}
    assert len(depthwise) == 17
    listed = set(decomposable_layers(mobilenet))
    assert not depthwise & listed and len(listed) == 35
    assert list(decomposable_layers(mobilenet, ("dac",))) == ["features.0.0"]


class WeightCountProfiler(Profiler):
    """Times an ONNX model as its weight count in microseconds: a factorised 1x1 at low rank runs faster."""

    name, runtime, threads = "weights", "onnxruntime", 1

    def measure_many(self, artifacts: Sequence[Path], input_shape: Any, *, runtime: str | None = None,
                     settings: Any = None) -> list[LatencyResult]:
        shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape] * len(artifacts)
        results = []
        for path, shape in zip(artifacts, shapes):
            ms = sum(numpy_helper.to_array(t).size for t in onnx.load(str(path)).graph.initializer) / 1000
            results.append(LatencyResult(str(path), self.name, tuple(shape), (ms,) * 5,
                                         Conditions("onnxruntime", "fake", 1)))
        return results

    def info(self, *, runtime: str | None = None) -> dict[str, Any]:
        return {"runtime_version": "fake"}

    def close(self) -> None:
        pass


def test_latency_table_times_factorised_1x1s(net: nn.Module, tmp_path: Path) -> None:
    builder = LatencyTableBuilder(WeightCountProfiler(), cache_dir=tmp_path)
    table = builder.build(net, SHAPE, candidates=default_candidates(("channel",), points=4))
    assert set(table.layers) == {"stem", "expand", "grouped", "project"}
    assert table.layer_ms("project", LayerChoice("channel", 2)) < table.layer_ms("project")
    assert table.predict(RankPlan({"expand": LayerChoice("channel", 3)})) < table.original_ms
    # DAC candidates offer nothing on a 1x1: only the stem (which DAC can take) is timed
    dac_only = builder.build(net, SHAPE, candidates=default_candidates(("dac",), points=4))
    assert set(dac_only.layers) == {"stem"}
