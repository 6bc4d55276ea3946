"""Fixtures for the proxy tests: ResNet-20 with real weights and small synthetic batches, made once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from dac_search.proxies import DistillSettings, synthetic_inputs
from dac_search.zoo import load_model

SHAPE = (1, 3, 32, 32)
FAST_DISTILL = DistillSettings(steps=20, lr=0.25)  # enough to beat Gaussian by far, in seconds


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    """On a shared 2-core machine one torch thread is several times faster than two fighting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def resnet20(hub_cache: Path) -> nn.Module:
    return load_model("cifar10-resnet20")


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="session")
def distilled(resnet20: nn.Module, synthetic_cache: Path) -> torch.Tensor:
    """16 distilled inputs for ResNet-20 (cached in a session temp dir)."""
    return synthetic_inputs(resnet20, SHAPE, "distilled", n=16, seed=0, cache_dir=synthetic_cache,
                            settings=FAST_DISTILL)
