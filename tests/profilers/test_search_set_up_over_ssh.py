"""A whole search on a remote device: its table is timed over SSH while the host distils, and its front while the
host makes the images the front is judged with."""

from __future__ import annotations

from pathlib import Path

import pytest

from dac_search.budget import parse_budget
from dac_search.rundir import load_run
from dac_search.search.config import SearchConfig
from dac_search.search.controller import run_search
from dac_search.search.live import LiveView
from dac_search.search.stages import DEVICE, HOST

from .conftest import SshServer


class HeardView(LiveView):
    """The live view, keeping every line said, each step's count said at every change."""

    heard: list[str] = []

    def say(self, message: str) -> None:
        HeardView.heard.append(message)
        super().say(message)

    @property
    def progress_interval_s(self) -> float:
        return 0.0


@pytest.mark.slow  # a whole search over SSH, caches cold
def test_a_remote_device_times_while_the_host_works_at_set_up_and_at_the_end_and_each_step_counts_to_its_total(
        sshd: SshServer, hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAC_SEARCH_CACHE", str(tmp_path / "cache"))  # cold: both the table and the images are made
    monkeypatch.setenv("DAC_SEARCH_LATENCY_CACHE", str(tmp_path / "cache" / "latency"))
    device = sshd.device_toml(tmp_path / "device.toml",
                              measure={"warmup_s": 0.05, "repeat_s": 0.02, "repeats": 5, "max_attempts": 1})
    config = SearchConfig(model="cifar10-resnet20", budget=parse_budget("0.9x"), device=str(device), trials=4,
                          methods=("dac", "prune"), precisions=("fp32",), correction=None, proxy_images=16,
                          agreement_images=16, out=tmp_path / "run")
    HeardView.heard = []
    outcome = run_search(config, view_factory=HeardView)
    assert outcome.feasible
    run = load_run(outcome.run_dir)
    stages = {s.name: s for s in run.info.stages}
    table, distillation = stages["latency table"], stages["distillation"]
    final, images = stages["final measurement"], stages["images the front is judged with"]
    assert (table.where, distillation.where, final.where, images.where) == (DEVICE, HOST, DEVICE, HOST)
    assert table.seconds > 1.0 and distillation.seconds > 1.0, stages
    # at once: the host began distilling while the device was still timing the table ...
    assert distillation.started_s < table.started_s + table.seconds - 0.5, stages
    # ... and made the images the front is judged with while the device timed the front, not after it
    assert final.started_s - 0.5 <= images.started_s < final.started_s + final.seconds, stages
    judged = [p.agreement_held_out for p in run.pareto or () if p.agreement_held_out is not None]
    assert judged and all(0 <= share <= 1 for share in judged)
    for label in ("timing layers and candidates on loopback-test", "making 16 distilled inputs",
                  "measuring the proxy of single-layer changes", "making 16 held-out synthetic inputs"):
        counts = [line.split(": ")[-1].split(",")[0] for line in HeardView.heard if line.startswith(label)
                  and ": " in line]
        assert counts, (label, HeardView.heard)
        done, total = counts[-1].removeprefix("step ").split("/")
        assert done == total and int(total) > 1, counts
