"""The simulation the search scores int8 plans with, held to the file ONNX Runtime's quantizer writes and its
session runs. Real ResNet-20 weights, real onnxruntime."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

from dac_search import load_model
from dac_search.int8_model import Int8Model
from dac_search.int8_simulation import Int8Calibration, simulated_int8
from dac_search.plan import LayerChoice, RankPlan
from dac_search.precision import QuantScheme
from dac_search.proxies import ModelProxy, default_proxy
from dac_search.proxies.sensitivity import cached_int8_sensitivity

SHAPE = (1, 3, 32, 32)
FACTORISED = {"layer1.0.conv1": LayerChoice("dac", 2, "stacked"), "layer2.1.conv2": LayerChoice("spatial", 12),
              "layer3.0.conv1": LayerChoice("dac", 3, "grouped")}


@pytest.fixture(scope="module")
def resnet20(hub_cache: Path) -> torch.nn.Module:
    return load_model("cifar10-resnet20")


@pytest.fixture(scope="module")
def proxy(resnet20: torch.nn.Module) -> ModelProxy:
    return default_proxy(resnet20, SHAPE, "refit")


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    return torch.nn.functional.kl_div(torch.log_softmax(logits, 1), torch.log_softmax(reference, 1),
                                      log_target=True, reduction="batchmean").item()


def _convs(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]


@pytest.mark.parametrize("factorised", [False, True], ids=["dense", "factorised"])
def test_the_simulation_computes_what_onnx_runtime_runs_from_the_quantized_file(resnet20, proxy, factorised) -> None:
    """Off the file by a small part of what int8 itself changes, for any layer set: none (the additions alone),
    every conv, a half, one layer at a time, on a dense model and on one with every kind of factorised layer."""
    float_model = proxy.build(RankPlan(FACTORISED, "cifar10-resnet20", SHAPE, "refit")) if factorised else resnet20
    calibration = proxy.fit_inputs
    calibrated = Int8Calibration.of(float_model, QuantScheme(), calibration)
    assert calibrated is not None
    convs = _convs(float_model)
    layer_sets = [frozenset(), frozenset(convs), frozenset(convs[::2]), *(frozenset({c}) for c in convs[1:6])]
    with torch.no_grad():
        reference = float_model(proxy.inputs)
        for layers in layer_sets:
            simulation = calibrated.simulate(layers)
            assert simulation is not None
            shipped = Int8Model(float_model, layers, QuantScheme(), calibration, SHAPE)(proxy.inputs)
            simulated = simulation(proxy.inputs)
            assert _kl(shipped, simulated) < 0.15 * _kl(reference, shipped), sorted(layers)


def test_a_float_conv_between_quantized_tensors_runs_in_int8_in_onnx_runtime_and_in_the_simulation(resnet20,
                                                                                                  proxy,
                                                                                                  tmp_path) -> None:
    """ONNX Runtime's session quantizes the weights of a conv that reads a dequantized tensor and writes one to
    be quantized (``WeightBiasQuantization``): with layer1.0.conv1 in int8, layer1.0.conv2 between its output
    and the quantized addition runs in int8 too, per tensor. The simulation does the same; without it, it was
    as far from the file as int8 is from float."""
    int8 = Int8Model(resnet20, frozenset({"layer1.0.conv1"}), QuantScheme(), proxy.fit_inputs, SHAPE)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(int8.onnx_bytes(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    requantized = {n.name for n in optimized.node if n.name.endswith("_bias_dq")}
    assert requantized == {"/layer1/layer1.0/conv2/Conv_bias_dq"}
    simulation = simulated_int8(resnet20, frozenset({"layer1.0.conv1"}), QuantScheme(), proxy.fit_inputs)
    assert simulation is not None
    assert {"layer1_0_conv1", "layer1_0_conv2"} <= set(simulation.weights)
    assert "layer1_1_conv1" not in simulation.weights  # reads a dequantized addition, writes a float ReLU input


def test_a_model_with_an_op_the_simulation_does_not_know_is_scored_on_the_file() -> None:
    class Gated(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.norm(self.conv(x))
            return self.head((y * torch.sigmoid(y)).mean((2, 3)))

    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Gated().eval()
    x = torch.randn(8, 3, 16, 16, generator=generator)
    assert simulated_int8(model, frozenset({"conv"}), QuantScheme(), x) is None
    plan = RankPlan({}, None, (1, 3, 16, 16), precisions={"conv": "int8"})
    simulated = ModelProxy(model, x, int8_scoring="simulated").score(plan)
    assert simulated == ModelProxy(model, x, int8_scoring="onnxruntime").score(plan)
    assert simulated.kl > 0


def test_the_single_layer_int8_table_holds_what_the_proxy_scores_each_layer_alone(resnet20, fresh_cache) -> None:
    """The table the search adds up and the whole-plan score it checks against come from one simulation."""
    proxy = default_proxy(resnet20, SHAPE, "refit")
    layers = ["conv1", "layer2.0.conv2", "layer3.2.conv1"]
    table = cached_int8_sensitivity(proxy, layers, QuantScheme())
    for name in layers:
        alone = proxy.score(RankPlan({}, "cifar10-resnet20", SHAPE, "refit", precisions={name: "int8"})).kl
        assert table[name] == pytest.approx(alone, rel=1e-5, abs=1e-9)
    assert len(set(table.values())) == len(table)
    assert cached_int8_sensitivity(proxy, layers, QuantScheme()) == table  # read back from disk


def test_an_unknown_int8_scoring_is_refused(resnet20) -> None:
    with pytest.raises(Exception, match="int8 scoring"):
        ModelProxy(resnet20, torch.zeros(1, *SHAPE[1:]), int8_scoring="fake")
