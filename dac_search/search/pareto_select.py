"""Which points a search reports: the Pareto front of the feasible ones (``report.pareto.pareto_front``),
else the closest misses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from dac_search.rundir import TrialRow

CLOSEST = 5


class HasSlack(Protocol):
    def slack_of(self, point: TrialRow) -> float: ...


def closest_misses(points: Sequence[TrialRow], slack: HasSlack) -> list[TrialRow]:
    """When nothing meets the budget: the plans that miss it least, marked infeasible."""
    ranked = sorted((p for p in points if p.proxy is not None), key=lambda p: (slack.slack_of(p), p.proxy))
    return [replace(p, feasible=False) for p in ranked[:CLOSEST]]
