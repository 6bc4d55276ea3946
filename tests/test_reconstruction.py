"""Reconstruction on the real ResNet-20: zero steps is the closed form, a plan rebuilds its weights bit for bit,
every kind of changed block gets closer to the original on images it was not fitted on, a cut-off resumes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from dac_search import load_model
from dac_search.errors import PlanError
from dac_search.plan import RECONSTRUCTED_FORMAT, LayerChoice, RankPlan
from dac_search.proxies.apply import decompose_model
from dac_search.proxies.synthetic import synthetic_inputs
from dac_search.reconstruction.engine import fitted_regions
from dac_search.reconstruction.regions import RegionRunner, paired_regions, regions_of, trace
from dac_search.reconstruction.settings import ReconstructionSettings

SHAPE = (1, 3, 32, 32)
QUICK = ReconstructionSettings(steps=30, images=64, batch=32, lr=1e-3)
# one block of each kind: factorised (DAC), pruned (4 of 16 inner channels), removed branch (prune at rank 0)
KINDS = {"layer1.1.conv1": LayerChoice("dac", 1, "grouped"), "layer2.1.conv1": LayerChoice("prune", 4),
         "layer3.1.conv1": LayerChoice("prune", 0)}


@pytest.fixture(scope="module")
def resnet20(hub_cache: Path) -> nn.Module:
    return load_model("cifar10-resnet20").eval()


def plan_of(settings: ReconstructionSettings | None) -> RankPlan:
    return RankPlan(KINDS, "cifar10-resnet20", SHAPE, "refit", fit_images=64, reconstruction=settings)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    one, two = a.state_dict(), b.state_dict()
    return one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_regions_cut_a_resnet_at_its_blocks_and_a_chain_after_every_op(resnet20: nn.Module) -> None:
    for granularity in ("blocks", "ops"):
        regions = regions_of(trace(resnet20).graph, granularity)
        blocks = [r for r in regions if any(m.endswith("conv2") for m in r.modules)]
        assert len(blocks) == 9  # one region per residual block, both convs inside it
        assert all(any(m.endswith("conv1") for m in r.modules) for r in blocks)
    chain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten())
    assert [r.modules for r in regions_of(trace(chain).graph)] == [("0",), ("1",), ("2",), ("3",)]


def test_a_cut_where_the_plan_narrowed_the_tensor_is_joined_to_the_next_region() -> None:
    original = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.ReLU())
    pruned = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3), nn.ReLU())  # a width of 8 kept at 5
    _, _, regions = paired_regions(original, pruned, torch.randn(1, 3, 16, 16), "ops")
    assert [r.modules for r in regions] == [("0", "1", "2"), ("3",)]


def test_blocks_keep_an_inverted_residual_whole_where_ops_cut_its_chain() -> None:
    from torchvision.models import mobilenet_v2

    graph = trace(mobilenet_v2()).graph
    by_blocks, by_ops = regions_of(graph, "blocks"), regions_of(graph, "ops")
    holders = [{".".join(m.split(".")[:2]) for m in r.modules if m.startswith("features.")} for r in by_blocks]
    assert [h for h in holders if h] == [{f"features.{i}"} for i in range(19)]  # one region per block
    assert [r.modules for r in by_ops[:3]] == [("features.0.0",), ("features.0.1",), ("features.0.2",)]
    assert len(by_ops) > len(by_blocks) + 40


def test_zero_steps_is_exactly_the_closed_form_model(resnet20: nn.Module, fresh_cache: Path) -> None:
    closed = decompose_model(resnet20, plan_of(None))
    zero = decompose_model(resnet20, plan_of(replace(QUICK, steps=0)))
    assert states_equal(closed, zero)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(closed(x), zero(x))
    assert not (fresh_cache / "reconstructed").exists()  # nothing was fitted, nothing cached


def test_a_plan_file_rebuilds_its_reconstructed_weights_bit_for_bit(resnet20: nn.Module, fresh_cache: Path,
                                                                     tmp_path: Path) -> None:
    path = plan_of(QUICK).save(tmp_path / "plan.json")
    assert json.loads(path.read_text())["format"] == RECONSTRUCTED_FORMAT
    first = decompose_model(resnet20, path)
    cached = decompose_model(resnet20, path)  # from the cache
    for entry in (fresh_cache / "reconstructed").iterdir():
        entry.unlink()
    again = decompose_model(resnet20, RankPlan.load(path))  # fitted again, from the file alone
    closed = decompose_model(resnet20, plan_of(None))
    assert states_equal(first, again) and states_equal(first, cached)
    assert not states_equal(first, closed)


def _stream_errors(original: nn.Module, model: nn.Module, x: torch.Tensor) -> list[float]:
    """Each region's output error against the original's, every network fed its own input."""
    theirs, ours, regions = paired_regions(original, model, x[:1])
    errors, a, b = [], x, x
    with torch.no_grad():
        for region in regions:
            a, b = theirs.run(region, a), ours.run(region, b)
            errors.append(float((a - b).pow(2).mean() / a.pow(2).mean()))
    return errors


def test_every_kind_of_changed_block_gets_closer_on_held_out_images(resnet20: nn.Module, fresh_cache: Path) -> None:
    closed = decompose_model(resnet20, plan_of(None))
    rebuilt = decompose_model(resnet20, plan_of(QUICK))
    held_out = synthetic_inputs(resnet20, SHAPE, n=64, seed=7)  # neither the fit's nor the proxy's images
    before, after = _stream_errors(resnet20, closed, held_out), _stream_errors(resnet20, rebuilt, held_out)
    _, _, regions, fitted = fitted_regions(resnet20, decompose_model(resnet20, plan_of(None)), held_out[:1], QUICK)
    for layer in KINDS:
        (index,) = [i for i, r in enumerate(regions) if any(m.startswith(layer.rsplit(".", 1)[0]) for m in r.modules)]
        assert fitted[index], layer
        # a removed branch has its constant alone to fit, which the closed form already set to the branch's mean
        gain = 0.99 if KINDS[layer].rank == 0 else 0.9
        assert after[index] < before[index] * gain, (layer, before[index], after[index])


class _Stop(Exception):
    pass


def test_a_reconstruction_cut_off_mid_way_resumes_to_the_same_weights(resnet20: nn.Module, fresh_cache: Path) -> None:
    plan = plan_of(QUICK)
    seen: list[int] = []

    def stop_in_the_second_region(done: int, total: int) -> None:
        seen.append(done)
        if done == QUICK.steps + 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        decompose_model(resnet20, plan, on_step=stop_in_the_second_region)
    assert [p.name.endswith(".partial.pt") for p in (fresh_cache / "reconstructed").iterdir()] == [True]
    resumed: list[int] = []
    finished = decompose_model(resnet20, plan, on_step=lambda done, total: resumed.append(done))
    assert min(resumed) > QUICK.steps  # the first region was not fitted again
    for entry in (fresh_cache / "reconstructed").iterdir():
        entry.unlink()
    unbroken = decompose_model(resnet20, plan)
    assert states_equal(finished, unbroken)


def test_plan_settings_are_checked_and_a_reconstruction_needs_its_format() -> None:
    data = plan_of(QUICK).to_dict()
    assert RankPlan.from_dict(data) == plan_of(QUICK)
    with pytest.raises(PlanError, match="format"):
        RankPlan.from_dict({**data, "format": "dac-search/plan@2"})
    older = {key: v for key, v in data["reconstruction"].items() if key not in ("regions", "logit_lr")}
    then = RankPlan.from_dict({**data, "reconstruction": older}).reconstruction
    assert then.regions == "ops" and then.logit_lr == QUICK.lr  # what a plan without the fields meant
    for bad in ({"steps": -1}, {"lr": 2.0}, {"scope": "some"}, {"images": 0}, {"epochs": 3}, {"regions": "all"},
                {"logit_lr": 0}, {"rounding_steps": -2}, {"rounding_lr": 1.5}):
        with pytest.raises(PlanError):
            RankPlan.from_dict({**data, "reconstruction": {**data["reconstruction"], **bad}})
    assert RankPlan.from_dict(plan_of(None).to_dict()).to_dict()["format"] == "dac-search/plan@2"


def test_the_graphs_of_a_plan_pair_with_the_original(resnet20: nn.Module) -> None:
    model = decompose_model(resnet20, plan_of(None))
    theirs, ours, regions = paired_regions(resnet20, model, torch.randn(1, 3, 32, 32))
    assert isinstance(ours, RegionRunner) and len(regions) == len(regions_of(trace(resnet20).graph))
    assert len(list(ours.parameters(regions[0]))) > 0


def test_the_logit_stage_brings_the_whole_networks_logits_closer_to_the_originals(resnet20: nn.Module) -> None:
    from dac_search.reconstruction.engine import reconstruct

    images = synthetic_inputs(resnet20, SHAPE, n=64, seed=7)  # the held-out set of the test above: cached
    closed = decompose_model(resnet20, plan_of(None))
    with torch.no_grad():
        target = torch.log_softmax(resnet20(images), 1)

    def kl(model: nn.Module) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.kl_div(torch.log_softmax(model(images), 1), target, log_target=True,
                                                    reduction="batchmean"))

    regions_only = replace(QUICK, steps=0, logit_steps=0)
    with_logits = replace(regions_only, logit_steps=20, logit_lr=1e-4)
    unchanged = reconstruct(resnet20, decompose_model(resnet20, plan_of(None)), images, regions_only)
    fitted = reconstruct(resnet20, decompose_model(resnet20, plan_of(None)), images, with_logits)
    assert states_equal(unchanged, closed)
    assert kl(fitted) < kl(closed) * 0.9, (kl(fitted), kl(closed))
