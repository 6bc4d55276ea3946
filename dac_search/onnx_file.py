"""A model written as ONNX: one definition, used by every export and by the int8 quantizer's input."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dac_search.atomic import atomic_path

ONNX_OPSET = 17


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int]) -> Path:
    """ONNX with a dynamic batch dimension (TorchScript-based exporter: no extra dependencies)."""
    sample = torch.zeros(tuple(int(v) for v in input_shape))
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (sample,), str(tmp), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    return Path(path)
