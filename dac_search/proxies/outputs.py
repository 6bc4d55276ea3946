"""How far a decomposed model's outputs are from the original's, for outputs of any structure.

A classifier's logits are compared as distributions (KL of the softmax, the measure the proxy was
validated with). Detection and segmentation models give tensors, tuples, dicts or lists of them: each
tensor is a *leaf*, named by its path (``cls_logits``, ``out``, ``1.0``), and judged scale-free on its
own, so a box regression in pixels and a class score in logits weigh alike:

- a leaf the model declares a distribution (``output_distributions``: leaf name -> the dim its softmax
  runs over; set by the zoo for SSD's class scores and for segmentation maps): mean KL per position;
- any other leaf: normalised squared error, ``mean((a - b)^2) / var(a)`` (0: equal, 1: as far off as
  predicting the mean).

The proxy is the mean over leaves. A model with one 2-D output and no declaration is a classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dac_search.errors import ConfigError

DISTRIBUTIONS_ATTRIBUTE = "output_distributions"


@dataclass(frozen=True)
class ProxyScore:
    """``kl``: the distance (mean KL(original || decomposed) for a classifier; see the module doc);
    ``agreement``: argmax agreement in [0, 1] over the distribution outputs, None where there are none."""

    kl: float
    agreement: float | None


def leaves(output: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in ``output`` with its path: ``out``, ``cls_logits``, ``0.1``; a bare tensor is ``output``."""
    if isinstance(output, torch.Tensor):
        return [(prefix or "output", output)]
    if isinstance(output, Mapping):
        items = list(output.items())
    elif isinstance(output, (list, tuple)):
        items = list(enumerate(output))
    else:
        return []  # None, ints, image sizes: nothing to compare
    return [leaf for key, value in items for leaf in leaves(value, f"{prefix}.{key}" if prefix else str(key))]


def distributions_of(model: nn.Module, reference: Any) -> dict[str, int]:
    """The leaves compared as distributions: what the model declares, else a lone 2-D output (a classifier)."""
    declared = getattr(model, DISTRIBUTIONS_ATTRIBUTE, None)
    return dict(declared) if declared is not None else _classifier(leaves(reference))


def _classifier(found: list[tuple[str, torch.Tensor]]) -> dict[str, int]:
    """A lone 2-D output is a classifier's logits, a distribution over dim 1; anything else declares nothing."""
    return {found[0][0]: 1} if len(found) == 1 and found[0][1].dim() == 2 else {}


def compare(reference: Any, output: Any, distributions: Mapping[str, int] | None = None) -> ProxyScore:
    """Distance and agreement of two outputs of the same structure for the same inputs."""
    expected, got = leaves(reference), dict(leaves(output))
    if not expected or [name for name, _ in expected] != list(got):
        raise ConfigError("the decomposed model's outputs do not have the original's structure: "
                          f"{[n for n, _ in expected]} against {list(got)}")
    if distributions is None:
        distributions = _classifier(expected)
    distances, agreements = [], []
    for name, ref in expected:
        out = got[name]
        if name in distributions:
            dim = distributions[name]
            p = F.log_softmax(ref.double().movedim(dim, -1).flatten(0, -2), dim=1)
            q = F.log_softmax(out.double().movedim(dim, -1).flatten(0, -2), dim=1)
            distances.append(max(float(F.kl_div(q, p, log_target=True, reduction="batchmean")), 0.0))
            agreements.append(float((p.argmax(1) == q.argmax(1)).double().mean()))
        else:
            ref64, out64 = ref.double(), out.double()
            spread = float(ref64.var(unbiased=False)) if ref64.numel() > 1 else 0.0
            distances.append(float(((ref64 - out64) ** 2).mean()) / (spread + 1e-12))
    agreement = sum(agreements) / len(agreements) if agreements else None
    return ProxyScore(sum(distances) / len(distances), agreement)
