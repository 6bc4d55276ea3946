"""Pareto math on (cost, proxy) pairs, both minimised: the front, 2-D hypervolume, and the best pick.

Pure functions over numbers and rows, no drawing, so the HTML, Markdown and terminal renderers and
``export --pick best`` all agree on which plans are on the front and which one is "best".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dac_search.report.results import TrialRow

Pair = tuple[float, float]


def dominates(a: Pair, b: Pair) -> bool:
    """``a`` is no worse than ``b`` in both objectives and better in one."""
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def pareto_indices(points: Sequence[Pair]) -> tuple[int, ...]:
    """Indices of the non-dominated points, in input order; duplicates of a front point all stay."""
    order = sorted(range(len(points)), key=lambda i: (points[i], i))
    front: list[int] = []
    best_proxy = float("inf")
    last: Pair | None = None
    for i in order:
        if points[i] == last or points[i][1] < best_proxy:
            front.append(i)
            best_proxy = min(best_proxy, points[i][1])
            last = points[i]
    return tuple(sorted(front))


def hypervolume(points: Sequence[Pair], reference: Pair) -> float:
    """Area dominated by ``points`` and bounded by ``reference``; points not better than it add nothing."""
    inside = [p for p in points if p[0] < reference[0] and p[1] < reference[1]]
    front = sorted({inside[i] for i in pareto_indices(inside)})
    area = 0.0
    ceiling = reference[1]
    for cost, proxy in front:  # cost ascending, so proxy descending along the front
        area += (reference[0] - cost) * (ceiling - proxy)
        ceiling = proxy
    return area


def hypervolume_history(points: Sequence[Pair | None], reference: Pair) -> tuple[float, ...]:
    """Hypervolume after each point in turn; ``None`` (a failed or pruned trial) keeps the last value."""
    front: list[Pair] = []
    values = []
    current = 0.0
    for point in points:
        if point is not None and not any(p == point or dominates(p, point) for p in front):
            front = [p for p in front if not dominates(point, p)] + [point]
            current = hypervolume(front, reference)
        values.append(current)
    return tuple(values)


def front_rows(rows: Sequence[TrialRow], objective: str) -> tuple[TrialRow, ...]:
    """The Pareto front of completed trials on (objective, proxy): feasible ones, else all as the closest.

    The search writes ``pareto.csv`` itself; this is the fallback for a run interrupted before it did.
    """
    measured = [(row, point) for row in rows if (point := row.point(objective)) is not None]
    pool = [(row, point) for row, point in measured if row.feasible] or measured
    return tuple(pool[i][0] for i in pareto_indices([point for _, point in pool]))


def best_row(rows: Sequence[TrialRow]) -> TrialRow | None:
    """The most accurate feasible completed row: highest real top-1 when measured, else lowest proxy.

    Ties go to the cheaper plan (fewer FLOPs), then the earlier trial, so the pick is stable.
    """
    candidates = [r for r in rows if r.complete and r.feasible]
    measured = [r for r in candidates if r.top1 is not None]
    if measured:
        return min(measured, key=lambda r: _rank_key(r, by_top1=True))
    return min(candidates, key=lambda r: _rank_key(r, by_top1=False), default=None)


def _rank_key(row: TrialRow, by_top1: bool) -> tuple[float, float, int, int]:
    """Smaller is better: higher top-1 (when ranking by it), lower proxy, fewer FLOPs, earlier trial."""
    top1 = -row.top1 if by_top1 and row.top1 is not None else 0.0
    proxy = row.proxy if row.proxy is not None else math.inf
    return (top1, proxy, row.flops or 0, row.trial)
