"""``--eval-data``: every layout loads and normalises as documented; the real models score as published."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dac_search.errors import ConfigError
from dac_search.eval_data import load_eval_data, parse_floats, top1
from dac_search.zoo import load_model
from tests.conftest import MEAN, STD


class MeanColour(nn.Module):
    """Class = the brightest channel: a model whose accuracy on synthetic images is known exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_npz_batches_are_normalised_nchw(cifar_assets: Path) -> None:
    data = load_eval_data(cifar_assets / "cifar10_test_a.npz", MEAN, STD, size=(32, 32), limit=300)
    raw = np.load(cifar_assets / "cifar10_test_a.npz")
    batches = list(data.batches(128))
    assert [len(y) for _, y in batches] == [128, 128, 44]
    x, y = batches[0]
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    expected = (raw["x"][5, 7, 9, 2] / 255 - MEAN[2]) / STD[2]
    assert float(x[5, 2, 7, 9]) == pytest.approx(expected, abs=1e-6)
    assert torch.equal(y, torch.from_numpy(raw["y"][:128]))


def test_real_resnet20_top1_on_real_cifar10(cifar_assets: Path, hub_cache: Path) -> None:
    data = load_eval_data(cifar_assets / "cifar10_test_a.npz", MEAN, STD, size=(32, 32), limit=500)
    model = load_model("cifar10-resnet20").train()
    accuracy = top1(model, data, batch_size=250)
    assert 87.0 < accuracy < 97.0  # 91.7 % published for these weights on the full test set
    assert model.training  # the caller's mode is restored


def write_folder(root: Path, sizes: dict[str, tuple[int, int]]) -> None:
    """Three classes (red, green, blue) of solid images; one green image is secretly blue."""
    colours = {"0-red": (200, 20, 20), "1-green": (20, 200, 20), "2-blue": (20, 20, 200)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(4):
            pixel = (20, 20, 200) if (name, i) == ("1-green", 3) else colour
            Image.new("RGB", sizes.get(f"{name}/{i}", (8, 8)), pixel).save(root / name / f"{i}.png")
    (root / "0-red" / "notes.txt").write_text("not an image")


def test_folder_of_class_folders(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", {})
    data = load_eval_data(tmp_path / "data", mean=(0.5,), std=(0.25,))
    assert len(data) == 12 and data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.mean == (0.5, 0.5, 0.5)
    assert top1(MeanColour(), data, batch_size=5) == pytest.approx(100 * 11 / 12)


def test_folder_images_of_other_sizes_are_resized_or_refused(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", {"2-blue/1": (10, 6)})
    assert next(load_eval_data(tmp_path / "data", size=(8, 8)).batches(12))[0].shape == (12, 3, 8, 8)
    with pytest.raises(ConfigError, match="differ in size"):
        list(load_eval_data(tmp_path / "data").batches(12))


def test_labels_beyond_the_model_outputs_are_refused(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", {})
    data = load_eval_data(tmp_path / "data")
    with pytest.raises(ConfigError, match="labels go up to 2"):
        top1(nn.Sequential(nn.Flatten(), nn.LazyLinear(2)), data)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "absent.npz", "does not exist"),
        (lambda p: (p / "x.json").write_text("{}") and p / "x.json", "directory of class folders, a file list"),
        (lambda p: (p / "x.csv").write_text("1,2") and p / "x.csv", "1 is neither in"),
        (lambda p: (p / "h.tsv").write_text("name\tclass\n") and p / "h.tsv", "needs a 'label' column"),
        (lambda p: (p / "e.txt").write_text("\n") and p / "e.txt", "lists no images"),
        (lambda p: (p / "bad.npz").write_bytes(b"not a zip") and p / "bad.npz", "not a readable .npz"),
        (lambda p: np.savez(p / "nolabels.npz", x=np.zeros((2, 4, 4, 3), np.uint8)) or p / "nolabels.npz",
         "needs arrays 'x'"),
        (lambda p: np.savez(p / "float.npz", x=np.zeros((2, 4, 4, 3)), y=np.zeros(2, int)) or p / "float.npz",
         "'x' must be uint8"),
        (lambda p: np.savez(p / "short.npz", x=np.zeros((2, 4, 4, 3), np.uint8), y=np.zeros(3, int))
         or p / "short.npz", "'y' must be 2 integer labels"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no class folders with images"),
    ],
)
def test_bad_eval_data_is_one_config_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_eval_data(make(tmp_path))
    assert "\n" not in str(caught.value)


def test_file_lists_with_and_without_a_header(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", {})
    images = sorted((tmp_path / "data").rglob("*.png"))
    labels = [int(path.parent.name[0]) for path in images]
    # a header naming its columns, paths relative to the folder named like the list (sample_a.tsv + sample_a/)
    rows = "".join(f"{label}\t{path.relative_to(tmp_path / 'data')}\tx\n" for path, label in zip(images, labels))
    (tmp_path / "data.tsv").write_text("label\tfile\tnote\n" + rows)
    listed = load_eval_data(tmp_path / "data.tsv", mean=(0.5,), std=(0.25,))
    assert listed.labels.tolist() == labels and top1(MeanColour(), listed) == pytest.approx(100 * 11 / 12)
    # no header, whitespace-separated, paths relative to the list's own folder (ImageNet's val.txt)
    (tmp_path / "val.txt").write_text("".join(f"data/{p.relative_to(tmp_path / 'data')} {label}\n"
                                              for p, label in zip(images, labels)))
    assert load_eval_data(tmp_path / "val.txt").labels.tolist() == labels
    (tmp_path / "bad.csv").write_text(f"file,label\ndata/{images[0].relative_to(tmp_path / 'data')},red\n")
    with pytest.raises(ConfigError, match="row 2 needs a file and a non-negative integer label"):
        load_eval_data(tmp_path / "bad.csv")
    (tmp_path / "gone.csv").write_text(f"data/{images[0].relative_to(tmp_path / 'data')},0\ndata/gone.png,1\n")
    with pytest.raises(ConfigError, match="gone.png does not exist"):
        load_eval_data(tmp_path / "gone.csv")


def test_real_mobilenet_v2_top1_on_real_imagenet_images(imagenet_assets: Path, hub_cache: Path) -> None:
    """torchvision's own weights file through its weights API (hub cache seeded), the shared TSV layout."""
    data = load_eval_data(imagenet_assets / "sample_a.tsv", size=(224, 224))
    assert len(data) == 500
    model = load_model("mobilenet_v2", "IMAGENET1K_V1")
    assert top1(model, data, batch_size=50) == pytest.approx(86.4, abs=0.05)  # the assets README's figure


def test_mean_and_std_are_checked(tmp_path: Path, cifar_assets: Path) -> None:
    assert parse_floats("0.485, 0.456,0.406") == (0.485, 0.456, 0.406)
    with pytest.raises(ConfigError):
        parse_floats("0.5,x")
    with pytest.raises(ConfigError, match="--std values must be positive"):
        load_eval_data(cifar_assets / "cifar10_test_a.npz", std=(0.2, 0.0, 0.2))
    with pytest.raises(ConfigError, match="--mean needs 1 or 3 values"):
        load_eval_data(cifar_assets / "cifar10_test_a.npz", mean=(0.5, 0.5))
    with pytest.raises(ConfigError, match="images are 32×32, the model takes 224×224"):
        load_eval_data(cifar_assets / "cifar10_test_a.npz", size=(224, 224))
