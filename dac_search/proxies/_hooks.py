"""Forward hooks that are always removed, and the eval-mode guard every proxy runs under."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.utils.hooks import RemovableHandle


@contextmanager
def removing(handles: list[RemovableHandle]) -> Iterator[list[RemovableHandle]]:
    """Yield ``handles`` (filled by the caller) and remove every one of them on the way out."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (BatchNorm on running statistics) and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
