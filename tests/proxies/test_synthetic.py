"""Synthetic inputs: distilled ones match the BatchNorm statistics far better than noise, impressions make a
BN-free classifier confident; cached, reproducible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dac_search.errors import ConfigError
from dac_search.proxies import DistillSettings, bn_statistics_mismatch, synthetic_inputs
from dac_search.proxies.synthetic import ImpressionSettings, resolve_kind
from dac_search.zoo import load_model
from tests.conftest import NOBN_SPEC

from .conftest import FAST_DISTILL, SHAPE


def test_distilled_inputs_match_batchnorm_statistics_better_than_gaussian(resnet20: nn.Module,
                                                                         distilled: torch.Tensor) -> None:
    gaussian = synthetic_inputs(resnet20, SHAPE, "gaussian", n=16, seed=0)
    noise, matched = bn_statistics_mismatch(resnet20, gaussian), bn_statistics_mismatch(resnet20, distilled)
    assert noise > 0.5  # measured 0.77: Gaussian pixels are far from what the BatchNorms remember
    assert matched < 0.1  # measured 0.074 after the 20 short test steps (0.017 after the default 50)
    assert matched < noise / 10
    assert distilled.shape == (16, 3, 32, 32)


def test_distilled_inputs_are_cached_and_reproducible(resnet20: nn.Module, distilled: torch.Tensor,
                                                       synthetic_cache: Path, tmp_path: Path) -> None:
    files = list(synthetic_cache.glob("*.pt"))
    assert len(files) == 1
    again = synthetic_inputs(resnet20, SHAPE, "distilled", n=16, seed=0, cache_dir=synthetic_cache,
                             settings=FAST_DISTILL)
    assert torch.equal(again, distilled)  # read back from the cache
    small = DistillSettings(steps=3)
    first = synthetic_inputs(resnet20, SHAPE, "distilled", n=4, seed=7, cache_dir=tmp_path / "a", settings=small)
    second = synthetic_inputs(resnet20, SHAPE, "distilled", n=4, seed=7, cache_dir=tmp_path / "b", settings=small)
    assert torch.allclose(first, second, atol=1e-5)  # made twice from the seed alone
    other = synthetic_inputs(resnet20, SHAPE, "distilled", n=4, seed=8, cache_dir=tmp_path / "a", settings=small)
    assert not torch.allclose(first, other)
    jittered = DistillSettings(steps=3, jitter=2)
    shaken = synthetic_inputs(resnet20, SHAPE, "distilled", n=4, seed=7, cache_dir=tmp_path / "a", settings=jittered)
    assert not torch.allclose(first, shaken)
    assert torch.allclose(shaken, synthetic_inputs(resnet20, SHAPE, "distilled", n=4, seed=7,
                                                   cache_dir=tmp_path / "c", settings=jittered), atol=1e-5)
    assert len(list((tmp_path / "a").glob("*.pt"))) == 3
    assert not list((tmp_path / "a").glob(".*"))  # written atomically: no temp files left


def test_more_images_than_one_batch_holds_are_made_batch_by_batch(resnet20: nn.Module, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from dac_search.proxies import synthetic

    small = DistillSettings(steps=2)
    monkeypatch.setattr(synthetic, "BATCH_PIXELS", 4 * 32 * 32)  # four images a batch
    made = synthetic_inputs(resnet20, SHAPE, "distilled", n=10, seed=3, cache_dir=tmp_path, settings=small)
    assert made.shape == (10, 3, 32, 32) and len(list(tmp_path.glob("*.pt"))) == 3  # 4 + 4 + 2, each cached
    assert torch.equal(made[:4], synthetic_inputs(resnet20, SHAPE, "distilled", n=4, seed=3, cache_dir=tmp_path,
                                                   settings=small))  # the first batch is the seed's own set
    assert not torch.allclose(made[:4], made[4:8])  # the next batch has a seed of its own


def test_damaged_cache_file_is_replaced(resnet20: nn.Module, tmp_path: Path) -> None:
    small = DistillSettings(steps=2)
    made = synthetic_inputs(resnet20, SHAPE, "distilled", n=2, seed=1, cache_dir=tmp_path, settings=small)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"garbage")
    remade = synthetic_inputs(resnet20, SHAPE, "distilled", n=2, seed=1, cache_dir=tmp_path, settings=small)
    assert torch.allclose(made, remade, atol=1e-5)
    assert torch.load(path, weights_only=True)["inputs"].shape == (2, 3, 32, 32)


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DAC_SEARCH_CACHE", str(tmp_path))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    synthetic_inputs(model, (1, 3, 8, 8), "distilled", n=2, settings=DistillSettings(steps=1))
    assert len(list((tmp_path / "synthetic").glob("*.pt"))) == 1


def test_gaussian_is_seeded_and_bad_requests_are_refused(resnet20: nn.Module) -> None:
    a = synthetic_inputs(resnet20, SHAPE, "gaussian", n=3, seed=5)
    assert torch.equal(a, synthetic_inputs(resnet20, SHAPE, "gaussian", n=3, seed=5))
    with pytest.raises(ConfigError, match="unknown synthetic input kind"):
        synthetic_inputs(resnet20, SHAPE, "uniform")
    with pytest.raises(ConfigError, match="no BatchNorm"):
        synthetic_inputs(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), "distilled", n=2, settings=DistillSettings(steps=1))


def test_auto_picks_batchnorm_statistics_where_the_model_has_them() -> None:
    from torchvision.ops import FrozenBatchNorm2d

    with_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    frozen = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4))  # torchvision's detection backbones
    untracked = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert resolve_kind(with_bn, "auto") == resolve_kind(frozen, "auto") == "distilled"
    assert resolve_kind(untracked, "auto") == resolve_kind(nn.Conv2d(3, 4, 3), "auto") == "impressions"
    assert resolve_kind(with_bn, "gaussian") == "gaussian"
    frozen.eval()[1].running_mean.fill_(0.3)
    assert bn_statistics_mismatch(frozen, torch.randn(4, 3, 8, 8)) > 0


def test_impressions_make_a_bn_free_net_confident_about_many_classes(nobn_weights: Path, tmp_path: Path) -> None:
    """The real BN-free CIFAR-10 net: noise gives unsure, alike outputs; impressions, confident and diverse."""
    model = load_model(NOBN_SPEC, nobn_weights)
    settings = ImpressionSettings(steps=60)
    made = synthetic_inputs(model, SHAPE, "auto", n=20, seed=0, cache_dir=tmp_path, settings=settings)
    with torch.no_grad():
        noise = model(synthetic_inputs(model, SHAPE, "gaussian", n=20)).softmax(1)
        impressed = model(made).softmax(1)
    assert float(noise.max(1).values.mean()) < 0.8
    assert float(impressed.max(1).values.mean()) > 0.95
    assert len(set(impressed.argmax(1).tolist())) == 10  # every class: 20 images, two per class
    assert len(set(noise.argmax(1).tolist())) < 10
    assert float(made.std()) < 3  # the priors keep pixels within a few stds of the data's
    assert torch.equal(made, synthetic_inputs(model, SHAPE, "impressions", n=20, seed=0, cache_dir=tmp_path,
                                              settings=settings))  # cached


def test_impressions_need_a_classifier() -> None:
    with pytest.raises(ConfigError, match="impressions need a classifier's logits"):
        synthetic_inputs(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), "impressions", n=2, settings=ImpressionSettings(steps=1))
    with pytest.raises(ConfigError, match="take ImpressionSettings"):
        synthetic_inputs(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), "impressions", n=2, settings=DistillSettings(steps=1))
