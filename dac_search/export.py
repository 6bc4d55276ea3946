"""Write a model to ONNX or TorchScript, atomically: a file is either whole or absent."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from dac_search.errors import ConfigError

FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}
ONNX_OPSET = 17


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed over it on success, removed on failure."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"output {target} is a directory")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot write {target}: directory {target.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def format_of(path: str | os.PathLike[str], explicit: str | None = None) -> str:
    if explicit:
        return explicit
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"cannot tell the format of {path}: use a name ending in {', '.join(FORMATS)}")
    return FORMATS[suffix]


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int]) -> Path:
    """ONNX with a dynamic batch dimension (TorchScript-based exporter: no extra dependencies)."""
    sample = torch.zeros(tuple(int(v) for v in input_shape))
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (sample,), str(tmp), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    return Path(path)


def export_torchscript(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int]) -> Path:
    """A traced TorchScript file, loadable with torch.jit.load without this package."""
    sample = torch.zeros(tuple(int(v) for v in input_shape))
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model.eval(), sample), str(tmp))
    return Path(path)


def export_model(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int],
                 fmt: str | None = None) -> Path:
    fmt = format_of(path, fmt)
    if fmt == "onnx":
        return export_onnx(model, path, input_shape)
    if fmt == "torchscript":
        return export_torchscript(model, path, input_shape)
    raise ConfigError(f"unknown export format {fmt!r}; choose onnx or torchscript")
