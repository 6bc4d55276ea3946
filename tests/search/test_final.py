"""The end-of-run measurement policy against an in-memory profiler that returns scripted timings.

Each plan's model is a 1x1 conv whose weight count names the plan, so the scripted profiler knows which
plan it was handed from the exported ONNX file alone, as a real device would not: the policy is tested,
not the machine. The reference (the original) always times 10 ms.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import numpy_helper
from torch import nn

from dac_search.budget import parse_budget
from dac_search.rundir import TrialRow
from dac_search.search.final import DeviceTimer, Judge, measured_front, unmeasured_front
from profilers import Conditions, LatencyResult, Profiler, load_device
from profilers.pool import DevicePool

TABLE_MS = 10.0
REFERENCE = 100  # output channels of the reference conv
SHAPE = (1, 3, 4, 4)


def _weights(path: Path) -> int:
    return sum(numpy_helper.to_array(t).size for t in onnx.load(str(path)).graph.initializer)


class ScriptedProfiler(Profiler):
    """Returns, for each model, the next of its scripted timings (the last one repeats); logs every call."""

    name, runtime, threads = "scripted", "onnxruntime", 1

    def __init__(self, script: dict[int, list[float]]) -> None:
        self.script = {3 * (trial + 1): times for trial, times in script.items()} | {3 * REFERENCE: [TABLE_MS]}
        self.calls: list[list[int]] = []
        self.seen: dict[int, int] = defaultdict(int)

    def measure_many(self, artifacts: Sequence[Path], input_shape: Any, *, runtime: str | None = None,
                     settings: Any = None) -> list[LatencyResult]:
        keys = [_weights(path) for path in artifacts]
        self.calls.append([k // 3 - 1 for k in keys if k != 3 * REFERENCE])
        results = []
        for path, key in zip(artifacts, keys):
            times = self.script[key]
            ms = times[min(self.seen[key], len(times) - 1)]
            self.seen[key] += 1
            results.append(LatencyResult(str(path), self.name, tuple(SHAPE), (ms,) * 5,
                                         Conditions("onnxruntime", "scripted", 1, host="local")))
        return results

    def info(self, *, runtime: str | None = None) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _model(channels: int) -> nn.Module:
    return nn.Conv2d(3, channels, 1, bias=False).eval()


def _row(trial: int, predicted_ms: float, proxy: float) -> TrialRow:
    return TrialRow(trial=trial, state="COMPLETE", feasible=predicted_ms <= 6.0, proxy=proxy, flops=1000 - trial,
                    params=10, latency_ms=predicted_ms, latency_predicted_ms=predicted_ms,
                    plan=f"plans/trial-{trial}.json")


def _run(rows: list[TrialRow], script: dict[int, list[float]], budget: str = "0.6x"):
    profiler = ScriptedProfiler(script)
    pool = DevicePool(load_device("local"), lambda _: None, {"local": profiler})
    judge = Judge(parse_budget(budget).resolve(TABLE_MS), TABLE_MS)
    timer = DeviceTimer(pool, lambda row: _model(row.trial + 1), _model(REFERENCE), SHAPE,
                        paired=judge.budget.relative_latency)
    return measured_front(rows, judge, timer, limit=8), profiler


def test_near_budget_plans_are_measured_and_a_fit_is_timed_twice_keeping_the_slower() -> None:
    rows = [_row(0, 5.0, 0.9), _row(1, 5.8, 0.5), _row(2, 6.4, 0.3), _row(3, 8.0, 0.1)]
    final, profiler = _run(rows, {0: [5.2, 5.9], 1: [6.3], 2: [6.1], 3: [1.0]})
    assert profiler.calls[0] == [0, 1, 2]  # near the budget (<= 10% over); trial 3 (0.8x) is not
    assert profiler.calls[1:] == [[0]]  # the one fit, timed again; the rescaled 3 is still far
    assert final.feasible and [p.trial for p in final.points] == [0]
    assert final.points[0].latency_ratio == pytest.approx(0.59)  # the slower of 0.52 and 0.59
    assert {p.trial: p.feasible for p in final.measured} == {0: True, 1: False, 2: False}
    assert final.original_ms == pytest.approx(TABLE_MS)


def test_only_the_front_is_timed_twice_and_a_plan_that_joins_it_is_timed_twice_too() -> None:
    # all three fit after one timing, but plan 1 is as fast as plan 0 with a better proxy: 0 is off the front
    final, profiler = _run([_row(0, 5.0, 0.9), _row(1, 5.4, 0.5), _row(2, 5.8, 0.3)],
                           {0: [5.0], 1: [4.9], 2: [5.7, 6.2]})
    assert profiler.calls == [[0, 1, 2], [1, 2]]  # 0 is never timed a second time
    assert [p.trial for p in final.points] == [1] and {p.trial: p.feasible for p in final.measured}[2] is False
    # plan 1 misses on its second timing: plan 0 joins the front, so it is timed a second time too
    final, profiler = _run([_row(0, 5.0, 0.9), _row(1, 5.4, 0.5)], {0: [5.2, 5.5], 1: [5.1, 6.5]})
    assert profiler.calls == [[0, 1], [1], [0]]
    assert [p.trial for p in final.points] == [0] and final.points[0].latency_ratio == pytest.approx(0.55)


def test_a_second_timing_over_the_budget_leaves_only_the_closest_misses() -> None:
    final, _ = _run([_row(0, 5.0, 0.9)], {0: [5.5, 6.5]})
    assert not final.feasible and [p.trial for p in final.points] == [0]
    assert final.points[0].feasible is False and final.points[0].latency_ratio == pytest.approx(0.65)


def test_predictions_rescaled_by_the_measurements_bring_in_a_better_plan() -> None:
    # Plan 0 runs faster than predicted (0.8 of it): plan 1, predicted at 0.75x, is then expected near
    # 0.6x, and its better proxy makes it worth a second round.
    rows = [_row(0, 5.0, 0.9), _row(1, 7.5, 0.2)]
    final, profiler = _run(rows, {0: [4.0], 1: [5.8]})
    assert profiler.calls[0] == [0] and [1] in profiler.calls[1:]
    assert final.feasible and {p.trial for p in final.points} == {0, 1}


def test_an_absolute_budget_is_judged_on_the_milliseconds_without_pairing() -> None:
    final, profiler = _run([_row(0, 5.0, 0.9), _row(1, 5.5, 0.4)], {0: [5.5], 1: [6.5]}, budget="6ms")
    assert all(p.latency_ratio is None for p in final.measured)
    assert [p.trial for p in final.points] == [0] and final.original_ms is None


def test_without_a_device_the_front_is_the_feasible_trials_as_scored() -> None:
    judge = Judge(parse_budget("60%flops").resolve(1000.0))
    rows = [TrialRow(trial=i, state="COMPLETE", feasible=True, proxy=p, flops=f, params=1)
            for i, (p, f) in enumerate([(0.5, 500), (0.3, 590), (0.6, 550)])]
    final = unmeasured_front(rows, judge)
    assert [p.trial for p in final.points] == [0, 1] and final.feasible and final.measured == []
