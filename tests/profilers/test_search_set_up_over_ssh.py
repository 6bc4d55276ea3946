"""A search's set-up on a remote device: its table is timed over SSH while the host distils."""

from __future__ import annotations

from pathlib import Path

import pytest

from dac_search.budget import parse_budget
from dac_search.search.config import SearchConfig
from dac_search.search.context import build_context, load_inputs
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
