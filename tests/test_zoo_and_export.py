"""The zoo with real pretrained weights and real images; ONNX export checked in onnxruntime."""

from __future__ import annotations

import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dac_search import ModelLoadError, decompose_model, load_model
from dac_search.decompose import decomposable_layers
from dac_search.errors import WeightsUnavailableError
from dac_search.export import export_onnx, export_torchscript
from tests.conftest import top1


@pytest.mark.parametrize("spec,expected", [("cifar10-resnet20", 92.10),
                                           pytest.param("cifar10-resnet56", 93.50, marks=pytest.mark.slow)])
def test_cifar_resnets_score_their_published_accuracy(hub_cache, cifar_test, spec, expected) -> None:
    model = load_model(spec)
    assert top1(model, *cifar_test) == pytest.approx(expected, abs=0.005)


def test_onnx_export_of_a_decomposed_model_matches_torch(hub_cache, tmp_path) -> None:
    model = load_model("cifar10-resnet20")
    layers = list(decomposable_layers(model))
    plan = {"layers": {name: {"method": ("dac", "spatial", "channel")[i % 3], "rank": 2,
                              **({"variant": "stacked"} if i % 6 == 0 else {})} for i, name in enumerate(layers)}}
    decomposed = decompose_model(model, plan)
    path = export_onnx(decomposed, tmp_path / "m.onnx", (1, 3, 32, 32))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = decomposed(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, rtol=1e-4, atol=1e-4)
    ts = export_torchscript(decomposed, tmp_path / "m.pt", (1, 3, 32, 32))
    reloaded = load_model(str(ts))
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_offline_torchvision_weights_name_the_file_to_provide(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("resnet18")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message and "--weights" in message


def _offline(url: str, dst: str, **kwargs: object) -> None:
    raise OSError(f"no network for {url}")


def test_cached_checkpoint_with_wrong_hash_is_refused(tmp_path, monkeypatch, cifar_assets) -> None:
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet20-12fca82f.th").write_bytes((cifar_assets / "resnet56-4bfd9763.th").read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        load_model("cifar10-resnet20")


def test_weights_flag_handles_state_dict_key_and_module_prefix(cifar_assets, cifar_test, tmp_path) -> None:
    model = load_model("cifar10-resnet20", weights=cifar_assets / "resnet20-12fca82f.th")
    x, y = cifar_test
    assert top1(model, x[:1000], y[:1000]) > 85
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    again = load_model("cifar10-resnet20", weights=tmp_path / "plain.pt")
    torch.testing.assert_close(again.linear.weight, model.linear.weight)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model("cifar10-resnet56", weights=tmp_path / "plain.pt")


def test_callables_and_bad_specs(tmp_path) -> None:
    source = tmp_path / "net.py"
    source.write_text(textwrap.dedent("""
        import torch
        def make():
            return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        def broken():
            raise RuntimeError("boom")
    """))
    model = load_model(f"{source}:make")
    assert isinstance(model[0], torch.nn.Conv2d) and not model.training
    assert isinstance(load_model("torchvision.models:resnet18"), torch.nn.Module)
    for spec, message in [(f"{source}:missing", "no callable"), (f"{source}:broken", "boom"),
                          ("resnet5", "did you mean resnet50"), (str(tmp_path / "no.py") + ":f", "not found"),
                          (str(source), "not a TorchScript file")]:
        with pytest.raises(ModelLoadError, match=message):
            load_model(spec)


def test_random_weights_are_the_same_every_time_and_leave_the_callers_random_state() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first, second = load_model("cifar10-resnet20", "none"), load_model("resnet18", "none")
    assert torch.equal(torch.rand(3), expected)  # the build ran from its own seed
    assert torch.equal(first.conv1.weight, load_model("cifar10-resnet20", "none").conv1.weight)
    assert torch.equal(second.fc.weight, load_model("resnet18", "none").fc.weight)
