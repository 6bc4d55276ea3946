"""Plans in and out of JSON, applied to models; the cost model against a direct count."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
import torchvision
from torch import nn

from dac_search import CostModel, LayerChoice, PlanError, RankPlan, count_cost, decompose_model, max_rank
from dac_search.decompose import can_decompose, decomposable_layers


def random_plan(model: nn.Module, seed: int, methods: tuple[str, ...] = ("dac", "spatial", "channel")) -> RankPlan:
    """A random method (of those that can take the layer: channel alone on a 1x1) and rank per layer."""
    rng = random.Random(seed)
    layers = {}
    for name, conv in decomposable_layers(model, methods).items():
        if rng.random() < 0.2:
            continue
        method = rng.choice([m for m in methods if can_decompose(conv, m)])
        variant = rng.choice(["grouped", "stacked"]) if method == "dac" else None
        layers[name] = LayerChoice(method, rng.randint(1, max_rank(conv, method)), variant)
    return RankPlan(layers)


class GroupedNet(nn.Module):
    """Grouped, strided, dilated, biased and non-square convs, and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, (3, 5), stride=2, padding=(1, 2), bias=True)
        self.b = nn.Conv2d(8, 16, 3, padding=2, dilation=2, groups=2)
        self.c = nn.Conv2d(16, 16, 3, padding="same", padding_mode="reflect")
        self.d = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.d(self.c(self.b(self.a(x))))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("make,shape", [(lambda: torchvision.models.resnet18(), (1, 3, 32, 32)),
                                        (GroupedNet, (1, 3, 20, 24))])
def test_cost_model_equals_direct_count(make, shape) -> None:
    model = make().eval()
    costs = CostModel(model, shape)
    assert costs.baseline == count_cost(model, shape)
    for seed in range(3):
        plan = random_plan(model, seed)
        assert costs.cost(plan) == count_cost(decompose_model(model, plan), shape)


def test_plan_json_round_trip(tmp_path) -> None:
    plan = RankPlan({"layer1.0.conv1": LayerChoice("dac", 3, "stacked"),
                     "layer3.8.conv2": LayerChoice("spatial", 40)}, model="cifar10-resnet56",
                    input_shape=(1, 3, 32, 32))
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert data["format"] == "dac-search/plan@2" and data["layers"]["layer3.8.conv2"] == {
        "method": "spatial",
        "rank": 40,
    }
    assert RankPlan.load(path) == plan
    assert RankPlan.coerce(data) == plan and RankPlan.coerce(str(path)) == plan
    assert "inputs" not in data  # auto, the default, is not written
    forced = replace(plan, correction="refit", inputs="gaussian")
    assert json.loads(forced.to_json())["inputs"] == "gaussian" and RankPlan.coerce(forced.to_dict()) == forced
    assert RankPlan.coerce(forced.to_dict()).split()[1].inputs == "gaussian"  # what decompose_model refits on
    assert "fit_images" not in data  # the default fit is not written
    fitted = replace(forced, fit_images=256)
    assert json.loads(fitted.to_json())["fit_images"] == 256 and RankPlan.coerce(fitted.to_dict()) == fitted
    assert RankPlan.coerce(fitted.to_dict()).split()[1].fit_images == 256


def test_decompose_model_is_a_deep_copy_and_accepts_every_plan_form(tmp_path) -> None:
    model = GroupedNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = RankPlan({"b": LayerChoice("dac", 2, "stacked")})
    plan.save(tmp_path / "p.json")
    x = torch.randn(2, 3, 20, 24)
    outputs = [decompose_model(model, form)(x) for form in (plan, plan.to_dict(), tmp_path / "p.json")]
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(outputs[0], outputs[2])
    assert isinstance(model.b, nn.Conv2d)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    copy = decompose_model(model, {"layers": {}})
    copy.a.weight.data.zero_()
    assert model.a.weight.abs().sum() > 0


@pytest.mark.parametrize("layers,message", [
    ({"nope": {"method": "dac", "rank": 1}}, "does not have"),
    ({"d": {"method": "dac", "rank": 1}}, "1x1"),
    ({"head": {"method": "dac", "rank": 1}}, "not a Conv2d"),
    ({"b": {"method": "tucker", "rank": 1}}, "unknown method"),
    ({"b": {"method": "dac", "rank": 99}}, "exceeds the limit 8"),
    ({"b": {"method": "dac", "rank": 0}}, "positive integer"),
    ({"b": {"method": "dac", "rank": "2"}}, "positive integer"),
    ({"b": {"method": "spatial", "rank": 2, "variant": "stacked"}}, "no variant"),
    ({"b": {"method": "dac", "rank": 2, "colour": "red"}}, "unknown keys"),
])
def test_bad_plans_are_clear_errors(layers, message) -> None:
    with pytest.raises(PlanError, match=message):
        decompose_model(GroupedNet(), {"format": "dac-search/plan@1", "layers": layers})


def test_bad_plan_files(tmp_path) -> None:
    with pytest.raises(PlanError, match="not found"):
        RankPlan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanError, match="not valid JSON"):
        RankPlan.load(tmp_path / "bad.json")
    with pytest.raises(PlanError, match="format"):
        RankPlan.from_dict({"format": "other@2", "layers": {}})


@pytest.mark.parametrize("images", [0, -3, True, 2.5, "256"])
def test_a_plans_fit_images_is_a_positive_integer(images) -> None:
    with pytest.raises(PlanError, match="fit_images"):
        RankPlan.from_dict({"layers": {}, "fit_images": images})


@pytest.mark.parametrize("shape", [[1, 3, True, 32], [1, 3, 32], "1,3,32,32", [1, 3, 65536, 65536]])
def test_a_plans_input_shape_is_four_positive_integers_of_sane_size(shape) -> None:
    with pytest.raises(PlanError, match="input_shape"):
        RankPlan.from_dict({"layers": {}, "input_shape": shape})
