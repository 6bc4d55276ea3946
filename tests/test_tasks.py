"""Detection and segmentation models by name (random weights): searched, scored on raw outputs, exported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dac_search import decompose_model, load_model
from dac_search.export import export_onnx
from dac_search.proxies import ModelProxy, synthetic_inputs
from dac_search.proxies.apply import build_model
from dac_search.proxies.outputs import compare, leaves
from dac_search.zoo.tasks import RawDetector
from tests.conftest import NOBN_SPEC, cli_in_process

# Small inputs keep these fast; the architectures are the full ones.
SHAPES = {"ssd300_vgg16": (1, 3, 300, 300), "deeplabv3_resnet50": (1, 3, 64, 64)}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dac_search.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_outputs_of_any_structure_are_compared_per_leaf() -> None:
    ref = {"cls": torch.randn(2, 5, 3), "box": [torch.randn(2, 4), torch.randn(2, 4)]}
    assert [name for name, _ in leaves(ref)] == ["cls", "box.0", "box.1"]
    same = compare(ref, ref, {"cls": -1})
    assert same.kl == pytest.approx(0.0, abs=1e-12) and same.agreement == 1.0
    moved = {**ref, "box": [ref["box"][0] + 1.0, ref["box"][1]]}
    assert compare(ref, moved, {"cls": -1}).kl > 0.1  # a box shift of about one std
    assert compare(ref, moved).agreement is None  # nothing declared a distribution
    logits = torch.randn(4, 10)
    assert compare(logits, logits + 0.5).kl == pytest.approx(0.0, abs=1e-9)  # softmax: a shift does not count
    with pytest.raises(Exception, match="structure"):
        compare(ref, {"cls": ref["cls"]})


@pytest.mark.slow  # builds VGG16-SSD300 and ResNet-50-DeepLabV3
@pytest.mark.parametrize("spec", sorted(SHAPES))
def test_a_task_model_is_scored_on_its_raw_outputs_and_exports_to_onnx(spec: str, tmp_path: Path) -> None:
    shape = SHAPES[spec]
    model = load_model(spec, "none")
    with torch.no_grad():
        outputs = model(torch.rand(shape))
    names = [name for name, _ in leaves(outputs)]
    assert names == (["bbox_regression", "cls_logits"] if spec.startswith("ssd") else ["out"])
    if spec.startswith("ssd"):
        assert isinstance(model, RawDetector) and "backbone.features.0" in dict(model.named_modules())
    inputs = synthetic_inputs(model, shape, "auto", n=2)  # VGG-SSD has no BatchNorm and is no classifier
    proxy = ModelProxy(model, inputs)
    conv = next(name for name, m in model.named_modules()
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels >= 64)
    plan = {"layers": {conv: {"method": "dac", "rank": 1}}}
    score = proxy.score(plan)
    assert 0.0 < score.kl < 10.0
    decomposed = decompose_model(model, plan)
    path = export_onnx(decomposed, tmp_path / "m.onnx", shape)
    x = torch.rand(shape)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = [value.numpy() for _, value in leaves(decomposed(x))]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


# An SSD searched from the command line is SSDlite: VGG16-SSD300's single-layer proxies alone take about
# 5 minutes on 2 cores (its scoring and export are tested above).
@pytest.mark.slow  # single-layer proxies of a whole detector or segmenter
@pytest.mark.parametrize(("spec", "shape", "methods", "inputs"), [
    ("ssdlite320_mobilenet_v3_large", "1,3,160,160", "channel", "distilled"),
    ("deeplabv3_resnet50", "1,3,32,32", "dac", "distilled")])
def test_a_task_model_is_searched_and_its_plan_exported_from_the_command_line(spec: str, shape: str, methods: str,
                                                                               inputs: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("--model", spec, "--weights", "none", "--input-shape", shape, "--device", "none",
                     "--budget", "90%flops", "--methods", methods, "--trials", "3", "--correction", "none",
                     "--proxy-images", "2", "--agreement-images", "0", "--out", str(out))
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["proxy"]["inputs"] == inputs and run["trials_complete"] == 3
    exported = run_cli("export", str(out), "--pick", "best", "--format", "onnx", "-o", str(tmp_path / "m.onnx"))
    assert exported.returncode == 0, exported.stderr
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == (2 if spec.startswith("ssd") else 1)  # the raw head outputs


def test_a_task_model_without_the_shape_it_needs_is_one_line(tmp_path: Path, capsys) -> None:
    code, stderr = cli_in_process(capsys, "--model", "fasterrcnn_resnet50_fpn", "--weights", "none", "--device",
                                  "none", "--budget", "50%flops", "--out", str(tmp_path / "r"))
    assert code == 2
    assert stderr.strip().splitlines() == [stderr.strip()] and "--input-shape" in stderr


def test_a_model_with_no_conv_to_factorise_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "net.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))\n")
    code, stderr = cli_in_process(capsys, "--model", f"{tmp_path / 'net.py'}:build", "--input-shape", "1,3,16,16",
                                  "--device", "none", "--budget", "50%flops", "--out", str(tmp_path / "r"))
    assert code == 2, stderr
    assert "no conv a factorisation can help" in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.slow  # class impressions for the fit and the held-out score, then the search
def test_a_search_on_the_bn_free_net_beats_uniform_dac_in_real_top1(nobn_weights: Path, cifar_assets: Path,
                                                                     tmp_path: Path) -> None:
    """The real BN-free CIFAR-10 net, data-free (impressions: auto), judged on the 5,000 real test images."""
    from dac_search.allocate import allocate
    from dac_search.eval_data import load_eval_data, top1
    from dac_search.export.run import pick_trial
    from dac_search.rundir import load_run

    out, data_file = tmp_path / "run", cifar_assets / "cifar10_test_a.npz"
    # the plans' own models fitted on the proxy's 64 images (made already), not on 256 more impressions
    result = run_cli("--model", NOBN_SPEC, "--weights", str(nobn_weights), "--input-shape", "1,3,32,32",
                     "--device", "none", "--budget", "40%flops", "--trials", "12", "--eval-data", str(data_file),
                     "--mean", "0.5", "--std", "0.5", "--agreement-images", "0", "--fit-images", "64",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    run = load_run(out)
    assert run.info.proxy.inputs == "impressions"
    best = pick_trial(run, "best")
    assert json.loads((out / best.plan).read_text())["fit_images"] == 64
    model = load_model(NOBN_SPEC, nobn_weights)
    data = load_eval_data(data_file, (0.5,), (0.5,), size=(32, 32))
    uniform = allocate("uniform", model, (1, 3, 32, 32), 0.4, "dac")  # the paper's way, with the same refit
    uniform_plan = {**uniform.to_dict(), "correction": "refit", "input_shape": [1, 3, 32, 32], "fit_images": 64}
    uniform_top1 = top1(build_model(model, uniform_plan, dense=True), data)
    assert best.top1 is not None and best.top1 > uniform_top1 + 1.0, (best.top1, uniform_top1)
