"""The end-of-run measurement policy: which plans are timed end to end, how often, and what is reported.

During the trials latency comes from per-layer tables; predictions err, so at the end the best-proxy
plans predicted near the budget are measured end to end on the device, and only measured values are
reported. The policy, in rounds:

1. measure the Pareto candidates predicted within ``NEAR_BUDGET`` of the budget whose proxy beats the
   best measured plan that fits (at most ``limit`` per round);
2. rescale the predictions by the median measured/predicted ratio and go on while such a plan is left
   (at most ``MEASURE_ROUNDS`` rounds; FLOPs and parameter budgets are exact and stop after one);
3. time every plan of the measured front a second time and keep the slower timing: keeping the plans that
   fit favours a lucky low timing (one ResNet-20 plan's paired ratio: 0.865, then 0.941 a minute later). A
   plan that joins the front when a slower second timing moves another off it is timed a second time too,
   until every point of the front has two. A plan that fits but is off the front is reported by neither the
   front nor the pick, so its second timing would be device time spent on nothing.

A relative budget (``0.6x``) judges each plan by its ratio to the original timed in the same session on
the same host, never against a timing of the original taken hours earlier.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from torch import nn

from dac_search.budget import Budget
from dac_search.latency import measure_beside, measure_models
from dac_search.pareto import pareto_front
from dac_search.progress import Say
from dac_search.rundir import TrialRow
from profilers.pool import DevicePool

MEASURE_ROUNDS = 3
NEAR_BUDGET = 0.1  # plans predicted up to 10% over the budget are worth measuring
CLOSEST = 5  # misses reported when no plan meets the budget


@dataclass(frozen=True)
class Judge:
    """How a point is judged against the (resolved) budget; ``table_ms``: the latency table's original,
    the scale its predictions are on (None without a device)."""

    budget: Budget
    table_ms: float | None = None

    def slack_of(self, point: TrialRow) -> float:
        """How far a point is over the budget, as a share of it (<= 0: within). A relative latency budget
        judges a measured point by its ratio to the original timed beside it."""
        if self.budget.relative_latency and point.latency_ratio is not None:
            return point.latency_ratio / self.budget.fraction - 1.0
        value = {"latency": point.latency_ms, "flops": point.flops, "params": point.params}[self.budget.kind]
        return float("inf") if value is None else self.budget.slack(value) / self.budget.value

    def cost(self, point: TrialRow) -> float | None:
        """The point's value of the search's objective (latency or FLOPs), the front's x axis."""
        return point.latency_ms if self.budget.objective == "latency_ms" else point.flops

    def scaled(self, point: TrialRow, scale: float) -> TrialRow:
        """A point whose predicted latency is scaled by what end-to-end measurements showed; under a
        relative budget also as a ratio to the table's original."""
        if point.latency_ms is None or self.table_ms is None:
            return point
        latency = point.latency_ms * scale
        ratio = latency / self.table_ms if self.budget.relative_latency else None
        return replace(point, latency_ms=latency, latency_ratio=ratio)

    def prediction_error(self, point: TrialRow) -> float:
        """Measured over predicted latency; for a paired measurement, on the scale of the table's original."""
        if point.latency_ratio is not None and self.table_ms is not None:
            return point.latency_ratio * self.table_ms / point.latency_predicted_ms
        return point.latency_ms / point.latency_predicted_ms

    def judged(self, points: Sequence[TrialRow]) -> list[TrialRow]:
        return [replace(p, feasible=self.slack_of(p) <= 0) for p in points]


@dataclass(frozen=True)
class Timed:
    """Points with their end-to-end timings, and the original's timings taken beside them (paired only)."""

    points: list[TrialRow]
    originals: list[float]


class PlanTimer(Protocol):
    """Times points' plans end to end; the one thing the policy asks of a device."""

    def __call__(self, points: Sequence[TrialRow]) -> Timed: ...


@dataclass(frozen=True)
class DeviceTimer:
    """Times plans on a ``DevicePool``: each beside ``reference`` in one session when ``paired``."""

    pool: DevicePool
    build: Callable[[TrialRow], nn.Module]
    reference: nn.Module
    input_shape: tuple[int, ...]
    paired: bool

    def __call__(self, points: Sequence[TrialRow]) -> Timed:
        if not points:
            return Timed([], [])
        models = [self.build(p) for p in points]
        if not self.paired:
            results = measure_models(self.pool, models, self.input_shape)
            return Timed([replace(p, latency_ms=r.median_ms, latency_iqr_ms=r.iqr_ms)
                          for p, r in zip(points, results)], [])
        pairs = measure_beside(self.pool, self.reference, models, self.input_shape)
        return Timed([replace(p, latency_ms=q.result.median_ms, latency_iqr_ms=q.result.iqr_ms, latency_ratio=q.ratio)
                      for p, q in zip(points, pairs)], [q.reference.median_ms for q in pairs])


@dataclass(frozen=True)
class FinalFront:
    """What a search reports: ``points`` (the front, or the closest misses when nothing is ``feasible``),
    every plan ``measured`` end to end, and the original's median latency timed beside them."""

    points: list[TrialRow]
    feasible: bool
    measured: list[TrialRow]
    original_ms: float | None


def closest_misses(points: Sequence[TrialRow], judge: Judge) -> list[TrialRow]:
    """When nothing meets the budget: the plans that miss it least, marked infeasible."""
    ranked = sorted((p for p in points if p.proxy is not None), key=lambda p: (judge.slack_of(p), p.proxy))
    return [replace(p, feasible=False) for p in ranked[:CLOSEST]]


def _slower(first: TrialRow, second: TrialRow) -> TrialRow:
    """Of two timings of one plan, the one less favourable to it."""
    key = (lambda p: p.latency_ratio) if first.latency_ratio is not None else (lambda p: p.latency_ms)
    return first if key(first) >= key(second) else second


def unmeasured_front(complete: Sequence[TrialRow], judge: Judge) -> FinalFront:
    """The front of the feasible points as scored (no device, or an interrupted search)."""
    front = pareto_front([p for p in complete if p.feasible], judge.cost)
    return FinalFront(front or closest_misses(complete, judge), bool(front), [], None)


def measured_front(complete: Sequence[TrialRow], judge: Judge, timer: PlanTimer, limit: int,
                   say: Say = lambda _: None, device: str = "the device") -> FinalFront:
    """The front of the plans measured end to end to fit the budget (the policy in the module docstring)."""
    measured: list[TrialRow] = []
    originals: list[float] = []
    scale = 1.0
    for _ in range(MEASURE_ROUNDS):
        done = {p.trial for p in measured}
        best = min((p.proxy for p in measured if p.feasible), default=float("inf"))
        near = [p for p in complete if p.trial not in done and p.proxy < best
                and judge.slack_of(judge.scaled(p, scale)) <= NEAR_BUDGET]
        candidates = pareto_front(near, judge.cost)[-limit:]  # cheapest first: keep the best proxies
        if not candidates:
            break
        say(f"measuring {len(candidates)} Pareto candidates end to end on {device}")
        timed = timer(candidates)
        originals += timed.originals
        measured = judge.judged([*measured, *timed.points])
        if judge.budget.kind != "latency":
            break  # FLOPs and parameters are exact: nothing to rescale
        errors = [judge.prediction_error(p) for p in measured if p.latency_predicted_ms]
        scale = statistics.median(errors) if errors else scale
    twice: set[int] = set()  # trials timed a second time
    while judge.budget.kind == "latency":
        again = [p for p in pareto_front([p for p in measured if p.feasible], judge.cost) if p.trial not in twice]
        if not again:
            break
        timed = timer(again)
        originals += timed.originals
        twice |= {p.trial for p in again}
        second = {p.trial: p for p in timed.points}
        measured = judge.judged([_slower(p, second[p.trial]) if p.trial in second else p for p in measured])
    front = pareto_front([p for p in measured if p.feasible], judge.cost)
    original_ms = statistics.median(originals) if originals else None
    return FinalFront(front or closest_misses(measured or list(complete), judge), bool(front), measured, original_ms)
