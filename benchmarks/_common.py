"""Shared by the benchmarks: the real CIFAR-10 test images, real top-1 of a plan, markdown tables.

Real images are used here only to *measure*; the proxies, corrections and allocators never see them.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dac_search.plan import RankPlan
from dac_search.proxies.apply import build_model, decompose_model
from dac_search.zoo import load_model

ASSETS = Path(os.environ.get("DAC_SEARCH_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
INPUT_SHAPE = (1, 3, 32, 32)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="cifar10-resnet20,cifar10-resnet56", help="comma list of CIFAR models")
    parser.add_argument("--limit", type=int, default=None, help="real test images to use (default: all 5000)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is faster than 2 on a shared 2-core machine)")


def split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@lru_cache(maxsize=2)
def cifar_test(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared CIFAR-10 test images, normalised as the checkpoints expect, and their labels."""
    path = ASSETS / "cifar10" / "cifar10_test_a.npz"
    if not path.exists():
        raise SystemExit(f"CIFAR-10 test images not found at {path} (set DAC_SEARCH_ASSETS)")
    data = np.load(path)
    x = torch.from_numpy(data["x"][:limit]).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x, torch.from_numpy(data["y"][:limit]).long()


def top1(model: nn.Module, limit: int | None = None, batch: int = 100) -> float:
    """Top-1 accuracy in percent on the shared test images."""
    x, y = cifar_test(limit)
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((predictions == y).double().mean()) * 100


@lru_cache(maxsize=4)
def _model(spec: str) -> nn.Module:
    return load_model(spec)


def real_top1(model_spec: str, plan: RankPlan | None, limit: int | None = None, *, dense: bool = True) -> float:
    """Real top-1 of the model a plan names, rebuilt from the plan alone (its correction included).

    ``dense``: run the factorised layers as the dense convs they equal (PyTorch's depthwise convs are
    4x slower than the original model on CPU); ``check_dense`` shows it changes nothing.
    """
    model = _model(model_spec)
    return top1(model if plan is None else build_model(model, plan, dense=dense), limit)


def check_dense(model_spec: str, plan: RankPlan, images: int = 200) -> float:
    """Largest logit difference between the factorised model and its dense equivalent on real images."""
    model = _model(model_spec)
    x, _ = cifar_test(images)
    with torch.no_grad():
        return float((decompose_model(model, plan)(x) - build_model(model, plan, dense=True)(x)).abs().max())


def markdown(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def method_counts(plan: RankPlan) -> str:
    """How many layers each method takes in a plan, most first, and how many run in int8:
    ``dac 30, spatial 9, prune 3; int8 40``."""
    counts = Counter(choice.method for choice in plan.layers.values())
    text = ", ".join(f"{method} {n}" for method, n in counts.most_common())
    int8 = len(plan.int8_layers)
    return f"{text}; int8 {int8}" if int8 and text else (f"int8 {int8}" if int8 else text)
