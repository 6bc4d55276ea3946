"""``--weights NAME``: torchvision's weights names, offline errors that say which file goes where.

Real weights only: torch.hub's cache in a private TORCH_HOME is seeded with torchvision's own
MobileNet-V2 file (IMAGENET1K_V1), and the network is cut, so nothing is ever downloaded.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dac_search import ModelLoadError, load_model
from dac_search.cli import main
from dac_search.errors import WeightsUnavailableError
from dac_search.export import load_pt_export
from tests.conftest import ASSETS, MEAN, STD, require

IMAGENET = ASSETS / "imagenet"
MOBILENET_V1 = "mobilenet_v2-b0353104.pth"


def _offline(url: str, dst: str, **kwargs: object) -> None:
    raise OSError(f"no network for {url}")


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TORCH_HOME holding only MobileNet-V2's IMAGENET1K_V1 file, and no network."""
    require((IMAGENET / MOBILENET_V1).is_file(), f"{IMAGENET / MOBILENET_V1} not found")
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(IMAGENET / MOBILENET_V1, checkpoints / MOBILENET_V1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    return tmp_path / "torch"


def _sample_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    with (IMAGENET / "sample_a.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))[:count]
    pixels = np.stack([np.asarray(Image.open(IMAGENET / "sample_a" / row["file"]).convert("RGB")) for row in rows])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x, torch.tensor([int(row["label"]) for row in rows])


def test_torchvision_weights_name_loads_the_cached_file(torch_home: Path) -> None:
    model = load_model("mobilenet_v2", weights="IMAGENET1K_V1")
    x, y = _sample_images(100)
    with torch.no_grad():
        top1 = float((model(x).argmax(1) == y).float().mean())
    assert top1 > 0.75  # 86.4% over all 500 images of the sample
    again = load_model("mobilenet_v2", weights="MobileNet_V2_Weights.IMAGENET1K_V1")
    torch.testing.assert_close(again.classifier[1].weight, model.classifier[1].weight)


@pytest.mark.parametrize("spec,weights,filename", [
    ("resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth"),
    ("mobilenet_v2", "DEFAULT", "mobilenet_v2-7ebf99e0.pth"),  # DEFAULT is V2, which is not in the cache
    ("mobilenet_v2", None, "mobilenet_v2-7ebf99e0.pth"),
])
def test_offline_error_names_the_file_and_where_it_goes(torch_home: Path, spec: str, weights: str | None,
                                                         filename: str) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        load_model(spec, weights=weights)
    message = str(info.value)
    assert str(torch_home / "hub" / "checkpoints" / filename) in message and "--weights PATH" in message
    assert len(message.splitlines()) == 1 and info.value.exit_code == 1


def test_wrong_weights_names_are_one_clear_line(tmp_path: Path) -> None:
    for spec, weights, message in [
        ("resnet18", "IMAGENET1K_V9", "resnet18 has no weights named 'IMAGENET1K_V9' (did you mean IMAGENET1K_V1?)"),
        ("resnet18", "ResNet50_Weights.IMAGENET1K_V1", "known: IMAGENET1K_V1, DEFAULT"),
        ("cifar10-resnet20", "IMAGENET1K_V1", "give DEFAULT or a state-dict file"),
        ("torchvision.models:resnet18", "DEFAULT", "not a torchvision model"),
    ]:
        with pytest.raises(ModelLoadError) as info:
            load_model(spec, weights=weights)
        assert message in str(info.value) and len(str(info.value).splitlines()) == 1
        assert info.value.exit_code == 2


def test_cifar_default_is_the_pretrained_checkpoint(hub_cache: Path) -> None:
    torch.testing.assert_close(load_model("cifar10-resnet20", weights="DEFAULT").linear.weight,
                               load_model("cifar10-resnet20").linear.weight)


def _cli(*args: str, torch_home: Path) -> subprocess.CompletedProcess[str]:
    # The network cannot be cut in a subprocess; nothing is downloaded: the file asked for is in the cache.
    return subprocess.run([sys.executable, "-m", "dac_search.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "TORCH_HOME": str(torch_home)}, timeout=300)


def test_cli_takes_a_weights_name(torch_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    done = _cli("decompose", "--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--rank", "8",
                "--exclude", "features.0*", "-o", str(out), torch_home=torch_home)
    assert done.returncode == 0, done.stderr
    rebuilt = load_pt_export(out)  # the export records the name, and rebuilding resolves it again
    original = load_model("mobilenet_v2", weights="IMAGENET1K_V1")
    for kept in ("classifier.1.weight", "features.0.0.weight"):  # not decomposed: V1's own numbers
        torch.testing.assert_close(rebuilt.get_parameter(kept), original.get_parameter(kept))


def test_cli_refuses_a_wrong_weights_name_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["decompose", "--model", "mobilenet_v2", "--weights", "IMAGENET1K_V3", "--rank", "8",
                 "-o", str(tmp_path / "n.pt")])
    assert code == 2 and not (tmp_path / "n.pt").exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        "dac-search: mobilenet_v2 has no weights named 'IMAGENET1K_V3' (did you mean IMAGENET1K_V2?); "
        "known: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, or a state-dict file"]


class _Payload:
    """Any object a pickle may hold: weights_only=True refuses it, as it would refuse code."""


def test_torchvision_weights_are_read_with_weights_only(tmp_path: Path) -> None:
    import pickle

    from torchvision.models import _api

    from dac_search.zoo import _weights_only_loads

    torch.save({"w": torch.zeros(1), "payload": _Payload()}, tmp_path / "evil.pth")
    url = "https://example.invalid/evil.pth"  # already in model_dir: nothing is downloaded
    with _weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        _api.load_state_dict_from_url(url, model_dir=str(tmp_path))
    assert "payload" in _api.load_state_dict_from_url(url, model_dir=str(tmp_path), weights_only=False)


def test_a_file_matching_only_the_names_prefix_is_refused_where_the_full_digest_is_pinned(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 hex digits are 32 bits: a planted file can be ground to match them, the full digest it cannot."""
    from dac_search.zoo import weights

    real = weights.FULL_SHA256[MOBILENET_V1]
    assert weights.sha256_of(torch_home / "hub" / "checkpoints" / MOBILENET_V1) == real
    assert load_model("mobilenet_v2", weights="IMAGENET1K_V1") is not None
    monkeypatch.setitem(weights.FULL_SHA256, MOBILENET_V1, real[:8] + "0" * 56)  # same prefix, other file
    with pytest.raises(WeightsUnavailableError, match=f"has sha256 {real}, expected {real[:8]}0000"):
        load_model("mobilenet_v2", weights="IMAGENET1K_V1")
