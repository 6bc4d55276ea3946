"""Int8 layers: the plan that names them, the model it rebuilds, the file export writes, the proxy that scores it,
the table rows that time it. Real ResNet-20 weights, real onnxruntime, real CIFAR-10 images for top-1."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dac_search import decompose_model, load_model
from dac_search.cli import main
from dac_search.errors import ConfigError, PlanError
from dac_search.export import export_for, export_model
from dac_search.int8_model import Int8Model, int8_variants, module_of
from dac_search.int8_simulation import Int8Calibration
from dac_search.latency import LatencyTableBuilder
from dac_search.latency.table import default_candidates
from dac_search.plan import LayerChoice, RankPlan
from dac_search.precision import QuantScheme
from dac_search.proxies import ModelProxy, default_proxy, synthetic_inputs
from dac_search.proxies.calibration import calibration_inputs
from dac_search.proxies.correction import default_input_count, default_inputs
from profilers.base import MeasureSettings
from profilers.devices import load_device
from profilers.local import LocalProfiler
from tests.conftest import top1
from tests.profilers.conftest import write_device

SHAPE = (1, 3, 32, 32)
CONVS = ["conv1", *(f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2))]


@pytest.fixture(scope="module")
def resnet20(hub_cache: Path) -> torch.nn.Module:
    return load_model("cifar10-resnet20")


def _mixed_plan(correction: str | None = None, fit_images: int | None = None) -> RankPlan:
    """Factorised layers in int8 and in fp32, and layers kept dense in int8."""
    layers = {"layer1.0.conv1": LayerChoice("dac", 2, "stacked"), "layer2.1.conv2": LayerChoice("spatial", 12),
              "layer3.0.conv1": LayerChoice("dac", 3, "grouped")}
    precisions = {"layer1.0.conv1": "int8", "layer2.1.conv2": "int8", "layer1.1.conv1": "int8", "conv1": "int8"}
    return RankPlan(layers, "cifar10-resnet20", SHAPE, correction, fit_images=fit_images, precisions=precisions)


def _run(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_a_plan_with_int8_layers_round_trips_and_bad_precisions_are_refused(tmp_path) -> None:
    plan = _mixed_plan("refit")
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert data["format"] == "dac-search/plan@2"
    assert data["layers"]["layer1.1.conv1"] == {"precision": "int8"}  # kept dense, in int8
    assert data["layers"]["layer3.0.conv1"] == {"method": "dac", "rank": 3, "variant": "grouped"}  # fp32: no key
    assert data["quantization"]["calibration"] == "minmax" and "percentile" not in data["quantization"]
    percentile = RankPlan.from_dict({"quantization": {"calibration": "percentile", "percentile": 99.9},
                                     "layers": {"conv1": {"precision": "int8"}}})
    assert percentile.to_dict()["quantization"]["percentile"] == 99.9
    assert RankPlan.load(path) == plan
    old = {"format": "dac-search/plan@1", "layers": {"conv1": {"method": "dac", "rank": 1}}}
    assert RankPlan.from_dict(old).precisions == {}  # a plan of the earlier format: every layer fp32
    with pytest.raises(PlanError, match="unknown precision 'int4'"):
        RankPlan.from_dict({"layers": {"conv1": {"precision": "int4"}}})
    with pytest.raises(PlanError, match="unknown calibration"):
        RankPlan.from_dict({"quantization": {"calibration": "guess"}, "layers": {"conv1": {"precision": "int8"}}})


def test_onnx_nodes_are_traced_back_to_their_modules() -> None:
    modules = {"layer1", "layer1.0", "layer1.0.conv1", "layer1.0.conv1.depthwise.0", "conv1"}
    assert module_of("/layer1/layer1.0/conv1/depthwise.0/Conv", modules) == "layer1.0.conv1.depthwise.0"
    mobilenet = {"features", "features.1", "features.1.conv", "features.1.conv.0", "features.1.conv.0.0",
                 "features.1.conv.1"}  # a Sequential's child is named by its parent's name and index
    assert module_of("/features/features.1/conv/conv.0/conv.0.0/Conv", mobilenet) == "features.1.conv.0.0"
    assert module_of("/features/features.1/conv/conv.1/Conv", mobilenet) == "features.1.conv.1"
    assert module_of("/conv1/Conv", modules) == "conv1"
    assert module_of("/Relu", modules) is None


def test_the_plan_rebuilds_the_same_int8_model_and_export_writes_it(resnet20, tmp_path) -> None:
    plan = _mixed_plan()
    first, second = decompose_model(resnet20, plan), decompose_model(resnet20, plan)
    assert isinstance(first, Int8Model) and first.onnx_bytes() == second.onnx_bytes()
    graph = onnx.load_from_string(first.onnx_bytes()).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    int8 = {
        node.name for node in graph.node if node.op_type == "Conv" and producer.get(node.input[1]) == "DequantizeLinear"
    }
    # every factor of an int8 layer has int8 weights; fp32 layers, factorised or kept, keep float weights
    assert {"/conv1/Conv", "/layer1/layer1.0/conv1/pointwise/Conv", "/layer1/layer1.0/conv1/depthwise.0/Conv",
            "/layer1/layer1.1/conv1/Conv", "/layer2/layer2.1/conv2/vertical/Conv"} <= int8
    assert not int8 & {"/layer3/layer3.0/conv1/pointwise/Conv", "/layer1/layer1.2/conv1/Conv"}
    output = export_model(first, tmp_path / "mixed.onnx", plan, "cifar10-resnet20")
    x = synthetic_inputs(resnet20, SHAPE, "gaussian", 8, seed=5)
    with torch.no_grad():
        np.testing.assert_array_equal(_run(output, x), first(x).numpy())  # the very file, run by onnxruntime
    with pytest.raises(ConfigError, match="ONNX"):
        export_model(first, tmp_path / "mixed.ts", plan, "cifar10-resnet20")
    with pytest.raises(ConfigError, match="no int8 path"):
        export_for("torch", first, tmp_path / "mixed", SHAPE)


def test_calibration_images_come_from_the_distillation_cache_apart_from_the_scored_batch(resnet20) -> None:
    plan = _mixed_plan()
    model = decompose_model(resnet20, plan)
    expected = synthetic_inputs(resnet20, SHAPE, "auto", default_input_count(SHAPE), seed=0)
    assert torch.equal(model.calibration, expected)
    assert torch.equal(model.calibration, default_inputs(resnet20, SHAPE))  # the fit batch, no extra distillation
    assert not torch.equal(model.calibration, default_inputs(resnet20, SHAPE, held_out=True))  # not the scored one
    other = calibration_inputs(resnet20, SHAPE, QuantScheme(images=8, seed=3))
    assert other.shape[0] == 8 and not torch.equal(other, expected[:8])


def test_the_proxy_scores_the_file_export_writes(resnet20, tmp_path) -> None:
    """With the plan's fit at the scoring batch, the exported file is the model the proxy scored, so its KL on the
    held-out batch is the proxy's: to onnxruntime's rounding when the proxy scores the file, to a few percent
    of the KL when it scores the simulation of it (the search's default)."""
    proxy = default_proxy(resnet20, SHAPE, "refit")
    plan = _mixed_plan("refit", fit_images=default_input_count(SHAPE))
    simulated = proxy.score(plan)
    proxy.int8_scoring = "onnxruntime"
    score = proxy.score(plan)
    exported = export_model(decompose_model(resnet20, plan), tmp_path / "plan.onnx", plan, "cifar10-resnet20")
    logits = torch.from_numpy(_run(exported, proxy.inputs))
    reference = torch.log_softmax(proxy.reference_logits, 1)
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits, 1), reference, log_target=True,
                                    reduction="batchmean").item()
    assert score.kl == pytest.approx(kl, rel=1e-3, abs=1e-6)
    assert simulated.kl == pytest.approx(kl, rel=0.03)
    assert 0.0 < score.kl < proxy.score(plan.in_fp32()).kl + 0.05  # int8 adds a little, not a collapse


@pytest.mark.slow  # 5,000 images through two onnxruntime models
def test_the_original_in_int8_keeps_its_accuracy_on_real_images(resnet20, cifar_test) -> None:
    x, y = cifar_test
    plan = RankPlan(precisions={name: "int8" for name in CONVS}, input_shape=SHAPE)
    int8 = decompose_model(resnet20, plan)
    fp32, quantized = top1(resnet20, x, y), top1(int8, x, y)
    assert quantized >= fp32 - 1.0, (fp32, quantized)  # data-free calibration: within a point of fp32


def test_int8_rows_are_timed_and_priced(resnet20, tmp_path) -> None:
    profiler = LocalProfiler(load_device(write_device(tmp_path / "int8.toml", kind="local", threads=1)))
    settings = MeasureSettings(warmup_s=0.02, repeat_s=0.01, repeats=3, max_attempts=1)
    builder = LatencyTableBuilder(profiler, cache_dir=tmp_path, settings=settings, model_settings=settings)
    choose = default_candidates(("dac",), points=2)
    table = builder.build(resnet20, SHAPE, candidates=choose, layers=["layer3.1.conv1"], precisions=("fp32", "int8"))
    assert table.precisions() == ("fp32", "int8")
    kept = table.layer_ms("layer3.1.conv1", None, "int8")
    assert kept > 0 and kept != table.layer_ms("layer3.1.conv1")
    plan = RankPlan(precisions={"layer3.1.conv1": "int8"})
    assert table.predict_raw(plan) == pytest.approx(table.original_ms - table.layer_ms("layer3.1.conv1") + kept)
    fresh = LatencyTableBuilder(profiler, cache_dir=tmp_path / "fp32", settings=settings, model_settings=settings)
    fp32_only = fresh.build(resnet20, SHAPE, candidates=choose, layers=["layer3.1.conv1"])
    with pytest.raises(PlanError, match="in int8"):
        fp32_only.layer_ms("layer3.1.conv1", None, "int8")


def test_a_bad_precision_is_one_line_and_exit_2(capsys) -> None:
    code = main(["--model", "cifar10-resnet20", "--device", "none", "--budget", "50%flops", "--precision", "int4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown precision 'int4'" in err
    code = main(["--model", "cifar10-resnet20", "--device", "none", "--budget", "50%flops", "--precision", "int8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs a latency budget" in err


def test_a_device_without_an_int8_path_narrows_the_search_to_fp32_in_one_line(tmp_path) -> None:
    from dac_search.budget import parse_budget
    from dac_search.search.config import SearchConfig
    from dac_search.search.context import _precisions

    device = tmp_path / "ts.toml"
    device.write_text('name = "ts"\nkind = "local"\nruntime = "torch"\n')
    said: list[str] = []
    config = SearchConfig("cifar10-resnet20", parse_budget("0.6x"), device=str(device))
    assert _precisions(config, said.append) == ("fp32",)
    assert len(said) == 1 and "no int8 path" in said[0] and "torch" in said[0]


def test_an_int8_model_with_several_outputs_gives_them_back_in_their_structure() -> None:
    """A detector's head outputs (a dict) come back from the int8 file as the float model gives them."""

    class Heads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.cls, self.box = (torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1),
                                             torch.nn.Conv2d(8, 2, 1))

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = torch.relu(self.body(x))
            return {"cls_logits": self.cls(h), "bbox_regression": self.box(h)}

    with torch.random.fork_rng():  # the same weights whatever ran before: the bound below is for these
        torch.manual_seed(0)
        model = Heads().eval()
    generator = torch.Generator().manual_seed(0)
    int8 = Int8Model(model, None, QuantScheme(), torch.randn(8, 3, 16, 16, generator=generator), (1, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16, generator=generator)
    with torch.no_grad():
        got, expected = int8(x), model(x)
    assert list(got) == ["cls_logits", "bbox_regression"]
    for name, value in expected.items():
        assert got[name].shape == value.shape
        assert (got[name] - value).abs().max() < 0.1 * value.abs().max()  # int8 rounding, not another tensor


def _counted_calibrations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at every calibration run ONNX Runtime's quantizer starts from now on."""
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not its function
    calibrators: list[int] = []
    create = ort_quantize.create_calibrator
    monkeypatch.setattr(ort_quantize, "create_calibrator", lambda *a, **k: calibrators.append(1) or create(*a, **k))
    return calibrators


def test_int8_variants_of_one_float_model_calibrate_once_and_equal_the_models_made_alone(monkeypatch) -> None:
    """The proxy's table of each layer alone in int8 quantizes one float model many times: one calibration run
    serves every variant, and each variant computes exactly what the same model quantized on its own does."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(8, 4, 1)).eval()
    generator = torch.Generator().manual_seed(0)
    calibration, x = torch.randn(8, 3, 16, 16, generator=generator), torch.randn(4, 3, 16, 16, generator=generator)
    shape = (1, 3, 16, 16)
    layer_sets = [frozenset(), frozenset({"0"}), frozenset({"2"}), frozenset({"0", "4"})]
    alone = [Int8Model(model, layers, QuantScheme(), calibration, shape) for layers in layer_sets]
    with torch.no_grad():
        expected = [int8(x) for int8 in alone]
    calibrators = _counted_calibrations(monkeypatch)
    with int8_variants(model, QuantScheme(), calibration, shape) as variant, torch.no_grad():
        got = [variant(layers)(x) for layers in layer_sets]
    assert len(calibrators) == 1
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(want, have)
    assert not torch.equal(got[1], got[2])  # the layer sets differ, and so do their models


@pytest.mark.parametrize("scoring", ["simulated", "onnxruntime"])
def test_an_int8_plan_with_an_earlier_plans_float_layers_reuses_its_model_export_and_ranges(resnet20, monkeypatch,
                                                                                             scoring) -> None:
    """Refinement often moves only a layer's precision: the proxy then skips the refit, the export and the
    calibration run, and scores what a proxy that never saw the earlier plan scores."""
    proxy = default_proxy(resnet20, SHAPE, "refit")
    proxy.int8_scoring = scoring
    first = _mixed_plan("refit")
    second = RankPlan(first.layers, first.model, SHAPE, "refit",
                      precisions={**first.precisions, "layer3.2.conv2": "int8"})
    assert second.in_fp32() == first.in_fp32() and second.int8_layers != first.int8_layers
    proxy.score(first)
    calibrators = _counted_calibrations(monkeypatch)
    of = Int8Calibration.of
    monkeypatch.setattr(Int8Calibration, "of", lambda *a, **k: calibrators.append(1) or of(*a, **k))
    refits = []
    run_plan = ModelProxy._run
    monkeypatch.setattr(ModelProxy, "_run", lambda self, *a, **k: refits.append(1) or run_plan(self, *a, **k))
    again = proxy.score(second)
    assert (calibrators, refits) == ([], [])
    monkeypatch.undo()
    fresh = ModelProxy(resnet20, proxy.inputs, "refit", fit_inputs=proxy.fit_inputs,
                       int8_scoring=scoring).score(second)
    assert again == fresh
