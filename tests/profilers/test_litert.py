"""LiteRT, the runtime a Pi user deploys with: models converted here by litert-torch, timed by the same runner
with ``ai_edge_litert`` (XNNPACK), locally and over the real sshd, and exported for deployment."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dac_search.export import export_for, export_tflite
from profilers import BadModel, load_device, make_profiler
from tests.conftest import require

from .conftest import SshServer, write_device

SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module", autouse=True)
def _litert_installed() -> None:
    for module, package in (("litert_torch", "litert-torch"), ("ai_edge_litert", "ai-edge-litert")):
        require(importlib.util.find_spec(module) is not None,
                f"{package} is not installed (pip install 'dac-search[litert]')")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)).eval()


@pytest.fixture(scope="module")
def tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tflite(_net(), tmp_path_factory.mktemp("litert") / "net.tflite", SHAPE)


def test_a_converted_model_computes_what_torch_computes(tflite: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    x = torch.rand(SHAPE)
    interpreter = Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    (entry,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(entry["shape"]) == list(SHAPE)  # N,C,H,W as in torch
    interpreter.set_tensor(entry["index"], x.numpy())
    interpreter.invoke()
    with torch.no_grad():
        expected = _net()(x).numpy()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), expected, rtol=1e-4, atol=1e-4)


def test_the_local_device_times_litert_models(tmp_path: Path, tflite: Path) -> None:
    config = load_device(write_device(tmp_path / "litert.toml", kind="local", runtime="litert", threads=1))
    with make_profiler(config) as profiler:
        result = profiler.measure(tflite, SHAPE)
        info = profiler.info()
        broken = tmp_path / "broken.tflite"
        broken.write_bytes(b"not a flatbuffer")
        with pytest.raises(BadModel, match="broken.tflite"):
            profiler.measure(broken, SHAPE)
    assert result.median_ms > 0 and result.conditions.runtime == "litert" and result.conditions.runtime_version
    assert info["runtime"] == "litert"


def test_an_ssh_device_times_litert_models_and_devices_check_says_so(
    sshd: SshServer, tmp_path: Path, tflite: Path
) -> None:
    device = sshd.device_toml(tmp_path / "litert-ssh.toml", runtime="litert")
    with make_profiler(load_device(device)) as profiler:
        assert profiler.measure(tflite, SHAPE).conditions.runtime == "litert"
    done = subprocess.run([sys.executable, "-m", "dac_search.cli", "devices", "check", str(device)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "litert" in done.stdout


def test_export_for_the_litert_runtime_writes_a_tflite_file(tmp_path: Path) -> None:
    path = export_for("litert", _net(), tmp_path / "model", SHAPE)
    assert path == tmp_path / "model.tflite" and path.stat().st_size > 0


def test_profile_times_a_real_model_on_the_shipped_local_litert_device(hub_cache: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "dac_search.cli", "profile", "--model", "cifar10-resnet20",
                           "--device", "local-litert", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["conditions"]["runtime"] == "litert" and result["artifact"] == "cifar10-resnet20.tflite"
    assert result["input_shape"] == [1, 3, 32, 32] and min(result["samples_ms"]) > 0
    assert done.stderr.strip() == "", "the converter's chatter reaches the user"


def test_an_int8_plan_is_written_for_litert_as_the_model_the_proxy_scored(hub_cache: Path, tmp_path: Path) -> None:
    """The same plan, scheme and calibration images as the ONNX Runtime file: XNNPACK's int8 arithmetic gives
    the logits onnxruntime gave, to the runtimes' rounding, and the local LiteRT device times the file."""
    from ai_edge_litert.interpreter import Interpreter

    from dac_search import decompose_model, load_model
    from dac_search.plan import LayerChoice, RankPlan
    from dac_search.proxies import synthetic_inputs

    shape = (1, 3, 32, 32)
    resnet20 = load_model("cifar10-resnet20")
    plan = RankPlan(
        {"layer1.0.conv1": LayerChoice("dac", 2, "stacked"), "layer3.0.conv1": LayerChoice("dac", 3, "grouped")},
        "cifar10-resnet20",
        shape,
        precisions={"conv1": "int8", "layer1.0.conv1": "int8", "layer2.1.conv2": "int8"},
    )
    int8 = decompose_model(resnet20, plan)
    path = export_for("litert", int8, tmp_path / "mixed", shape)
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (entry,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert entry["dtype"] == np.int8 and out["dtype"] == np.float32  # int8 from the input conv, float classifier
    x = synthetic_inputs(resnet20, shape, "gaussian", 16, seed=5)
    with torch.no_grad():
        expected, original = int8(x).numpy(), resnet20(x).numpy()
    scale, zero = entry["quantization"]
    logits = []
    for image in x.numpy():
        interpreter.set_tensor(entry["index"], np.clip(np.round(image[None] / scale + zero), -128, 127).astype(np.int8))
        interpreter.invoke()
        logits.append(interpreter.get_tensor(out["index"]))
    got = np.concatenate(logits)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9
    # closer to onnxruntime's int8 logits than both are to the float model's: the same quantized model
    assert np.abs(got - expected).mean() < 0.5 * np.abs(expected - original).mean()
    config = load_device(write_device(tmp_path / "litert.toml", kind="local", runtime="litert", threads=1))
    with make_profiler(config) as profiler:
        assert profiler.measure(path, shape).median_ms > 0  # its int8 input is fed as the file says
