"""One conversion to LiteRT (``.tflite``) by litert-torch, quiet: float models (``export.formats``) and int8
models (``int8_tflite``) alike. The device needs only ``ai_edge_litert`` and numpy to run the file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dac_search.atomic import atomic_path
from dac_search.errors import ConfigError
from dac_search.quiet import quiet_tools

LITERT_EXTRA = "pip install 'dac-search[litert]'"


@contextlib.contextmanager
def quiet_litert() -> Iterator[None]:
    """The converter's chatter: its progress lines, native INFO lines and the oneDNN notice on stderr, a
    training-mode warning on the root logger, and a deprecation warning torch logs while torchao is imported."""
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    with quiet_tools("torch.utils._pytree"):
        yield


def litert_torch() -> Any:
    """The litert-torch module, or one line saying how to install it."""
    try:
        with quiet_litert():
            import litert_torch as module
    except ImportError:
        raise ConfigError(
            f"LiteRT models are converted by litert-torch, which is not installed: {LITERT_EXTRA}"
        ) from None
    return module


def convert_to_tflite(model: nn.Module, sample: torch.Tensor, path: str | os.PathLike[str],
                      quant_config: Any = None) -> Path:
    """``model`` traced on ``sample`` (N,C,H,W as in torch: the converter adds the layout changes), written
    atomically."""
    converter = litert_torch()
    with atomic_path(path) as tmp, quiet_litert(), torch.no_grad():
        converter.convert(model, (sample,), quant_config=quant_config).export(str(tmp))
    return Path(path)
