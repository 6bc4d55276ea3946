"""Stages: host and device seconds apart, and a slow device beside a slow host takes the longer, not the sum."""

from __future__ import annotations

import time

import pytest

from dac_search.rundir import stage_seconds
from dac_search.search.stages import DEVICE, HOST, StageClock, beside


def _slow(seconds: float, value: str, clock: StageClock, name: str, where: str):
    def step() -> str:
        with clock.stage(name, where):
            time.sleep(seconds)
        return value
    return step


@pytest.mark.parametrize("overlap", [True, False])
def test_a_slow_device_beside_a_slow_host_takes_the_longer_of_the_two_only_when_they_overlap(overlap: bool) -> None:
    clock = StageClock()
    start = time.monotonic()
    table, proxy = beside(_slow(0.6, "table", clock, "latency table", DEVICE),
                          _slow(0.6, "proxy", clock, "distillation", HOST), overlap)
    took = time.monotonic() - start
    assert (table, proxy) == ("table", "proxy")
    assert (took < 1.0) if overlap else (took >= 1.2), took
    assert stage_seconds(clock.stages, DEVICE) == pytest.approx(0.6, abs=0.15)
    assert stage_seconds(clock.stages, HOST) == pytest.approx(0.6, abs=0.15)
    stages = {s.name: s for s in clock.stages}
    host_began, device_ended = stages["distillation"].started_s, stages["latency table"].started_s + 0.6
    assert (host_began < device_ended - 0.3) if overlap else (host_began >= device_ended - 0.05)


def test_a_device_that_fails_beside_the_host_fails_the_set_up_after_the_host_step() -> None:
    host_done = []

    def device() -> None:
        raise ConnectionError("pi4 stopped answering")

    with pytest.raises(ConnectionError, match="pi4"):
        beside(device, lambda: host_done.append(True), overlap=True)
    assert host_done == [True]  # what the host made is kept (cached on disk in a search)
