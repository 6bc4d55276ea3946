"""``load_model(spec)``: CIFAR ResNets, torchvision classifiers, detectors and segmentation models (as
``tasks`` makes them searchable), TorchScript files, ``file.py:fn``.

``--weights none`` builds the architecture with random weights (torchvision's ``weights=None``): for
latency-only runs, where the values do not matter and nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from dac_search.errors import ConfigError, ModelLoadError
from dac_search.zoo.cifar_resnet import DEPTHS, CifarResNet
from dac_search.zoo.tasks import DEFAULT_SHAPES, as_searchable, detection_models, segmentation_models
from dac_search.zoo.weights import apply_state_dict, fetch_checkpoint, read_state_dict, url_hash_prefix, weights_name

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

_CIFAR_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{}"
# Checkpoint file names of the upstream repository; the hex is the start of each file's sha256.
_CIFAR_CHECKPOINTS = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th", 44: "resnet44-014dd654.th",
                      56: "resnet56-4bfd9763.th", 110: "resnet110-1d1ed7c2.th"}
CIFAR_MODELS = tuple(f"cifar10-resnet{depth}" for depth in DEPTHS)
_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
RANDOM_WEIGHTS = "none"  # --weights none: random initialisation

__all__ = ["CIFAR_MODELS", "RANDOM_WEIGHTS", "default_input_shape", "input_shape_of", "known_models", "load_model",
           "trusted_spec"]


@functools.cache
def _torchvision_models() -> list[str]:
    import torchvision

    classifiers = torchvision.models.list_models(module=torchvision.models)
    return sorted([*classifiers, *detection_models(), *segmentation_models()])


def known_models() -> list[str]:
    return [*CIFAR_MODELS, *_torchvision_models()]


def trusted_spec(recorded: str, given: str | None, where: str) -> str:
    """The model spec a recorded file (a run dir's run.json, a pt export) may be rebuilt from.

    A named model is data; a ``file.py:function``, ``module:function`` or TorchScript spec runs code, and
    a run dir or export someone sent you may name any: it runs only when the user names it again."""
    if given is None:
        if recorded not in known_models():
            raise ConfigError(f"{where} names the model {recorded!r}, which runs code from a file; to run it, "
                              f"name it again: --model {recorded}")
        return recorded
    if given != recorded:
        raise ConfigError(f"--model {given!r} is not the model {where} was made with ({recorded!r})")
    return given


def input_shape_of(spec: str) -> tuple[int, int, int, int]:
    """The input a named model expects, or the one line saying that the user must give it."""
    shape = default_input_shape(spec)
    if shape is None:
        raise ConfigError(f"model {spec!r} needs --input-shape N,C,H,W")
    return shape


def default_input_shape(spec: str) -> tuple[int, int, int, int] | None:
    """The input a named model expects; None where only the user knows (files, callables)."""
    if spec in CIFAR_MODELS:
        return (1, 3, 32, 32)
    if spec in detection_models():
        return DEFAULT_SHAPES.get(spec)  # most detectors take any size: the user says which
    if spec in segmentation_models():
        return None
    if spec in _torchvision_models():
        return (1, 3, 299, 299) if spec == "inception_v3" else (1, 3, 224, 224)
    return None


def load_model(spec: str, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """A model in eval mode from a name, a TorchScript file or ``file.py:callable`` / ``module:callable``.

    ``weights``: a state-dict file to load instead of the model's default pretrained weights, or for a
    torchvision model one of its weights names (``IMAGENET1K_V1``, ``DEFAULT``), torchvision's convention;
    ``none``: random weights, the same ones every time: every build runs from a fixed seed (the caller's
    random state is left as it was), so a spec names one model, and its distilled inputs and proxy tables
    cached on disk serve the next run too.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _load(spec, weights).eval()


def _load(spec: str, weights: str | os.PathLike[str] | None) -> nn.Module:
    if spec in CIFAR_MODELS:
        model: nn.Module = _load_cifar(spec, weights)
    elif ":" in spec and not Path(spec).exists():
        model = _load_callable(spec, weights)
    elif spec.endswith(_TORCHSCRIPT_SUFFIXES) or Path(spec).is_file():
        model = _load_torchscript(spec, weights)
    elif spec in _torchvision_models():
        model = _load_torchvision(spec, weights)
    else:
        close = difflib.get_close_matches(spec, known_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelLoadError(
            f"unknown model {spec!r}{hint}; known: {', '.join(CIFAR_MODELS)}, any torchvision classifier, "
            f"detector or segmentation model (resnet50, mobilenet_v2, ssd300_vgg16, deeplabv3_resnet50, ...), "
            f"a TorchScript file, or path/to/file.py:function")
    return model


def _load_cifar(spec: str, weights: str | os.PathLike[str] | None) -> nn.Module:
    depth = int(spec.removeprefix("cifar10-resnet"))
    model = CifarResNet(depth)
    if weights == RANDOM_WEIGHTS:
        return model
    name = weights_name(weights)
    if name not in (None, "DEFAULT"):
        raise ModelLoadError(f"{spec} has no weights named {name!r}: give DEFAULT or a state-dict file "
                             f"(./{name} for a file of that name)")
    checkpoint = _CIFAR_CHECKPOINTS[depth]
    source = weights if name is None and weights is not None else fetch_checkpoint(
        _CIFAR_URL.format(checkpoint), url_hash_prefix(checkpoint), f"the {spec} weights")
    apply_state_dict(model, read_state_dict(source), str(source))
    return model


def _load_torchvision(spec: str, weights: str | os.PathLike[str] | None) -> nn.Module:
    """Named weights go through torchvision's own builder (which sets what they need, e.g. inception's
    ``transform_input``), once their file is in torch.hub's cache and its hash checked; a file is loaded here."""
    import torchvision

    if weights is not None and weights_name(weights) is None:  # a file, or none
        # a detector's or segmenter's backbone weights would be downloaded otherwise: the file has them all
        extra = {"weights_backbone": None} if spec in (*detection_models(), *segmentation_models()) else {}
        model = torchvision.models.get_model(spec, weights=None, **extra)
        if weights != RANDOM_WEIGHTS:
            apply_state_dict(model, read_state_dict(weights), str(weights))
        return as_searchable(spec, model)
    chosen = _torchvision_weights(spec, weights_name(weights) or "DEFAULT")
    fetch_checkpoint(chosen.url, url_hash_prefix(chosen.url), f"the {spec} weights {chosen}")
    with _weights_only_loads():
        return as_searchable(spec, torchvision.models.get_model(spec, weights=chosen, progress=False))


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """torchvision's weights API reads its file with ``torch.hub.load_state_dict_from_url``, whose default
    is ``weights_only=False`` (a pickle can run code); its builder is kept (it sets what the weights need),
    and only that one load is made ``weights_only=True`` while the model is built."""
    from torchvision.models import _api

    original = _api.load_state_dict_from_url
    _api.load_state_dict_from_url = functools.partial(original, weights_only=True)
    try:
        yield
    finally:
        _api.load_state_dict_from_url = original


def _torchvision_weights(spec: str, name: str) -> WeightsEnum:
    """The member of the model's weights enum that ``name`` names, or one line listing the known ones."""
    import torchvision

    enum = torchvision.models.get_model_weights(spec)
    member = name.removeprefix(f"{enum.__name__}.")
    if member in enum.__members__:
        return enum[member]
    known = list(enum.__members__)
    close = difflib.get_close_matches(member, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ModelLoadError(f"{spec} has no weights named {name!r}{hint}; known: {', '.join(known)}, "
                         f"or a state-dict file")


def _load_torchscript(spec: str, weights: str | os.PathLike[str] | None) -> nn.Module:
    path = Path(spec)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {spec}")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch.jit raises RuntimeError or its own types for non-TorchScript files
        raise ModelLoadError(f"{spec} is not a TorchScript file ({type(exc).__name__}); pass a state dict "
                             f"with --weights and the model as path/to/file.py:function") from None
    _apply_file(spec, model, weights)
    return model


def _load_callable(spec: str, weights: str | os.PathLike[str] | None) -> nn.Module:
    target, _, attribute = spec.rpartition(":")
    factory = _resolve(target, attribute, spec)
    try:
        model = factory()
    except Exception as exc:  # user code: report, don't trace back
        raise ModelLoadError(f"{spec}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    _apply_file(spec, model, weights)
    return model


def _resolve(target: str, attribute: str, spec: str) -> Callable[[], object]:
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ModelLoadError(f"model file not found: {target}")
            name = f"_dac_search_user_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ModelLoadError:
        raise
    except Exception as exc:  # importing user code can raise anything
        raise ModelLoadError(f"cannot import {target}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelLoadError(f"{target} has no callable {attribute!r} (from {spec})")
    return factory


def _apply_file(spec: str, model: nn.Module, weights: str | os.PathLike[str] | None) -> None:
    """A state-dict file onto a model of the user's; weights names belong to torchvision models only."""
    if weights is None or weights == RANDOM_WEIGHTS:
        return
    name = weights_name(weights)
    if name is not None:
        raise ModelLoadError(f"weights {name!r} is a torchvision weights name, and {spec} is not a torchvision "
                             f"model: pass a state-dict file (./{name} for a file of that name)")
    apply_state_dict(model, read_state_dict(weights), str(weights))
