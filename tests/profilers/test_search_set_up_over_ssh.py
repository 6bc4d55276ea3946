"""A search on a remote device: its table is timed over SSH while the host distils, and its front while the host
makes the images the front is judged with."""

from __future__ import annotations

from pathlib import Path

import pytest

from dac_search.budget import parse_budget
from dac_search.rundir import load_run
from dac_search.search.config import SearchConfig
from dac_search.search.context import build_context, load_inputs
from dac_search.search.controller import run_search
from dac_search.search.stages import DEVICE, HOST

from .conftest import SshServer


@pytest.mark.slow  # over 10 s here
def test_a_remote_table_is_timed_while_the_host_distils_and_each_step_counts_to_its_total(
        sshd: SshServer, hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAC_SEARCH_CACHE", str(tmp_path / "cache"))  # cold: both the table and the images are made
    monkeypatch.setenv("DAC_SEARCH_LATENCY_CACHE", str(tmp_path / "cache" / "latency"))
    device = sshd.device_toml(tmp_path / "device.toml")
    config = SearchConfig(model="cifar10-resnet20", budget=parse_budget("0.8x"), device=str(device), trials=1,
                          methods=("dac",), precisions=("fp32",), correction=None, proxy_images=16)
    said: list[str] = []
    ctx = build_context(config, load_inputs(config), said.append, said.append, interval_s=0.0)
    try:
        stages = {s.name: s for s in ctx.clock.stages}
    finally:
        ctx.close()
    table, distillation = stages["latency table"], stages["distillation"]
    assert (table.where, distillation.where) == (DEVICE, HOST)
    assert table.seconds > 1.0 and distillation.seconds > 1.0, ctx.clock.stages
    # at once: the host began distilling while the device was still timing
    assert distillation.started_s < table.started_s + table.seconds - 0.5, ctx.clock.stages
    for label in ("timing layers and candidates on loopback-test", "making 16 distilled inputs",
                  "measuring the proxy of single-layer changes"):
        counts = [line.removeprefix(label + ": ").split(",")[0] for line in said if line.startswith(label + ": ")]
        assert counts, (label, said)
        done, total = counts[-1].split("/")
        assert done == total and int(total) > 1, counts


@pytest.mark.slow  # a whole search over SSH
def test_the_images_the_front_is_judged_with_are_made_while_a_remote_device_times_the_front(
        sshd: SshServer, hub_cache: Path, tmp_path: Path) -> None:
    device = sshd.device_toml(tmp_path / "device.toml",
                              measure={"warmup_s": 0.05, "repeat_s": 0.02, "repeats": 5, "max_attempts": 1})
    config = SearchConfig(model="cifar10-resnet20", budget=parse_budget("0.9x"), device=str(device), trials=4,
                          methods=("prune",), precisions=("fp32",), correction=None, proxy_images=16,
                          agreement_images=16, out=tmp_path / "run")
    outcome = run_search(config)
    assert outcome.feasible
    run = load_run(outcome.run_dir)
    stages = {s.name: s for s in run.info.stages}
    final, images = stages["final measurement"], stages["images the front is judged with"]
    assert (final.where, images.where) == (DEVICE, HOST)
    # at once: the host made the images while the device was timing the front, not after it
    assert final.started_s - 0.5 <= images.started_s < final.started_s + final.seconds, stages
    judged = [p.agreement_held_out for p in run.pareto or () if p.agreement_held_out is not None]
    assert judged and all(0 <= share <= 1 for share in judged)
