"""The model proxy scores what it builds; corrections help on real images; decompose_model rebuilds plans."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dac_search import decompose_model
from dac_search.decompose import ChannelConv2d, DacConv2d, SpatialConv2d, decomposable_layers
from dac_search.errors import ConfigError
from dac_search.plan import LayerChoice, RankPlan
from dac_search.proxies import (
    ModelProxy,
    cached_layer_sensitivity,
    default_proxy,
    layer_sensitivity,
    synthetic_inputs,
)

from .conftest import SHAPE


def uniform(model: nn.Module, rank: int, correction: str | None = None) -> RankPlan:
    names = [n for n in decomposable_layers(model) if n != "conv1"]
    return RankPlan({n: LayerChoice("dac", rank, "grouped") for n in names}, "cifar10-resnet20", SHAPE, correction)


def kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    p = F.log_softmax(reference.double(), 1)
    return float(F.kl_div(F.log_softmax(logits.double(), 1), p, log_target=True, reduction="batchmean"))


@pytest.fixture(scope="module")
def mixed_plan() -> RankPlan:
    return RankPlan({"layer1.0.conv1": LayerChoice("dac", 2, "stacked"), "layer2.1.conv2": LayerChoice("spatial", 20),
                     "layer3.0.conv1": LayerChoice("channel", 24)}, "cifar10-resnet20", SHAPE)


@pytest.mark.parametrize("correction", [None, "bias", "refit", "stream"])
def test_score_judges_exactly_the_model_build_returns(resnet20: nn.Module, distilled: torch.Tensor,
                                                      mixed_plan: RankPlan, correction: str | None) -> None:
    proxy = ModelProxy(resnet20, distilled, correction)
    score = proxy.score(mixed_plan)
    built = proxy.build(mixed_plan)
    assert isinstance(built.layer1[0].conv1, DacConv2d) and built.layer1[0].conv1.variant == "stacked"
    assert isinstance(built.layer2[1].conv2, SpatialConv2d) and isinstance(built.layer3[0].conv1, ChannelConv2d)
    with torch.no_grad():
        reference, logits = resnet20(distilled), built(distilled)
    assert score.kl == pytest.approx(kl(reference, logits), rel=1e-3, abs=1e-6)
    assert score.agreement == pytest.approx(float((reference.argmax(1) == logits.argmax(1)).double().mean()))
    assert 0.0 < score.kl and 0.0 <= score.agreement <= 1.0
    assert proxy.score(RankPlan({})) == type(score)(0.0, 1.0)
    assert isinstance(resnet20.layer1[0].conv1, nn.Conv2d)  # the original is left as it was


def test_held_out_scoring_fits_on_one_batch_and_scores_another(resnet20: nn.Module, distilled: torch.Tensor,
                                                                 mixed_plan: RankPlan) -> None:
    fit, scored = distilled[:8], distilled[8:]
    proxy = ModelProxy(resnet20, scored, "refit", fit_inputs=fit)
    assert proxy.held_out and not ModelProxy(resnet20, scored, "refit").held_out
    built = proxy.build(mixed_plan)
    with torch.no_grad():
        assert proxy.score(mixed_plan).kl == pytest.approx(kl(resnet20(scored), built(scored)), rel=1e-3)
        rebuilt = decompose_model(resnet20, RankPlan(mixed_plan.layers, None, SHAPE, "refit"), fit)
        assert torch.allclose(rebuilt(scored), built(scored), atol=1e-5)  # fitted on ``fit`` only


@pytest.mark.parametrize("correction", [None, "refit", "stream"])
def test_a_plan_that_prunes_is_scored_on_the_model_decompose_model_builds(
        resnet20: nn.Module, distilled: torch.Tensor, correction: str | None) -> None:
    fit, scored = distilled[:8], distilled[8:]
    plan = RankPlan({"layer1.0.conv1": LayerChoice("prune", 6), "layer2.1.conv1": LayerChoice("prune", 12),
                     "layer2.1.conv2": LayerChoice("dac", 2, "stacked"), "layer3.0.conv2": LayerChoice("channel", 24)},
                    "cifar10-resnet20", SHAPE, correction)
    proxy = ModelProxy(resnet20, scored, correction, fit_inputs=fit)
    built = decompose_model(resnet20, plan, fit)
    assert built.layer1[0].conv1.out_channels == 6 and built.layer1[0].conv2.in_channels == 6
    with torch.no_grad():
        assert proxy.score(plan).kl == pytest.approx(kl(resnet20(scored), built(scored)), rel=1e-3)
        assert torch.allclose(proxy.build(plan)(scored), built(scored), atol=1e-5)
    table = layer_sensitivity(proxy, ["layer1.1.conv1"], ("prune",), ranks=[4, 12])
    assert table[("layer1.1.conv1", "prune", 4)] > table[("layer1.1.conv1", "prune", 12)] > 0


def test_correction_raises_real_accuracy_at_a_fixed_plan(resnet20: nn.Module, distilled: torch.Tensor,
                                                          cifar_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Real images only check the result here; the corrections are fitted on distilled inputs."""
    x, y = cifar_test[0][:500], cifar_test[1][:500]
    plan = uniform(resnet20, 3)  # about 45% of the FLOPs

    def logits(model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(chunk) for chunk in x.split(100)])

    reference = logits(resnet20)
    accuracy, divergence = {}, {}
    for correction in (None, "bias", "refit"):
        out = logits(ModelProxy(resnet20, distilled, correction).build(plan))
        accuracy[correction] = float((out.argmax(1) == y).double().mean()) * 100
        divergence[correction] = kl(reference, out)
    # measured on these 500 images: 10.8 / 60.4 / 74.0 % top-1 without / bias / refit (original 93.0 %)
    assert accuracy["refit"] > accuracy[None] + 25
    assert accuracy["bias"] > accuracy[None] + 5
    assert divergence["refit"] < divergence["bias"] < divergence[None]


def test_decompose_model_rebuilds_what_the_proxy_judged(resnet20: nn.Module, distilled: torch.Tensor,
                                                    mixed_plan: RankPlan) -> None:
    proxy = ModelProxy(resnet20, distilled, "refit")
    plan = RankPlan(mixed_plan.layers, mixed_plan.model, SHAPE, "refit")
    rebuilt = decompose_model(resnet20, RankPlan.from_dict(plan.to_dict()), distilled)
    with torch.no_grad():
        assert torch.allclose(rebuilt(distilled), proxy.build(plan)(distilled), atol=1e-5)
    plain = decompose_model(resnet20, RankPlan(mixed_plan.layers))
    assert isinstance(plain.layer3[0].conv1, ChannelConv2d) and plain.layer3[0].conv1.expand.bias is None


def test_decompose_model_makes_its_default_inputs_from_the_plan_alone(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """A plan with a correction rebuilds the same model twice: default distilled inputs, cached, seeded."""
    monkeypatch.setenv("DAC_SEARCH_CACHE", str(tmp_path))
    monkeypatch.setattr("dac_search.proxies.correction.DEFAULT_INPUTS", {"kind": "distilled", "n": 8, "seed": 0})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    plan = RankPlan({"3": LayerChoice("dac", 2, "grouped")}, None, (1, 3, 8, 8), "refit")
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        first, second = decompose_model(model, plan)(x), decompose_model(model, plan)(x)
    assert torch.equal(first, second)
    assert len(list((tmp_path / "synthetic").glob("*.pt"))) == 1  # the plan's fit, FIT_SCALE x 8 images
    with pytest.raises(ConfigError, match="no input_shape"):
        decompose_model(model, RankPlan(plan.layers, None, None, "refit"))
    proxy = default_proxy(model, (1, 3, 8, 8), "refit")  # the search's batch of 8, scored on 8 others
    assert proxy.held_out and len(list((tmp_path / "synthetic").glob("*.pt"))) == 3
    as_scored = replace(plan, fit_images=8)  # a plan can name the scoring batch: then it is the proxy's model
    with torch.no_grad():
        assert torch.allclose(proxy.build(plan)(x), decompose_model(model, as_scored)(x), atol=1e-6)
        assert not torch.allclose(first, decompose_model(model, as_scored)(x), atol=1e-4)
    assert not default_proxy(model, (1, 3, 8, 8)).held_out


def test_a_plan_is_fitted_on_more_images_and_positions_than_the_search_scores_with() -> None:
    from dac_search.proxies.correction import FIT_SCALE, RefitSettings, fit_of

    images, settings = fit_of((1, 3, 32, 32))
    assert (images, settings.samples) == (FIT_SCALE * 64, FIT_SCALE * RefitSettings().samples)
    assert fit_of((1, 3, 224, 224))[0] == FIT_SCALE * 8
    assert fit_of((1, 3, 32, 32), 64) == (64, RefitSettings())  # the scoring batch's own settings
    assert fit_of((1, 3, 32, 32), 16)[1].samples == 1024


def test_layer_sensitivity_measures_single_layer_changes(resnet20: nn.Module, distilled: torch.Tensor) -> None:
    proxy = ModelProxy(resnet20, distilled[:8])
    table = layer_sensitivity(proxy, ["layer1.0.conv1", "layer3.2.conv2"], ("dac",), ranks=[1, 4])
    assert set(table) == {(n, "dac", r) for n in ("layer1.0.conv1", "layer3.2.conv2") for r in (1, 4)}
    assert table[("layer1.0.conv1", "dac", 1)] > table[("layer1.0.conv1", "dac", 4)] > 0
    called = layer_sensitivity(proxy, ["layer3.2.conv2"], ("spatial",), ranks=lambda name, method: [10])
    assert list(called) == [("layer3.2.conv2", "spatial", 10)]
    with pytest.raises(ConfigError, match="not a decomposable conv"):
        layer_sensitivity(proxy, ["linear"])


def test_plan_and_proxy_must_agree_on_the_correction(resnet20: nn.Module, distilled: torch.Tensor) -> None:
    proxy = ModelProxy(resnet20, distilled[:4], "bias")
    with pytest.raises(ConfigError, match="correction"):
        proxy.score(RankPlan({"layer1.0.conv1": LayerChoice("dac", 2, "grouped")}, correction="refit"))
    with pytest.raises(ConfigError, match="unknown correction"):
        ModelProxy(resnet20, distilled[:4], "retrain")
    gaussian = synthetic_inputs(resnet20, SHAPE, "gaussian", n=4)
    assert ModelProxy(resnet20, gaussian, None).score({"layers": {"layer1.0.conv1": {"rank": 3}}}).kl > 0


def test_default_batch_keeps_its_pixel_count_as_inputs_grow() -> None:
    from dac_search.proxies.correction import default_input_count

    assert default_input_count((1, 3, 32, 32)) == 64  # CIFAR: every image the refit was tuned on
    assert default_input_count((1, 3, 64, 64)) == 16
    assert default_input_count((1, 3, 224, 224)) == 8  # ImageNet: 8 images hold more pixels than 64 CIFAR ones
    assert default_input_count((1, 3, 8, 8)) == 64


def test_the_cached_table_measures_only_what_it_lacks_and_is_keyed_by_the_proxy(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, resnet20: nn.Module, distilled: torch.Tensor) -> None:
    monkeypatch.setenv("DAC_SEARCH_CACHE", str(tmp_path))
    proxy = ModelProxy(resnet20, distilled[:8])
    counted: list[tuple[int, int]] = []  # (done, total) of each entry measured
    first = cached_layer_sensitivity(proxy, ["layer3.2.conv2"], ("dac",), [1, 4], lambda *c: counted.append(c))
    assert first == layer_sensitivity(proxy, ["layer3.2.conv2"], ("dac",), ranks=[1, 4])
    wider = cached_layer_sensitivity(proxy, ["layer3.2.conv2"], ("dac", "spatial"), [1, 4],
                                     lambda *c: counted.append(c))
    assert counted == [(1, 2), (2, 2)] * 2  # the spatial ones only, counted against what is missing
    assert {k: wider[k] for k in first} == first and len(wider) == 4
    assert cached_layer_sensitivity(proxy, ["layer3.2.conv2"], ("spatial",), [4], lambda *c: counted.append(c)) == {
        ("layer3.2.conv2", "spatial", 4): wider[("layer3.2.conv2", "spatial", 4)]}
    assert len(counted) == 4  # nothing new to measure
    other = ModelProxy(resnet20, distilled[8:16])  # other inputs: another table
    cached_layer_sensitivity(other, ["layer3.2.conv2"], ("dac",), [1], lambda *c: counted.append(c))
    assert counted[-1] == (1, 1)
