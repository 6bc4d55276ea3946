"""Synthetic inputs for the data-free proxies and corrections: three kinds, none of them data.

- ``distilled`` (Cai et al., ZeroQ, CVPR 2020): optimised until the batch statistics at every BatchNorm
  (torchvision's ``FrozenBatchNorm2d`` included) match the running statistics stored in training, the
  model's own memory of its data.
- ``impressions``, for models without BatchNorm (the DAC paper's VGG16): optimised until the classifier
  is confident about a different class for each image, under natural-image priors (total variation, a
  small L2, jitter and flips): the non-BN terms of DeepInversion (Yin et al. 2020), the class
  impressions of zero-shot distillation (Nayak et al. 2019).
- ``gaussian``: noise, the fallback for a model that is neither.

``auto`` (the default everywhere) is ``distilled`` where the model has BatchNorm statistics,
``impressions`` where not, and ``gaussian`` for a model that has none and is no classifier: decided by
the model alone, so a plan rebuilds from itself. Optimised inputs
are made once per (model weights, kind, n, seed, shape, settings), reproducible from the seed, and
cached on disk, so a search, a benchmark and ``decompose_model`` all see the same images.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dac_search.atomic import atomic_path
from dac_search.errors import ConfigError
from dac_search.progress import OnProgress, part_of
from dac_search.proxies._hooks import eval_mode, removing

KINDS = ("distilled", "impressions", "gaussian")
AUTO = "auto"  # distilled where the model has BatchNorm statistics, impressions where not
_FORMAT = "dac-search/synthetic@2"  # bump when the distillation changes, so old caches are not reused
# Pixels (per channel) optimised in one batch: 128 images at 224x224. 512 at once held over 24 GiB for
# MobileNet-V2's backward pass; more images are made in batches of this size, each its own seed.
BATCH_PIXELS = 128 * 224 * 224
SEED_STRIDE = 1_000_003  # batch i of seed s has seed s + i * SEED_STRIDE: batch 0 is the set of seed s itself


@dataclass(frozen=True)
class DistillSettings:
    """How distilled inputs are optimised; part of the cache key.

    50 steps, not hundreds: a corrected ResNet-20 measured better on real images after 50 steps than
    after 100 or 200 (closer BatchNorm statistics, less natural images). ``jitter``: each step sees the
    batch rolled by up to that many pixels and flipped at random (DeepInversion's jitter); off by
    default, as it measured within seed-to-seed noise (+1 point at 60% FLOPs on 2,000 test images over
    3 seeds, -0.3 to -0.9 on all 5,000 with seed 0).
    """

    steps: int = 50
    lr: float = 0.25
    jitter: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.jitter < 0:
            raise ConfigError(f"distillation needs steps >= 1, lr > 0, jitter >= 0, got {self}")


@dataclass(frozen=True)
class ImpressionSettings:
    """How class impressions are optimised; part of the cache key.

    ``tv`` and ``l2`` weigh the priors against the cross-entropy (per-pixel means of squared neighbour
    differences and of squared values, in the model's normalised input units); ``jitter``: the batch is
    rolled by up to that many pixels and flipped at random at every step, so no pixel pattern alone
    carries the class.
    """

    steps: int = 200
    lr: float = 0.1
    tv: float = 1.0
    l2: float = 0.01
    jitter: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.jitter < 0 or self.tv < 0 or self.l2 < 0:
            raise ConfigError(f"impressions need steps >= 1, lr > 0 and non-negative priors, got {self}")


Settings = DistillSettings | ImpressionSettings


def cache_root() -> Path:
    """``$DAC_SEARCH_CACHE``, else ``~/.cache/dac-search``."""
    root = os.environ.get("DAC_SEARCH_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "dac-search"


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the state dict (names, dtypes, shapes, bytes): same weights, same inputs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers that hold running statistics to match: ``nn.BatchNorm*d`` tracking them, and
    torchvision's ``FrozenBatchNorm2d`` (the backbones of its detection models), known by its buffers."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is not None and m.running_var is not None:
                out.append(m)
        elif type(m).__name__ == "FrozenBatchNorm2d" and hasattr(m, "running_var") and hasattr(m, "eps"):
            out.append(m)
    return out


def resolve_kind(model: nn.Module, kind: str, input_shape: Sequence[int] | None = None) -> str:
    """``auto`` made concrete for ``model``; any other kind checked and returned as it is.

    Without BatchNorm, impressions need a classifier: given ``input_shape``, a model whose output is not
    classifier logits (a detector's heads) gets gaussian inputs instead.
    """
    if kind == AUTO:
        if batchnorms(model):
            return "distilled"
        if input_shape is not None:
            with eval_mode(model), torch.no_grad():
                try:
                    _logits(model, torch.zeros((1, *(int(v) for v in input_shape[1:]))))
                except ConfigError:
                    return "gaussian"
        return "impressions"
    if kind not in KINDS:
        raise ConfigError(f"unknown synthetic input kind {kind!r}; choose {AUTO} or one of {', '.join(KINDS)}")
    return kind


def _standardised_mismatch(x: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    """Mean over channels of the squared gaps in mean and std, in units of the running std (scale-free)."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims)
    std = (x.var(dims, unbiased=False) + bn.eps).sqrt()
    running_std = (bn.running_var + bn.eps).sqrt()
    return (((mean - bn.running_mean) / running_std) ** 2 + (std / running_std - 1) ** 2).mean()


def _mismatch_pass(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Run ``model`` once and average the standardised mismatch over its BatchNorm layers."""
    layers = batchnorms(model)
    if not layers:
        raise ConfigError("the model has no BatchNorm with running statistics to distil inputs from; "
                          "use --inputs impressions (or auto, which picks it), or gaussian")
    terms: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        terms.append(_standardised_mismatch(args[0], module))  # type: ignore[arg-type]

    with removing([bn.register_forward_pre_hook(hook) for bn in layers]), eval_mode(model):
        model(inputs)
    return torch.stack(terms).mean()


def bn_statistics_mismatch(model: nn.Module, inputs: torch.Tensor) -> float:
    """How far ``inputs`` are from the data the BatchNorms remember (0 = every mean and std matched)."""
    with torch.no_grad():
        return float(_mismatch_pass(model, inputs))


def _gaussian(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator)


def _jittered(x: torch.Tensor, jitter: int, generator: torch.Generator) -> torch.Tensor:
    """The image batch rolled by a random shift of up to ``jitter`` pixels, flipped left-right half the time."""
    if jitter == 0 or x.dim() != 4:
        return x
    dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
    out = torch.roll(x, (dy, dx), (2, 3))
    return out.flip(3) if float(torch.rand((), generator=generator)) < 0.5 else out


def _distill(model: nn.Module, shape: tuple[int, ...], seed: int, settings: DistillSettings,
             on_progress: OnProgress | None) -> torch.Tensor:
    """Adam on the pixels, cosine-decayed, from Gaussian noise; gradients reach the inputs only."""
    x = _gaussian(shape, seed).requires_grad_(True)
    generator = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.Adam([x], lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    with torch.enable_grad():  # callers may have switched gradients off globally
        for step in range(settings.steps):
            loss = _mismatch_pass(model, _jittered(x, settings.jitter, generator))
            (x.grad,) = torch.autograd.grad(loss, [x])  # not loss.backward(): the model's .grad stays untouched
            optimizer.step()
            schedule.step()
            if on_progress is not None:
                on_progress(step + 1, settings.steps)
    return x.detach()


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output as classifier logits (N, classes), or a clear error for any other output."""
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0] or out.shape[1] < 2:
        raise ConfigError("impressions need a classifier's logits (batch x classes) as the model's output; "
                          "use --inputs gaussian for this model")
    return out


def _targets(n: int, classes: int, seed: int) -> torch.Tensor:
    """One class per image, as many different classes as the batch allows, spread by the seed."""
    generator = torch.Generator().manual_seed(seed + 2)
    order = torch.cat([torch.randperm(classes, generator=generator) for _ in range(-(-n // classes))])
    return order[:n]


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels: small for smooth, natural-looking images."""
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()


def _impress(model: nn.Module, shape: tuple[int, ...], seed: int, settings: ImpressionSettings,
             on_progress: OnProgress | None) -> torch.Tensor:
    """Adam on the pixels, cosine-decayed, from Gaussian noise: cross-entropy to each image's class plus priors."""
    x = _gaussian(shape, seed).requires_grad_(True)
    generator = torch.Generator().manual_seed(seed + 1)
    with eval_mode(model), torch.no_grad():
        classes = _logits(model, x[:1].detach()).shape[1]
    targets = _targets(shape[0], classes, seed)
    optimizer = torch.optim.Adam([x], lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    with torch.enable_grad(), eval_mode(model):
        for step in range(settings.steps):
            logits = _logits(model, _jittered(x, settings.jitter, generator))
            loss = (nn.functional.cross_entropy(logits, targets) + settings.tv * _total_variation(x)
                    + settings.l2 * (x ** 2).mean())
            (x.grad,) = torch.autograd.grad(loss, [x])
            optimizer.step()
            schedule.step()
            if on_progress is not None:
                on_progress(step + 1, settings.steps)
    return x.detach()


def _cache_key(model: nn.Module, kind: str, shape: tuple[int, ...], seed: int, settings: Settings) -> str:
    text = f"{_FORMAT}|{model_fingerprint(model)}|{kind}|{shape}|{seed}|{sorted(asdict(settings).items())}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _load(path: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The cached tensor, or None when missing or unreadable (it is then made again)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None
    inputs = data.get("inputs") if isinstance(data, dict) else None
    if not isinstance(inputs, torch.Tensor) or tuple(inputs.shape) != shape:
        return None
    return inputs


def _save(path: Path, inputs: torch.Tensor) -> None:
    """Write beside the target and rename over it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"inputs": inputs}, tmp)


def synthetic_inputs(model: nn.Module, input_shape: Sequence[int], kind: str = AUTO, n: int = 64,
                     seed: int = 0, cache_dir: str | os.PathLike[str] | None = None, *,
                     settings: Settings | None = None, on_progress: OnProgress | None = None) -> torch.Tensor:
    """``n`` inputs of ``input_shape[1:]`` made without data; optimised ones are cached on disk.

    ``kind``: one of ``KINDS`` or ``auto`` (``resolve_kind``). ``settings``: the optimisation's, of the
    kind's own type (default: its defaults). ``cache_dir``: where the files go (default
    ``cache_root()/synthetic``). Gaussian inputs are cheap and exactly reproducible from the seed, so
    they are not cached. More than ``BATCH_PIXELS`` allow at once are made batch by batch, the first
    batch being the set ``seed`` makes alone. ``on_progress`` counts optimisation steps of all batches.
    """
    kind = resolve_kind(model, kind, input_shape)
    if n < 1:
        raise ConfigError(f"need at least one synthetic input, got n={n}")
    shape = (int(n), *(int(v) for v in input_shape[1:]))
    if kind == "gaussian":
        return _gaussian(shape, seed)
    made_by = {"distilled": (_distill, DistillSettings), "impressions": (_impress, ImpressionSettings)}
    make, settings_type = made_by[kind]
    settings = settings or settings_type()
    if not isinstance(settings, settings_type):
        raise ConfigError(f"{kind} inputs take {settings_type.__name__}, got {type(settings).__name__}")
    per_batch = max(1, BATCH_PIXELS // math.prod(shape[2:]))
    if n > per_batch:  # in batches that fit in memory, each made (and cached) as a set of its own
        starts = range(0, n, per_batch)
        return torch.cat([synthetic_inputs(model, input_shape, kind, min(per_batch, n - start),
                                           seed + index * SEED_STRIDE, cache_dir, settings=settings,
                                           on_progress=part_of(on_progress, index, len(starts)))
                          for index, start in enumerate(starts)])
    directory = Path(cache_dir) if cache_dir is not None else cache_root() / "synthetic"
    path = directory / f"{_cache_key(model, kind, shape, seed, settings)}.pt"
    cached = _load(path, shape)
    if cached is not None:
        return cached
    inputs = make(model, shape, seed, settings, on_progress)  # type: ignore[operator]
    _save(path, inputs)
    return inputs
