"""Inner-width pruning as a plan method: structure found by tracing, identity at full width, clear refusals,
prune-then-factorise, exact cost, and the refit measured on the real ResNet-20 with real test images."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
from torch import nn

from dac_search import CostModel, LayerChoice, PlanError, RankPlan, count_cost, decompose_model, load_model
from dac_search.decompose import DacConv2d, prune_model, prune_sites, replace_layers
from dac_search.decompose.layers import ChannelConv2d
from dac_search.export.formats import export_onnx
from dac_search.methods import METHODS, PLAN_METHODS, STRUCTURAL
from dac_search.proxies.apply import build_model
from dac_search.zoo.cifar_resnet import CifarResNet
from tests.conftest import top1

CIFAR = (1, 3, 32, 32)
SMALL = (1, 3, 64, 64)


def _random_resnet20() -> nn.Module:
    """Random weights with BatchNorm statistics that differ per channel, so slicing a wrong channel shows."""
    torch.manual_seed(0)
    model = CifarResNet(20)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.2, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _producers(model: nn.Module) -> list[str]:
    return [name for name, site in prune_sites(model).items() if not isinstance(site, str)]


def _prune_plan(model: nn.Module, fraction: float, names: list[str] | None = None, **extra: object) -> dict:
    names = _producers(model) if names is None else names
    layers = {name: {"method": "prune", "rank": max(1, round(model.get_submodule(name).out_channels * fraction))}
              for name in names}
    return {"input_shape": list(extra.pop("input_shape", CIFAR)), "layers": layers, **extra}


def _max_diff(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> float:
    torch.manual_seed(1)
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def test_prune_is_a_plan_method_but_not_a_factorisation() -> None:
    assert "prune" in STRUCTURAL and "prune" in PLAN_METHODS and "prune" not in METHODS
    assert LayerChoice("prune", 3).to_dict() == {"method": "prune", "rank": 3}
    with pytest.raises(PlanError, match="no variant"):
        LayerChoice("prune", 3, "stacked")


def test_the_producers_are_the_inner_convs_of_every_block() -> None:
    assert _producers(CifarResNet(20)) == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    bottleneck = _producers(torchvision.models.resnet50())
    assert bottleneck[:2] == ["layer1.0.conv1", "layer1.0.conv2"] and len(bottleneck) == 2 * 16


@pytest.mark.parametrize("name, shape", [("cifar-resnet20", CIFAR), ("resnet18", SMALL), ("resnet50", SMALL)])
def test_full_width_is_the_identity(name: str, shape: tuple[int, ...]) -> None:
    model = _random_resnet20() if name.startswith("cifar") else torchvision.models.get_model(name, weights=None).eval()
    pruned = decompose_model(model, _prune_plan(model, 1.0, input_shape=shape))
    assert _max_diff(model, pruned, shape) < 1e-5


def test_a_pruned_block_keeps_the_shapes_the_next_layer_expects_and_the_most_important_channels() -> None:
    model = _random_resnet20()
    with torch.no_grad():  # make channels 3, 7, 9, 12 the clear winners of |gamma| * ||W2[:, j]||
        model.layer1[0].bn1.weight.fill_(0.01)
        model.layer1[0].bn1.weight[[12, 3, 9, 7]] = torch.tensor([2.0, 3.0, 4.0, 5.0])
    pruned = prune_model(model, {"layer1.0.conv1": 4})
    block, original = pruned.layer1[0], model.layer1[0]
    assert type(block.conv1) is nn.Conv2d and type(block.bn1) is nn.BatchNorm2d and type(block.conv2) is nn.Conv2d
    assert (block.conv1.out_channels, block.bn1.num_features, block.conv2.in_channels) == (4, 4, 4)
    assert block.conv2.out_channels == 16 and pruned.layer1[1].conv1.in_channels == 16
    keep = [3, 7, 9, 12]
    assert torch.equal(block.conv1.weight, original.conv1.weight[keep])
    assert torch.equal(block.bn1.running_var, original.bn1.running_var[keep])
    assert torch.equal(block.conv2.weight, original.conv2.weight[:, keep])
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_bottleneck_pruned_twice_slices_its_middle_conv_both_ways() -> None:
    model = torchvision.models.resnet50().eval()
    pruned = prune_model(model, {"layer1.0.conv1": 16, "layer1.0.conv2": 24})
    block = pruned.layer1[0]
    assert (block.conv1.out_channels, block.conv2.in_channels, block.conv2.out_channels) == (16, 16, 24)
    assert (block.bn2.num_features, block.conv3.in_channels, block.conv3.out_channels) == (24, 24, 256)
    assert pruned(torch.randn(1, *SMALL[1:])).shape == (1, 1000)


def test_a_conv_feeding_a_residual_add_is_refused_in_one_line() -> None:
    with pytest.raises(PlanError) as info:
        decompose_model(CifarResNet(20), _prune_plan(CifarResNet(20), 0.5, ["layer1.0.conv2"]))
    message = str(info.value)
    assert "\n" not in message and "'layer1.0.conv2' cannot be pruned" in message and "residual add" in message


@pytest.mark.parametrize(
    "layers, match",
    [
        ({"conv1": {"method": "prune", "rank": 8}}, "read by 2 operations"),  # the stem feeds a block and its shortcut
        (
            {"layer1.0.conv1": {"method": "prune", "rank": 17}},
            r"keeps 1\.\.16 output channels \(0 removes the branch\), got 17",
        ),
        (
            {"layer1.0.conv1": {"method": "prune", "rank": 8}, "layer1.0.conv2": {"method": "spatial", "rank": 30}},
            "exceeds the limit 24 .*at its pruned input width 8",
        ),  # 48 at the full width
    ],
)
def test_bad_prunings_are_refused(layers: dict, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        replace_layers(CifarResNet(20), {"layers": layers})


def test_pruning_and_factorising_the_same_conv_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text('{"layers": {"layer1.0.conv1": {"method": "prune", "rank": 8},'
                    ' "layer1.0.conv1": {"method": "dac", "rank": 2}}}')
    with pytest.raises(PlanError, match="'layer1.0.conv1' is both pruned and factorised"):
        RankPlan.load(path)


def test_an_untraceable_model_is_refused_with_the_reason() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return self.b(y) if y.sum() > 0 else y

    model = Branchy()
    with pytest.raises(PlanError, match="torch.fx cannot trace this model") as info:
        replace_layers(model, {"layers": {"a": {"method": "prune", "rank": 4}}})
    assert "\n" not in str(info.value)
    with pytest.raises(PlanError, match="torch.fx cannot trace this model"):  # remembered, refused alike
        prune_sites(model)


def test_a_model_is_traced_once_for_every_reader_and_again_after_a_submodule_is_swapped(monkeypatch) -> None:
    from dac_search.decompose import graph

    traced = []
    trace = graph._trace
    monkeypatch.setattr(graph, "_trace", lambda model: traced.append(model) or trace(model))
    model = _random_resnet20()
    costs = CostModel(model, CIFAR)
    plan = _prune_plan(model, 0.5, ["layer1.0.conv1"])
    first = graph.model_graph(model)
    costs.cost(plan), replace_layers(model, plan), prune_sites(model), costs.producers()  # every reader
    assert len(traced) == 1 and graph.model_graph(model) is first
    model.set_submodule("layer1.0.conv1", nn.Conv2d(16, 16, 3, padding=1, bias=False))  # changed in place
    assert graph.model_graph(model) is not first and len(traced) == 2
    copy = _random_resnet20()  # another model object of the same structure is traced on its own
    assert set(prune_sites(copy)) == set(first.sites) and len(traced) == 3


def test_the_consumer_of_a_pruned_producer_is_factorised_at_its_pruned_width() -> None:
    model = _random_resnet20()
    plan = {"input_shape": list(CIFAR), "layers": {"layer1.0.conv1": {"method": "prune", "rank": 8},
                                                   "layer1.0.conv2": {"method": "dac", "rank": 2}}}
    built = decompose_model(model, plan)
    assert isinstance(built.layer1[0].conv2, DacConv2d) and built.layer1[0].conv2.depthwise[0].in_channels == 8
    by_hand = prune_model(model, {"layer1.0.conv1": 8})
    by_hand.layer1[0].conv2 = DacConv2d.from_conv(by_hand.layer1[0].conv2, 2, "grouped")
    assert _max_diff(built, by_hand.eval(), CIFAR) < 1e-5


def test_a_plan_with_prune_round_trips_through_json_and_applies_from_its_file(tmp_path: Path) -> None:
    model = _random_resnet20()
    plan = RankPlan.from_dict({**_prune_plan(model, 0.5), "model": "cifar10-resnet20"})
    plan = RankPlan({**plan.layers, "layer2.0.conv2": LayerChoice("spatial", 4)}, plan.model, plan.input_shape)
    path = plan.save(tmp_path / "plan.json")
    assert RankPlan.load(path) == plan
    assert json.loads(path.read_text())["layers"]["layer1.0.conv1"] == {"method": "prune", "rank": 8}
    from_file = decompose_model(model, path)
    assert from_file.layer1[0].conv1.out_channels == 8 and from_file.layer3[2].conv2.in_channels == 32
    assert _max_diff(from_file, decompose_model(model, plan.to_dict()), CIFAR) == 0.0


def test_the_pruned_model_exports_to_onnx_as_ordinary_convs(tmp_path: Path) -> None:
    model = _random_resnet20()
    graphs = {kind: onnx.load(str(export_onnx(net, tmp_path / f"{kind}.onnx", CIFAR))).graph
              for kind, net in (("dense", model), ("pruned", decompose_model(model, _prune_plan(model, 0.5))))}
    ops = {kind: sorted(node.op_type for node in graph.node) for kind, graph in graphs.items()}
    assert ops["pruned"] == ops["dense"]  # the same operators, no new ones: only narrower convs
    widths = {tuple(init.dims) for init in graphs["pruned"].initializer}
    assert (8, 16, 3, 3) in widths and (16, 8, 3, 3) in widths


@pytest.mark.parametrize("case", ["cifar-prune", "cifar-prune+factorise", "resnet50-bottleneck", "no-bn-refit"])
def test_the_cost_model_prices_a_pruned_plan_exactly(case: str) -> None:
    if case.startswith("cifar"):
        model, shape = _random_resnet20(), CIFAR
        plan = _prune_plan(model, 0.75)
        if case.endswith("factorise"):
            plan["layers"].update({"layer1.0.conv2": {"method": "dac", "rank": 2},  # consumers, at pruned width
                                   "layer3.1.conv2": {"method": "channel", "rank": 5},
                                   "layer2.2.conv1": {"method": "spatial", "rank": 3}})  # factorised, not pruned
    elif case.startswith("resnet50"):
        model, shape = torchvision.models.resnet50().eval(), SMALL
        plan = _prune_plan(model, 0.5, ["layer1.0.conv1", "layer1.0.conv2", "layer4.2.conv1"], input_shape=shape)
        plan["layers"]["layer1.0.conv3"] = {"method": "channel", "rank": 7}  # a 1x1 consumer, at width 32
    else:  # the consumer has no bias and no BatchNorm after it: a refit adds a bias, which is priced too
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 6, 3, bias=False),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 4),
        ).eval()
        shape = (1, 3, 12, 12)
        plan = _prune_plan(model, 0.5, ["0"], input_shape=shape, correction="refit")
    inputs = torch.randn(8, *shape[1:])
    built = decompose_model(model, plan, inputs)
    costs = CostModel(model, shape)
    assert costs.cost(plan) == count_cost(built, shape)
    name, choice = next(iter(RankPlan.coerce(plan).layers.items()))
    producer = built.get_submodule(name)
    assert costs.layer(name, choice).params == producer.weight.numel() + (0 if producer.bias is None else choice.rank)
    if case == "no-bn-refit":
        assert built[3].bias is not None


def test_refit_repairs_the_pruned_consumers_on_the_inputs_it_fits() -> None:
    model = _random_resnet20()
    torch.manual_seed(2)
    inputs = torch.randn(8, 3, 32, 32)  # 8192 positions: more than the 4096 a refit samples
    plan = _prune_plan(model, 0.5)
    plain = decompose_model(model, plan, inputs)
    refit = decompose_model(model, {**plan, "correction": "refit"}, inputs)
    with torch.no_grad():
        want = model(inputs)
        assert float((refit(inputs) - want).pow(2).mean()) < 0.5 * float((plain(inputs) - want).pow(2).mean())
    assert count_cost(refit, CIFAR) == count_cost(plain, CIFAR)  # the bias went into the next BatchNorm
    full = decompose_model(model, {**_prune_plan(model, 1.0), "correction": "refit"}, inputs)
    assert _max_diff(model, full, CIFAR) < 1e-5  # nothing lost, nothing refitted
    biased = decompose_model(model, {**plan, "correction": "bias"}, inputs)
    assert _max_diff(plain, biased, CIFAR) == 0.0  # bias corrects factorised layers only: pruned ones stay sliced


def test_refit_runs_through_a_factorised_consumer_and_dense_matches() -> None:
    model = _random_resnet20()
    torch.manual_seed(3)
    inputs = torch.randn(8, 3, 32, 32)
    plan = {**_prune_plan(model, 0.5), "correction": "refit"}
    plan["layers"]["layer1.1.conv2"] = {"method": "channel", "rank": 4}
    built = decompose_model(model, plan, inputs)
    assert isinstance(built.layer1[1].conv2, ChannelConv2d) and built.layer1[1].conv2.reduce.in_channels == 8
    assert _max_diff(built, build_model(model, plan, inputs, dense=True), CIFAR) < 1e-4


@pytest.mark.slow
def test_refit_beats_plain_pruning_on_the_real_resnet20(hub_cache: Path,
                                                        cifar_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = load_model("cifar10-resnet20").eval()
    x, y = cifar_test
    plan = _prune_plan(model, 0.75, [name for name in _producers(model) if name.endswith("conv1")])
    plain = top1(decompose_model(model, plan), x, y)
    refit = top1(decompose_model(model, {**plan, "correction": "refit"}), x, y)
    assert refit > plain, (f"top-1 on {len(y)} real images at 75% of every block's conv1: "
                           f"refit {refit:.2f}%, plain {plain:.2f}%")
    print(f"75% conv1 channels: plain {plain:.2f}%, refit {refit:.2f}%")


# --- rank 0: the residual branch removed ---------------------------------------------------------

def test_every_cifar_block_can_lose_its_branch_but_not_a_projection_or_a_bottleneck_middle() -> None:
    sites = prune_sites(CifarResNet(20))
    assert all(sites[f"layer{s}.{b}.conv1"].removable for s in (1, 2, 3) for b in range(3))  # option A shortcuts
    resnet18 = prune_sites(torchvision.models.resnet18())
    assert resnet18["layer1.0.conv1"].removable
    assert "has parameters (a projection)" in resnet18["layer2.0.conv1"].removal  # a conv shortcut
    resnet50 = prune_sites(torchvision.models.resnet50())
    assert "does not end in a residual add" in resnet50["layer1.1.conv1"].removal
    assert "does not start at the branch's input" in resnet50["layer1.1.conv2"].removal  # conv1 would stay
    with pytest.raises(PlanError) as info:
        replace_layers(torchvision.models.resnet18(), {"layers": {"layer2.0.conv1": {"method": "prune", "rank": 0}}})
    assert "\n" not in str(info.value) and "prune at rank 0 removes the residual branch" in str(info.value)


@pytest.mark.parametrize("correction", [None, "bias", "refit", "stream"])
def test_a_removed_branch_is_a_constant_the_cost_model_prices_exactly(correction: str | None) -> None:
    model = _random_resnet20()
    plan = {
        "input_shape": list(CIFAR),
        "correction": correction,
        "layers": {
            "layer1.1.conv1": {"method": "prune", "rank": 0},
            "layer2.0.conv1": {"method": "prune", "rank": 0},
            "layer3.0.conv1": {"method": "prune", "rank": 32},
            "layer3.0.conv2": {"method": "dac", "rank": 2},
        },
    }
    torch.manual_seed(3)
    inputs = torch.randn(8, *CIFAR[1:])
    built = decompose_model(model, plan, inputs)
    assert count_cost(built, CIFAR) == CostModel(model, CIFAR).cost(plan)
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():  # the block is its shortcut plus a constant: what it gives for any input
        block, original = built.layer2[0], model.layer2[0]
        expected = torch.relu(original.shortcut(x) + block.conv2.bias.view(1, -1, 1, 1))
        got = block(x)
    assert torch.allclose(got, expected, atol=1e-6)
    uncorrected = built if correction is None else decompose_model(model, {**plan, "correction": None})
    with torch.no_grad():
        zero_branch = original.bn2(original.conv2(torch.zeros(1, 32, 16, 16)))[0, :, 8, 8]
        if correction is None:
            assert torch.allclose(block.conv2.bias, zero_branch, atol=1e-5)  # what the branch gives for zeros
        else:  # the branch's mean output on the inputs, as the original computes it there
            h = model.layer1(torch.relu(model.bn1(model.conv1(inputs))))
            mean = original.bn2(original.conv2(torch.relu(original.bn1(original.conv1(h))))).mean((0, 2, 3))
            assert torch.allclose(block.conv2.bias, mean, atol=1e-4)
            assert not torch.allclose(block.conv2.bias, uncorrected.layer2[0].conv2.bias)


def test_a_removed_branch_round_trips_exports_and_its_consumer_cannot_be_factorised(tmp_path: Path) -> None:
    model = _random_resnet20()
    plan = RankPlan({"layer1.1.conv1": LayerChoice("prune", 0)}, None, CIFAR, None)  # no images to distil
    assert RankPlan.load(plan.save(tmp_path / "plan.json")) == plan
    built = decompose_model(model, tmp_path / "plan.json")
    path = export_onnx(built, tmp_path / "removed.onnx", CIFAR)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, *CIFAR[1:])
    with torch.no_grad():
        assert abs(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0] - built(x).numpy()).max() < 1e-4
    with pytest.raises(PlanError, match="consumer of a removed branch"):
        replace_layers(model, {"layers": {"layer1.1.conv1": {"method": "prune", "rank": 0},
                                          "layer1.1.conv2": {"method": "dac", "rank": 2}}})
    with pytest.raises(PlanError, match="non-negative integer"):
        LayerChoice("prune", -1)


# --- through depthwise convs: MobileNet-V2's inverted residuals --------------------------------------

def test_an_inverted_residual_is_pruned_through_its_depthwise_conv_at_the_exact_cost(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.2, 1.5)
                module.bias.normal_(0, 0.5)
    sites = prune_sites(model)
    expand = sites["features.2.conv.0.0"]
    assert (
        expand.through == (("features.2.conv.1.0", "features.2.conv.1.1"),) and expand.consumer == "features.2.conv.2"
    )
    assert expand.last_norm == "features.2.conv.1.1" and not expand.removable
    assert isinstance(sites["features.2.conv.1.0"], str)  # a depthwise conv is passed through, not a producer
    plan = {"input_shape": list(SMALL), "layers": {
        "features.2.conv.0.0": {"method": "prune", "rank": 50},     # the stride-2 block of 24 channels
        "features.4.conv.0.0": {"method": "prune", "rank": 100},    # a block with a residual add
        "features.4.conv.2": {"method": "channel", "rank": 8}}}     # its projection, factorised at the new width
    built = decompose_model(model, plan)
    depthwise = built.get_submodule("features.4.conv.1.0")
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (100, 100, 100)
    assert built.get_submodule("features.4.conv.1.1").num_features == 100
    assert count_cost(built, SMALL) == CostModel(model, SMALL).cost(plan)
    with torch.no_grad():
        assert built(torch.randn(2, *SMALL[1:])).shape == (2, 10)
    full = {"input_shape": list(SMALL), "layers": {"features.4.conv.0.0": {"method": "prune", "rank": 144}}}
    assert _max_diff(model, decompose_model(model, full), SMALL) < 1e-5  # every channel kept: the same network
    export_onnx(built, tmp_path / "m.onnx", SMALL)
    onnx.checker.check_model(str(tmp_path / "m.onnx"))

