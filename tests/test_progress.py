"""Progress lines: a count against a total, an ETA, at most one line per interval, and the whole of a step
made of parts (the batches of a distillation) counted as one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dac_search.progress import Progress, part_of
from dac_search.proxies import synthetic
from dac_search.proxies.synthetic import DistillSettings, synthetic_inputs


def test_progress_says_the_count_against_its_total_and_always_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 10.0, 20.0, 20.1, 30.0])
    monkeypatch.setattr("dac_search.progress.time.monotonic", lambda: next(clock))
    said: list[str] = []
    progress = Progress(said.append, "timing layers", interval_s=5.0)  # the clock starts: 0 s
    progress(1, 4)  # 10 s for the first: 30 s to go
    progress(2, 4)
    progress(3, 4)  # 0.1 s after the last line: not said
    progress(4, 4)  # the end is always said
    assert said == ["timing layers: 1/4, ETA 30 s", "timing layers: 2/4, ETA 20 s", "timing layers: 4/4"]


def test_a_count_that_starts_again_restarts_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 100.0, 101.0, 102.0])
    monkeypatch.setattr("dac_search.progress.time.monotonic", lambda: next(clock))
    said: list[str] = []
    progress = Progress(said.append, "reconstructing trial 3", interval_s=0.0, unit="step ")
    progress(1, 10)
    progress(10, 10)
    progress(1, 10)  # the rounding after the float fit: its own clock
    progress(2, 10)
    assert said[-1] == "reconstructing trial 3: step 2/10, ETA 4 s"  # 1 s for 2 steps since the restart


def test_parts_count_as_one_whole() -> None:
    counted: list[tuple[int, int]] = []
    second = part_of(lambda *c: counted.append(c), 1, 3)
    assert second is not None and part_of(None, 0, 2) is None
    second(2, 5)
    assert counted == [(7, 15)]


def test_a_distillation_in_batches_counts_every_step_of_every_batch(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(synthetic, "BATCH_PIXELS", 2 * 8 * 8)  # two 8x8 images a batch: three batches of five
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    counted: list[tuple[int, int]] = []
    images = synthetic_inputs(model, (1, 3, 8, 8), "distilled", n=5, cache_dir=tmp_path,
                              settings=DistillSettings(steps=3), on_progress=lambda *c: counted.append(c))
    assert images.shape == (5, 3, 8, 8)
    assert counted == [(done, 9) for done in range(1, 10)]
    counted.clear()
    again = synthetic_inputs(model, (1, 3, 8, 8), "distilled", n=5, cache_dir=tmp_path,
                             settings=DistillSettings(steps=3), on_progress=lambda *c: counted.append(c))
    assert torch.equal(again, images) and counted == []  # from the cache: nothing to count
