"""Write a model to ONNX, TorchScript or LiteRT, atomically: a file is either whole or absent."""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dac_search.atomic import atomic_path
from dac_search.errors import ConfigError
from dac_search.int8_model import Int8Model, check_int8_runtime
from dac_search.litert_convert import convert_to_tflite
from dac_search.onnx_file import export_onnx
from dac_search.plan import RankPlan

FORMATS = {".onnx": "onnx", ".ts": "torchscript", ".pt": "pt", ".tflite": "tflite"}
EXPORT_FORMATS = ("onnx", "torchscript", "pt", "tflite")
PT_FORMAT = "dac-search/export@1"


def format_of(path: str | os.PathLike[str], explicit: str | None = None) -> str:
    if explicit:
        return explicit
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"cannot tell the format of {path}: use a name ending in {', '.join(FORMATS)}")
    return FORMATS[suffix]


def export_torchscript(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int]) -> Path:
    """A traced TorchScript file, loadable with torch.jit.load without this package."""
    sample = torch.zeros(tuple(int(v) for v in input_shape))
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model.eval(), sample, check_trace=False), str(tmp))
    return Path(path)


def export_tflite(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int]) -> Path:
    """A LiteRT (.tflite) flatbuffer, converted here by litert-torch."""
    return convert_to_tflite(model.eval(), torch.zeros(tuple(int(v) for v in input_shape)), path)


def export_pt(model: nn.Module, path: str | os.PathLike[str], plan: RankPlan, spec: str,
              weights: str | None = None, provenance: Mapping[str, Any] | None = None) -> Path:
    """A ``torch.save`` dict: how to rebuild the architecture (model spec + plan) and the decomposed weights.

    Read back with ``load_pt_export``; needs this package, but no pickled code (``weights_only=True``).
    """
    record = {
        "format": PT_FORMAT,
        "model": spec,
        "weights": weights,
        "input_shape": list(plan.input_shape or ()),
        "plan": plan.to_dict(),
        **(provenance or {}),
        "state_dict": model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return Path(path)


def load_pt_export(path: str | os.PathLike[str], model: str | None = None) -> nn.Module:
    """Rebuild a ``pt`` export: the architecture from its spec and plan, every weight from the file.
    ``model``: the spec named again, where the recorded one runs code (``dac_search.zoo.trusted_spec``)."""
    from dac_search.decompose import replace_layers
    from dac_search.zoo import load_model, trusted_spec

    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(record, dict) or record.get("format") != PT_FORMAT:
        raise ConfigError(f"{path} is not a dac-search pt export ({PT_FORMAT})")
    spec = trusted_spec(str(record["model"]), model, str(path))
    built = replace_layers(load_model(spec, weights=record["weights"]), record["plan"])  # every weight from the file
    for key in record["state_dict"]:  # a correction may have given a factor the bias it lacked
        owner, _, name = key.rpartition(".")
        module = built.get_submodule(owner) if owner else built
        if name == "bias" and isinstance(module, nn.Conv2d) and module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.out_channels))
    built.load_state_dict(record["state_dict"])
    return built.eval()


def export_for(runtime: str, model: nn.Module, path_stem: Path, input_shape: Sequence[int]) -> Path:
    """``model`` in the file format ``runtime`` loads (the suffix is added to ``path_stem``, whose own dots stay:
    ``best-0.4x`` gives ``best-0.4x.onnx``); an int8 model (``dac_search.int8_model.Int8Model``) as the
    quantized file, for a runtime that has int8 kernels."""
    def named(suffix: str) -> Path:
        return path_stem.with_name(path_stem.name + suffix)

    if isinstance(model, Int8Model):
        check_int8_runtime(runtime)
        if runtime == "litert":
            return model.write_tflite(named(".tflite"))
        return model.write_onnx(named(".onnx"))
    if runtime == "torch":
        return export_torchscript(model, named(".pt"), input_shape)
    if runtime == "litert":
        return export_tflite(model, named(".tflite"), input_shape)
    return export_onnx(model, named(".onnx"), input_shape)


def export_model(model: nn.Module, path: str | os.PathLike[str], plan: RankPlan, spec: str,
                 weights: str | None = None, fmt: str | None = None,
                 provenance: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (already decomposed by ``plan``) in the format ``fmt`` or the one ``path`` names."""
    fmt = format_of(path, fmt)
    shape = plan.input_shape
    if isinstance(model, Int8Model):
        if fmt == "onnx":
            return model.write_onnx(path)  # the QDQ model that was scored and timed
        if fmt == "tflite":
            return model.write_tflite(path)  # the same layers, scheme and calibration, for LiteRT
        if fmt != "pt":
            raise ConfigError("the plan has int8 layers, which dac-search writes as ONNX (QDQ) or LiteRT "
                              "(.tflite) only; use --format onnx or tflite, or pt for the float weights and the plan")
        model = model.model  # the float weights; the plan's quantization rebuilds the int8 model
    if fmt == "onnx":
        return export_onnx(model, path, shape)
    if fmt == "torchscript":
        return export_torchscript(model, path, shape)
    if fmt == "tflite":
        return export_tflite(model, path, shape)
    if fmt == "pt":
        return export_pt(model, path, plan, spec, weights, provenance)
    raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
