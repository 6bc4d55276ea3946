"""Pareto math on (cost, proxy), both minimised: the front, 2-D hypervolume, and the best pick.

Pure functions over numbers and rows, no drawing; a leaf below the search, the report and export. ``pareto_front`` is
the one front of the project: the search picks pareto.csv with it, and the report (its fallback for an interrupted run,
the hypervolume) and ``export --pick best`` use it too, so they cannot disagree about which plans are on the front.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter
from typing import TypeVar

from dac_search.rundir import TrialRow

Pair = tuple[float, float]
T = TypeVar("T")


def dominates(a: Pair, b: Pair) -> bool:
    """``a`` is no worse than ``b`` in both objectives and better in one."""
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def pareto_front(
    items: Sequence[T],
    cost: Callable[[T], float | None],
    proxy: Callable[[T], float | None] = attrgetter("proxy"),
) -> list[T]:
    """The items no other item dominates on (cost, proxy), cheapest first; items lacking either are left out.

    Tie rule: of items equal in both objectives only the first (in input order: the earliest trial) stays,
    so one plan evaluated twice is reported once; items equal in one objective only are not ties, the
    worse one is dominated.
    """
    scored = [(c, p, i) for i, item in enumerate(items)
              if (c := cost(item)) is not None and (p := proxy(item)) is not None]
    front: list[T] = []
    best = math.inf
    for _, value, i in sorted(scored):
        if value < best:
            front.append(items[i])
            best = value
    return front


def _pairs_front(points: Sequence[Pair]) -> list[Pair]:
    return pareto_front(points, itemgetter(0), itemgetter(1))


def hypervolume(points: Sequence[Pair], reference: Pair) -> float:
    """Area dominated by ``points`` and bounded by ``reference``; points not better than it add nothing."""
    inside = [p for p in points if p[0] < reference[0] and p[1] < reference[1]]
    area = 0.0
    ceiling = reference[1]
    for cost, proxy in _pairs_front(inside):  # cost ascending, so proxy descending along the front
        area += (reference[0] - cost) * (ceiling - proxy)
        ceiling = proxy
    return area


def hypervolume_history(points: Sequence[Pair | None], reference: Pair) -> tuple[float, ...]:
    """Hypervolume after each point in turn; ``None`` (a failed or pruned trial) keeps the last value."""
    front: list[Pair] = []
    values = []
    current = 0.0
    for point in points:
        if point is not None:
            front = _pairs_front([*front, point])
            current = hypervolume(front, reference)
        values.append(current)
    return tuple(values)


def front_rows(rows: Sequence[TrialRow], objective: str) -> tuple[TrialRow, ...]:
    """The front of completed trials on (objective, proxy): of the feasible ones, else of all as the closest.

    The search writes pareto.csv itself; this is the fallback for a run interrupted before it did.
    """
    measured = [row for row in rows if row.point(objective) is not None]
    pool = [row for row in measured if row.feasible] or measured
    return tuple(pareto_front(pool, lambda row: row.cost(objective)))


def best_row(rows: Sequence[TrialRow]) -> TrialRow | None:
    """The most accurate feasible completed row: highest real top-1 when measured, else lowest proxy, each of
    the model the row exports (reconstructed where the stage made it: ``TrialRow.final_proxy``).

    Ties go to the cheaper plan (fewer FLOPs), then the earlier trial, so the pick is stable.
    """
    candidates = [r for r in rows if r.complete and r.feasible]
    measured = [r for r in candidates if r.final_top1 is not None]
    if measured:
        return min(measured, key=lambda r: _rank_key(r, by_top1=True))
    return min(candidates, key=lambda r: _rank_key(r, by_top1=False), default=None)


def _rank_key(row: TrialRow, by_top1: bool) -> tuple[float, float, int, int]:
    """Smaller is better: higher top-1 (when ranking by it), lower proxy, fewer FLOPs, earlier trial."""
    top1 = -row.final_top1 if by_top1 and row.final_top1 is not None else 0.0
    proxy = row.final_proxy if row.final_proxy is not None else math.inf
    return (top1, proxy, row.flops or 0, row.trial)
