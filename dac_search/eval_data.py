"""Real top-1 for users who have labelled data (``--eval-data``), shown beside the data-free proxy.

Three layouts: a directory of class folders of images (classes sorted by name, as torchvision's
``ImageFolder`` numbers them); a list of image files and labels (``.tsv``, ``.csv`` or a whitespace
separated ``.txt``, like ImageNet's ``val.txt``: the columns ``file`` and ``label`` of a header row, or
the first two columns; paths relative to the list's folder, or to the folder named like the list); or
an ``.npz`` with ``x`` uint8 NHWC and ``y`` labels. Images stay uint8 until a batch is needed and files
are read per batch, so a large set does not fill memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from zipfile import BadZipFile

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from dac_search.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp"})
LIST_SEPARATORS = {".tsv": "\t", ".csv": ",", ".txt": None}  # None: any whitespace
FILE_COLUMNS = ("file", "path", "filename", "image")


@dataclass(frozen=True)
class ArrayImages:
    """Images already in memory (from an .npz): uint8, N×H×W×C."""

    array: np.ndarray

    def __len__(self) -> int:
        return len(self.array)

    def load(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]


@dataclass(frozen=True)
class FolderImages:
    """Image files read as RGB when their batch comes; resized to ``size`` (H, W) when given."""

    paths: tuple[Path, ...]
    size: tuple[int, int] | None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, start: int, stop: int) -> np.ndarray:
        images = [self._read(path) for path in self.paths[start:stop]]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise ConfigError(
                f"--eval-data images differ in size ({', '.join(sorted(map(str, shapes)))}); pass the model's "
                "input size so they are resized"
            )
        return np.stack(images)

    def _read(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if self.size is not None and image.size != (self.size[1], self.size[0]):
                    image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise ConfigError(f"--eval-data: cannot read image {path}: {exc}") from None
        return array


@dataclass(frozen=True)
class EvalData:
    """Labelled images and the normalisation the model was trained with."""

    source: Path
    images: ArrayImages | FolderImages
    labels: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float NCHW images and int64 labels, ``batch_size`` at a time, in a fixed order."""
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            pixels = torch.from_numpy(np.ascontiguousarray(self.images.load(start, stop)))
            x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
            yield (x - mean) / std, torch.from_numpy(self.labels[start:stop])


def parse_floats(text: str) -> tuple[float, ...]:
    """``0.485,0.456,0.406`` -> a tuple; usable as an argparse ``type=`` for ``--mean`` and ``--std``."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers like 0.485,0.456,0.406, got {text!r}") from None
    if not values:
        raise ConfigError(f"expected comma-separated numbers like 0.485,0.456,0.406, got {text!r}")
    return values


def load_eval_data(
    path: str | Path,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    size: tuple[int, int] | None = None,
    limit: int | None = None,
) -> EvalData:
    """Open ``--eval-data``: an .npz or a directory of class folders; ``limit`` keeps the first N samples.

    ``size`` (H, W) is the model's input size: folder images are resized to it, .npz images must match it.
    """
    source = Path(path)
    if not source.exists():
        raise ConfigError(f"--eval-data {source} does not exist")
    if source.is_dir():
        images, labels = _open_folder(source, size)
    elif source.suffix.lower() == ".npz":
        images, labels = _open_npz(source, size)
    elif source.suffix.lower() in LIST_SEPARATORS:
        images, labels = _open_list(source, size)
    else:
        raise ConfigError(f"--eval-data {source} must be a directory of class folders, a file list "
                          f"({', '.join(LIST_SEPARATORS)}) or an .npz file")
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"the eval-data limit must be positive, got {limit}")
        images = _head(images, limit)
        labels = labels[:limit]
    channels = images.array.shape[3] if isinstance(images, ArrayImages) else 3
    return EvalData(
        source=source,
        images=images,
        labels=labels,
        mean=_per_channel("--mean", mean, channels),
        std=_per_channel("--std", std, channels, positive=True),
    )


def top1(model: nn.Module, data: EvalData, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent, in eval mode and without autograd; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.inference_mode():
            for x, y in data.batches(batch_size):
                logits = model(x)
                if not isinstance(logits, torch.Tensor):
                    raise ConfigError(f"--eval-data measures a classifier's top-1; this model gives "
                                      f"{type(logits).__name__} outputs (a detector's or segmenter's)")
                if logits.ndim != 2 or int(y.max()) >= logits.shape[1]:
                    raise ConfigError(
                        f"--eval-data {data.source}: labels go up to {int(y.max())} but the model gives "
                        f"outputs of shape {tuple(logits.shape)}"
                    )
                correct += int((logits.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return 100.0 * correct / len(data)


def _open_npz(source: Path, size: tuple[int, int] | None) -> tuple[ArrayImages, np.ndarray]:
    try:
        loaded = np.load(source, allow_pickle=False)
    except (OSError, ValueError, BadZipFile) as exc:
        raise ConfigError(f"--eval-data {source} is not a readable .npz: {exc}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ConfigError(f"--eval-data {source} holds one array, not an .npz archive with 'x' and 'y'")
    with loaded as archive:
        if "x" not in archive.files or "y" not in archive.files:
            raise ConfigError(f"--eval-data {source} needs arrays 'x' (uint8 NHWC) and 'y' (labels)")
        try:
            x, y = archive["x"], archive["y"]
        except (OSError, ValueError, BadZipFile) as exc:
            raise ConfigError(f"--eval-data {source} is not a readable .npz: {exc}") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] not in (1, 3):
        raise ConfigError(f"--eval-data {source}: 'x' must be uint8 N×H×W×C, C 1 or 3; got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or len(y) == 0:
        raise ConfigError(f"--eval-data {source}: 'y' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    if y.min() < 0:
        raise ConfigError(f"--eval-data {source}: labels must not be negative")
    if size is not None and tuple(x.shape[1:3]) != tuple(size):
        raise ConfigError(
            f"--eval-data {source}: images are {x.shape[1]}×{x.shape[2]}, the model takes {size[0]}×{size[1]}"
        )
    return ArrayImages(x), y.astype(np.int64)


def _open_folder(source: Path, size: tuple[int, int] | None) -> tuple[FolderImages, np.ndarray]:
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(classes):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ConfigError(f"--eval-data {source} has no class folders with images ({suffixes})")
    return FolderImages(tuple(paths), size), np.asarray(labels, dtype=np.int64)


def _open_list(source: Path, size: tuple[int, int] | None) -> tuple[FolderImages, np.ndarray]:
    """Image files and their labels from a list; the folder they are in is found from the first file."""
    try:
        lines = [line for line in source.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--eval-data {source}: cannot read the list: {exc}") from None
    rows = [[cell.strip() for cell in line.split(LIST_SEPARATORS[source.suffix.lower()])] for line in lines]
    file_col, label_col, first = 0, 1, 1
    if rows and not _is_int(rows[0][1] if len(rows[0]) > 1 else ""):  # a header row
        header = [cell.lower() for cell in rows.pop(0)]
        found = next((header.index(name) for name in FILE_COLUMNS if name in header), None)
        if found is None or "label" not in header:
            raise ConfigError(f"--eval-data {source}: the header needs a 'label' column and one of "
                              f"{', '.join(FILE_COLUMNS)}, got {', '.join(header)}")
        file_col, label_col, first = found, header.index("label"), 2
    if not rows:
        raise ConfigError(f"--eval-data {source} lists no images")
    labels = []
    for number, row in enumerate(rows, start=first):
        if len(row) <= max(file_col, label_col) or not _is_int(row[label_col]) or int(row[label_col]) < 0:
            raise ConfigError(f"--eval-data {source}: row {number} needs a file and a non-negative integer label, "
                              f"got {' | '.join(row)}")
        labels.append(int(row[label_col]))
    root = next((folder for folder in (source.parent, source.with_suffix(""))
                 if (folder / rows[0][file_col]).is_file()), None)
    if root is None:
        raise ConfigError(f"--eval-data {source}: {rows[0][file_col]} is neither in {source.parent} "
                          f"nor in {source.with_suffix('')}")
    paths = tuple(root / row[file_col] for row in rows)
    missing = next((path for path in paths if not path.is_file()), None)
    if missing is not None:
        raise ConfigError(f"--eval-data {source}: listed image {missing} does not exist")
    return FolderImages(paths, size), np.asarray(labels, dtype=np.int64)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _head(images: ArrayImages | FolderImages, limit: int) -> ArrayImages | FolderImages:
    if isinstance(images, ArrayImages):
        return ArrayImages(images.array[:limit])
    return FolderImages(images.paths[:limit], images.size)


def _per_channel(flag: str, values: Sequence[float], channels: int, positive: bool = False) -> tuple[float, ...]:
    """One value per channel; a single value applies to all."""
    result = tuple(float(v) for v in values)
    if len(result) == 1:
        result = result * channels
    if len(result) != channels:
        raise ConfigError(f"{flag} needs 1 or {channels} values (one per channel), got {len(result)}")
    if positive and any(v <= 0 for v in result):
        raise ConfigError(f"{flag} values must be positive, got {result}")
    return result
