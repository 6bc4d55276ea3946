"""Which points a search reports: the Pareto front of the feasible ones, else the closest misses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from dac_search.search.results import Point

CLOSEST = 5


class HasSlack(Protocol):
    def slack_of(self, point: Point) -> float: ...


def pareto_front(points: Sequence[Point], cost: Callable[[Point], float | None]) -> list[Point]:
    """Points no other point beats on both cost and proxy, cheapest first; one per distinct plan cost."""
    ordered = sorted((p for p in points if p.proxy is not None and cost(p) is not None),
                     key=lambda p: (cost(p), p.proxy, p.trial))
    front: list[Point] = []
    for point in ordered:
        if not front or point.proxy < front[-1].proxy:
            front.append(point)
    return front


def closest_misses(points: Sequence[Point], slack: HasSlack) -> list[Point]:
    """When nothing meets the budget: the plans that miss it least, marked infeasible."""
    ranked = sorted((p for p in points if p.proxy is not None), key=lambda p: (slack.slack_of(p), p.proxy))
    return [replace(p, feasible=False) for p in ranked[:CLOSEST]]
