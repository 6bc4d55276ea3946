"""The one Pareto front against hand-computed cases and the definition, hypervolume, and the best pick."""

from __future__ import annotations

import itertools
import random
from operator import itemgetter
from pathlib import Path

import pytest

from dac_search.pareto import best_row, dominates, front_rows, hypervolume, hypervolume_history, pareto_front
from dac_search.rundir import TrialRow, load_run
from tests.report.conftest import front_by_definition, partial_fits


def row(trial: int, proxy: float, flops: int, feasible: bool = True, top1: float | None = None) -> TrialRow:
    return TrialRow(trial, "COMPLETE", feasible, proxy, flops=flops, params=1000,
                    plan=f"plans/trial-{trial}.json", top1=top1)


def front_of(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return pareto_front(points, itemgetter(0), itemgetter(1))


def test_front_of_a_staircase_drops_dominated_points_cheapest_first() -> None:
    points = [(1.0, 5.0), (2.0, 3.0), (2.5, 4.0), (3.0, 1.0), (4.0, 1.0), (0.5, 9.0)]
    assert front_of(points) == [(0.5, 9.0), (1.0, 5.0), (2.0, 3.0), (3.0, 1.0)]
    assert front_of([]) == []


def test_a_tie_in_both_objectives_keeps_the_first_and_a_tie_in_one_is_dominated() -> None:
    rows = [row(3, 0.2, 100), row(5, 0.2, 100), row(6, 0.3, 100), row(7, 0.2, 200)]
    assert [r.trial for r in pareto_front(rows, lambda r: r.flops)] == [3]
    unmeasured = TrialRow(8, "COMPLETE", True, None, flops=50)
    assert pareto_front([unmeasured, *rows], lambda r: r.flops) == [rows[0]]


def test_front_matches_the_definition_on_random_points() -> None:
    rng = random.Random(3)
    points = [(rng.randint(0, 9) * 1.0, rng.randint(0, 9) * 1.0) for _ in range(60)]
    expected = [p for i, p in enumerate(points) if not any(dominates(q, p) for q in points) and p not in points[:i]]
    assert front_of(points) == sorted(expected)


def test_hypervolume_of_known_fronts() -> None:
    assert hypervolume([(1.0, 1.0)], (3.0, 3.0)) == pytest.approx(4.0)
    # [1,4]x[2,4] and the strip [2,4]x[1,2] below it.
    assert hypervolume([(1.0, 2.0), (2.0, 1.0)], (4.0, 4.0)) == pytest.approx(3 * 2 + 2 * 1)
    # A point beyond the reference and a dominated one add nothing.
    assert hypervolume([(1.0, 2.0), (2.0, 1.0), (5.0, 0.0), (3.0, 3.0)], (4.0, 4.0)) == pytest.approx(8.0)
    assert hypervolume([], (1.0, 1.0)) == 0.0


def test_history_rises_and_matches_recomputing_from_scratch() -> None:
    rng = random.Random(5)
    points = [None if rng.random() < 0.2 else (rng.random(), rng.random()) for _ in range(40)]
    history = hypervolume_history(points, (1.0, 1.0))
    assert len(history) == len(points)
    assert all(a <= b for a, b in itertools.pairwise(history))
    for n in (1, 10, 25, 40):
        seen = [p for p in points[:n] if p is not None]
        assert history[n - 1] == pytest.approx(hypervolume(seen, (1.0, 1.0)))


def test_best_prefers_measured_top1_then_proxy_then_cost() -> None:
    rows = [row(1, 0.10, 500, top1=88.0), row(2, 0.05, 600, top1=87.0), row(3, 0.01, 700, feasible=False)]
    assert best_row(rows).trial == 1
    assert best_row([row(1, 0.10, 500), row(2, 0.05, 600), row(3, 0.05, 550)]).trial == 3
    assert best_row([row(1, 0.1, 500, feasible=False)]) is None


def test_front_of_an_interrupted_run_is_computed_from_trials(partial_dir: Path) -> None:
    """By the definition, on the recorded points: completed, within the budget on predicted latency."""
    fits = partial_fits()
    front = front_rows(load_run(partial_dir).trials, "latency_ms")
    assert [r.trial for r in front] == front_by_definition(fits)
    assert best_row(front).trial == min(fits, key=lambda t: fits[t][1])
