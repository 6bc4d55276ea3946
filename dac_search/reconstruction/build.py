"""A plan's reconstructed network, made once: cached on disk by what shapes it, resumed after a cut-off.

The cache file holds the weights after the last region fitted (``<key>.partial.pt``) until the whole
reconstruction is done (``<key>.pt``); both are written atomically, read with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dac_search.atomic import atomic_path
from dac_search.reconstruction.engine import Checkpoint, OnStep, Saver, reconstruct
from dac_search.reconstruction.rounding import learn_rounding
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


Fit = Callable[[Saver | None], nn.Module]  # a reconstruction (or rounding) of the network, resumable by a saver


def rebuild(built: nn.Module, fit: Fit, cache: Path | None) -> nn.Module:
    """``built`` as ``fit`` makes it (in place), from ``cache`` when that holds the result (``cache``: a
    file path without suffix; None: no cache, no resume)."""
    if cache is not None:
        done = _read(cache.with_suffix(".pt"))
        if done is not None and done.get("state", {}).keys() == built.state_dict().keys():
            built.load_state_dict(done["state"])
            return built.eval()
    partial = None if cache is None else cache.with_suffix(".partial.pt")
    model = fit(None if partial is None else file_saver(partial))
    if cache is not None:
        _write(cache.with_suffix(".pt"), {"state": model.state_dict()})
        partial.unlink(missing_ok=True)  # type: ignore[union-attr]
    return model


def reconstructed(original: nn.Module, built: nn.Module, images: torch.Tensor, settings: ReconstructionSettings,
                  int8_layers: frozenset[str], caches: tuple[Path, Path] | None,
                  on_step: OnStep | None = None) -> nn.Module:
    """``built`` (the plan's float network, closed form) reconstructed as ``settings`` say, then its
    ``int8_layers`` rounded as they say; ``caches``: where each of the two results is kept (None: nowhere)."""
    if settings.steps or settings.logit_steps:
        built = rebuild(built, lambda saver: reconstruct(original, built, images, settings, on_step=on_step,
                                                         saver=saver), caches and caches[0])
    if settings.rounding_steps and int8_layers:
        built = rebuild(built, lambda saver: learn_rounding(original, built, images, int8_layers, settings,
                                                            on_step=on_step, saver=saver), caches and caches[1])
    return built
