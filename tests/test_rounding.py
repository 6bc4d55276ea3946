"""Learned rounding of int8 weights on the real ResNet-20: the int8 file ONNX Runtime's quantizer writes holds
the integers it learned (not nearest's), it brings the network closer to the original than nearest does on
images it was not fitted on, and a plan without it reads and rebuilds as before."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dac_search import load_model
from dac_search.int8_model import Int8Model
from dac_search.plan import LayerChoice, RankPlan
from dac_search.precision import INT8, WEIGHT_QMAX, QuantScheme
from dac_search.proxies.apply import decompose_model
from dac_search.proxies.synthetic import synthetic_inputs
from dac_search.reconstruction.planning import SAFETY, StepCost
from dac_search.reconstruction.regions import trace
from dac_search.reconstruction.rounding import int8_weights
from dac_search.reconstruction.settings import ReconstructionSettings

SHAPE = (1, 3, 32, 32)
# a factorised layer (its depthwise factor unfolded, its 1x1 with layer1.1's BatchNorm folded in), a plain
# conv, and the first conv; the rest stays float
INT8_LAYERS = ("conv1", "layer1.1.conv1", "layer1.1.conv2", "layer2.0.conv2")
ROUNDED = ReconstructionSettings(steps=0, images=64, batch=32, rounding_steps=60)


@pytest.fixture(scope="module")
def resnet20(hub_cache: Path) -> nn.Module:
    return load_model("cifar10-resnet20").eval()


def plan_of(settings: ReconstructionSettings | None) -> RankPlan:
    return RankPlan({"layer1.1.conv1": LayerChoice("dac", 2, "stacked")}, "cifar10-resnet20", SHAPE, "refit",
                    fit_images=64, precisions={name: INT8 for name in INT8_LAYERS},
                    quantization=QuantScheme(images=64, seed=2), reconstruction=settings)  # the fit's images


def grid_integers(model: nn.Module, layers: frozenset[str]) -> dict[str, np.ndarray]:
    """Each int8 conv's folded weight over its channel's step: integers where the weights lie on the grid."""
    graph_module = trace(model)
    out = {}
    for weight in int8_weights(graph_module, layers):
        conv = graph_module.get_submodule(weight.name)
        folded = conv.weight.detach() * weight.fold.view(-1, 1, 1, 1)
        step = folded.abs().amax(dim=(1, 2, 3), keepdim=True) / WEIGHT_QMAX
        out[weight.name] = (folded / step).numpy()
    return out


def onnx_int8_weights(model: Int8Model) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_model_from_string(model.onnx_bytes())
    return [numpy_helper.to_array(t) for t in proto.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]


def test_the_int8_file_holds_the_integers_learned_not_nearests(resnet20: nn.Module, fresh_cache: Path) -> None:
    plan = plan_of(ROUNDED)
    nearest_float = decompose_model(resnet20, plan.in_fp32())
    rounded = decompose_model(resnet20, plan)
    assert isinstance(rounded, Int8Model)
    layers = frozenset(INT8_LAYERS)
    learned, before = grid_integers(rounded.model, layers), grid_integers(nearest_float, layers)
    assert len(learned) == 6  # conv1, the three factors of layer1.1.conv1 (two depthwise), two plain convs
    in_file = onnx_int8_weights(rounded)
    flipped = 0
    for name, values in learned.items():
        integers = np.round(values)
        assert np.abs(values - integers).max() < 1e-3, name  # on the grid
        assert any(w.shape == integers.shape and np.array_equal(w, integers) for w in in_file), name
        flipped += int((integers != np.round(before[name])).sum())
    assert flipped > 0  # learned, not nearest


def test_learned_rounding_is_closer_to_the_original_than_nearest_on_held_out_images(resnet20: nn.Module,
                                                                                     fresh_cache: Path) -> None:
    held_out = synthetic_inputs(resnet20, SHAPE, n=64, seed=7)
    nearest = decompose_model(resnet20, plan_of(replace(ROUNDED, rounding_steps=1, rounding_lr=1e-12)))
    learned = decompose_model(resnet20, plan_of(ROUNDED))
    with torch.no_grad():
        reference = resnet20(held_out)

    def error(model: Int8Model) -> float:
        with torch.no_grad():  # the float network, its weights on the grid
            return float((model.model(held_out) - reference).pow(2).mean())
    assert error(learned) < error(nearest) * 0.9, (error(learned), error(nearest))


def test_a_plan_without_learned_rounding_reads_and_writes_as_before(tmp_path: Path) -> None:
    plain = plan_of(replace(ROUNDED, rounding_steps=0, steps=30))
    assert "rounding_steps" not in json.dumps(plain.to_dict())
    path = plan_of(ROUNDED).save(tmp_path / "plan.json")
    again = RankPlan.load(path)
    assert again.reconstruction == ROUNDED
    assert again.in_fp32().reconstruction == replace(ROUNDED, rounding_steps=0)
    assert again.in_fp32().to_json() == RankPlan.from_dict(json.loads(path.read_text())).in_fp32().to_json()


def test_a_budget_buys_as_many_rounding_steps_as_float_steps_and_none_where_there_is_nothing_to_round() -> None:
    base = replace(ROUNDED, steps=200, rounding_steps=200)
    both = StepCost(base, step_s=0.02, passes_s=1.0, rounding_s=0.02).settings(100.0)
    assert both is not None and both.steps == both.rounding_steps == int((100 * SAFETY - 2.0) / 0.04)
    float_only = StepCost(base, 0.02, 1.0).settings(100.0)
    assert float_only is not None and float_only.rounding_steps == 0 and float_only.steps > both.steps
    int8_only = StepCost(base, 0.0, 1.0, rounding_s=0.02).settings(100.0)
    assert int8_only is not None and int8_only.steps == 0 and int8_only.rounding_steps == float_only.steps
    assert StepCost(base, 0.0, 1.0).settings(100.0) == replace(base, steps=0, rounding_steps=0)
    assert StepCost(base, 0.02, 1.0, 0.02).settings(1.0) is None  # not even MIN_STEPS
