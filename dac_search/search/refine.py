"""Local refinement around the best feasible plan: exchange moves, judged by the search's proxy.

TPE spreads its trials over the whole front and over tens of layer dimensions; near the budget what pays
is trading rank between layers, which the additive single-layer model behind the warm starts gets only
roughly right. A move takes one layer one hull step dearer and, when the budget needs it, another one
step cheaper. Moves are tried in order of their additive penalty change, each once; the search's proxy
decides. Every move is an enqueued trial, so it lives in the study like any other (resumable, shared).

Under a latency budget the refinement takes turns at several margins under the budget: a latency table
predicts whole plans to a few percent (median 4.6% on onnxruntime), so plans refined to the budget's very
edge measure over it about as often as under, and a search that only refined the edge was left, after
the end-to-end measurement, with nothing between its edge and plans far cheaper (ResNet-56 at 0.7x: every
edge plan measured over, the best that fit ran at 0.57x and 2.8 points worse). Refining also at 3% and
6% under the budget leaves the measurement good plans to fall back on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from dac_search.plan import RankPlan
from dac_search.search.space import SearchSpace

MAX_CHECKED = 400  # moves checked against the budget per proposal (cheapest estimates first)
LATENCY_MARGINS = (0.0, 0.03, 0.06)  # shares of a latency budget the refinement leaves free, in turn


@dataclass(frozen=True)
class Step:
    """One layer moved one hull step: its new shift and the change of its single-layer penalty and cost."""

    layer: str
    shift: int
    penalty: float
    cost: float


@dataclass(frozen=True)
class Move:
    steps: tuple[Step, ...]

    @property
    def penalty(self) -> float:
        return sum(step.penalty for step in self.steps)

    def apply(self, space: SearchSpace, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**params, **{space.shift_param(step.layer): step.shift for step in self.steps}}


def layer_steps(space: SearchSpace, params: Mapping[str, Any]) -> tuple[list[Step], list[Step]]:
    """Every layer's one step dearer and one step cheaper that its shift can still express."""
    lam = 10.0 ** params["log_lambda"]
    dearer, cheaper = [], []
    for layer in space.layers:
        shift = int(params.get(space.shift_param(layer.name), 0))
        here = layer.index(lam, shift)
        for new_shift, out in ((shift - 1, dearer), (shift + 1, cheaper)):
            there = layer.index(lam, new_shift) if -1 <= new_shift <= 1 else here
            if there != here:
                a, b = layer.hull[here], layer.hull[there]
                out.append(Step(layer.name, new_shift, b.penalty - a.penalty, b.cost - a.cost))
    return dearer, cheaper


def moves(space: SearchSpace, params: Mapping[str, Any]) -> list[Move]:
    """Single dearer steps (spending slack) and dearer/cheaper exchanges, best estimate first."""
    dearer, cheaper = layer_steps(space, params)
    found = [Move((up,)) for up in dearer]
    found += [Move((up, down)) for up in dearer for down in cheaper if up.layer != down.layer]
    return sorted(found, key=lambda move: (move.penalty, tuple(s.layer for s in move.steps)))


def propose(space: SearchSpace, incumbent: Mapping[str, Any], tried: set[str],
            fits: Callable[[RankPlan], bool]) -> dict[str, Any] | None:
    """Params of the most promising untried move from ``incumbent`` that ``fits``, if any."""
    for move in moves(space, incumbent)[:MAX_CHECKED]:
        params = move.apply(space, incumbent)
        plan = plan_of(space, params)
        if plan.to_json() not in tried and fits(plan):
            return params
    return None


def plan_of(space: SearchSpace, params: Mapping[str, Any]) -> RankPlan:
    """The plan a trial's params encode (shifts missing from ``params`` count as 0)."""
    shifts = {layer.name: int(params.get(space.shift_param(layer.name), 0)) for layer in space.layers}
    return space.plan(params["log_lambda"], shifts)


class Refinement:
    """Queues the next exchange move around the best trial that fits a budget (an Optuna callback's job).

    ``slack``: how far a plan is over the budget, as a share of it (from the tables: exact for FLOPs,
    predicted for latency). ``margins``: the shares of the budget left free in turn (``0.03``: the move
    starts from, and must stay within, 97% of the budget); the turn is the study's trial count.
    """

    def __init__(self, space: SearchSpace, slack: Callable[[RankPlan], float],
                 margins: tuple[float, ...] = (0.0,)) -> None:
        self.space = space
        self.slack = slack
        self.margins = margins
        self.keys: dict[int, str] = {}  # trial number -> plan, computed once

    def enqueue_next(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return  # warm starts or another worker's move come first
        margin = self.margins[len(trials) % len(self.margins)]
        fitting = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("slack", 1) <= -margin]
        if not fitting:
            return
        incumbent = min(fitting, key=lambda t: (t.values[0], t.number))
        for trial in trials:
            if trial.number not in self.keys and "log_lambda" in trial.params:
                self.keys[trial.number] = plan_of(self.space, trial.params).to_json()
        params = propose(self.space, incumbent.params, set(self.keys.values()),
                         lambda plan: self.slack(plan) <= -margin)
        if params is not None:
            study.enqueue_trial(params, user_attrs={"refined_from": incumbent.number, "margin": margin})
