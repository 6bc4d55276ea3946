"""A plan's reconstructed network, made once: cached on disk by what shapes it, resumed after a cut-off.

The cache file holds the weights after the last region fitted (``<key>.partial.pt``) until the whole
reconstruction is done (``<key>.pt``); both are written atomically, read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dac_search.atomic import atomic_path
from dac_search.reconstruction.engine import Checkpoint, OnStep, Saver, reconstruct
from dac_search.reconstruction.settings import ReconstructionSettings


def _read(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # absent, damaged or foreign: made again rather than trusted
        return None


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def file_saver(partial: Path) -> Saver:
    """Checkpoints in ``partial``: a run cut off after a region resumes after it."""
    def load() -> Checkpoint | None:
        data = _read(partial)
        return None if data is None else Checkpoint(int(data["done"]), data["state"])

    return Saver(load, lambda c: _write(partial, {"done": c.done, "state": c.state}))


def rebuild(original: nn.Module, built: nn.Module, images: torch.Tensor, settings: ReconstructionSettings,
            cache: Path | None, on_step: OnStep | None = None) -> nn.Module:
    """``built`` (the plan's float network, closed form) reconstructed as ``settings`` say, from ``cache``
    when it holds the result (``cache``: a file path without suffix; None: no cache, no resume)."""
    if not settings.trains:
        return built
    if cache is not None:
        done = _read(cache.with_suffix(".pt"))
        if done is not None and done.get("state", {}).keys() == built.state_dict().keys():
            built.load_state_dict(done["state"])
            return built.eval()
    partial = None if cache is None else cache.with_suffix(".partial.pt")
    model = reconstruct(original, built, images, settings, on_step=on_step,
                        saver=None if partial is None else file_saver(partial))
    if cache is not None:
        _write(cache.with_suffix(".pt"), {"state": model.state_dict()})
        partial.unlink(missing_ok=True)  # type: ignore[union-attr]
    return model
