"""Pretrained weights: fetched through torch.hub's cache and hash checked; files loaded with weights_only=True.

``--weights`` is a state-dict file or, torchvision's convention, a weights name (``IMAGENET1K_V1``,
``DEFAULT``, ``ResNet18_Weights.IMAGENET1K_V1``) for torchvision models.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dac_search.errors import ModelLoadError, WeightsUnavailableError


def hub_checkpoint_path(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A weights name as torchvision spells them: an upper-case member, optionally after its enum's name.
_WEIGHTS_NAME = re.compile(r"(?:[A-Za-z0-9_]+_Weights\.)?[A-Z][A-Z0-9_]*")


def weights_name(weights: str | os.PathLike[str] | None) -> str | None:
    """``weights`` when it is a weights name rather than a file (a file so named is ``./NAME``)."""
    if isinstance(weights, str) and _WEIGHTS_NAME.fullmatch(weights):
        return weights
    return None


def url_hash_prefix(url: str) -> str:
    """The sha256 prefix in a checkpoint's file name (``resnet18-f37072fd.pth``), or "" when it has none."""
    stem = os.path.basename(url).split(".")[0]
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    return prefix if re.fullmatch(r"[0-9a-f]{6,64}", prefix) else ""


# Full sha256 of checkpoint files whose bytes this project has checked itself. Upstream names carry only a
# prefix (8 hex digits: 32 bits, which a planted file can be ground to match); for these files the whole
# digest is required. Files not listed (resnet32/44/110, other torchvision weights) are checked against
# their name's prefix, as torch.hub itself does.
FULL_SHA256 = {
    "resnet20-12fca82f.th": "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    "resnet56-4bfd9763.th": "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
    "mobilenet_v2-b0353104.pth": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
}


def fetch_checkpoint(url: str, sha256_prefix: str, what: str = "the weights") -> Path:
    """The cached file for ``url``, downloading it when missing; its sha256 must be the full digest pinned
    in ``FULL_SHA256``, else start with the prefix.

    Offline, the error names the one file to fetch and where torch.hub's cache expects it.
    """
    name = os.path.basename(url)
    expected = FULL_SHA256.get(name, sha256_prefix)
    path = hub_checkpoint_path(name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=sha256_prefix or None, progress=False)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = " ".join(str(getattr(exc, "reason", exc)).split())
            raise WeightsUnavailableError(
                f"cannot download {what} ({reason}): put {url} at {path} (torch.hub's checkpoint cache), "
                f"or pass --weights PATH") from None
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise WeightsUnavailableError(
            f"{path} has sha256 {actual}, expected {expected}{'' if len(expected) == 64 else '...'}: "
            f"delete it to download again")
    return path


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file: a ``state_dict`` key and ``module.`` prefixes handled."""
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"weights file not found: {path}") from None
    except pickle.UnpicklingError:
        raise ModelLoadError(f"cannot read weights {path}: it holds objects that weights_only=True refuses "
                             f"to load; save a plain state_dict") from None
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise ModelLoadError(f"cannot read weights {path}: not a PyTorch checkpoint ({type(exc).__name__})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def apply_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load strictly, reporting the first mismatches in one line."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = str(exc).strip().splitlines()[-1].strip()
        raise ModelLoadError(f"weights {source} do not fit the model: {detail}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:3])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:3])}")
    if problems:
        raise ModelLoadError(f"weights {source} do not fit the model: {'; '.join(problems)}")
