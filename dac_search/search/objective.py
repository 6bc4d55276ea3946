"""What one trial does (``Objective``) and what happens after each (``AfterTrial``), as Optuna callables.

A trial is a point of the search space (a global trade-off and a shift per layer): its plan is scored
by the proxy once per distinct plan (across the workers of a shared study too), priced in FLOPs,
parameters and predicted latency, saved under ``plans/`` and in the study (so any worker's run dir holds
every plan), and judged against the budget as an Optuna constraint (``slack`` <= 0 fits).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from dac_search.plan import RankPlan
from dac_search.rundir import TrialRow, write_trials
from dac_search.search.context import PlanScore, SearchContext
from dac_search.search.refine import Refinement
from dac_search.search.study import CLAIMED, WORKER, claimed_trials, is_surplus

TPE_EVERY = 4  # one trial in four is TPE's; the others refine the best feasible plan


def plan_path(trial: int) -> str:
    """Where trial ``trial``'s plan is saved, relative to the run dir."""
    return f"plans/trial-{trial}.json"


class Objective:
    """Optuna's objective: (proxy score, objective cost) of the trial's plan, both minimised."""

    def __init__(self, ctx: SearchContext, run_dir: Path, total: int) -> None:
        self.ctx = ctx
        self.run_dir = run_dir
        self.total = total
        self.scores: dict[str, PlanScore] = {}  # plan JSON -> score: TPE and refinement repeat plans

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        try:
            return self._run(trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            # another worker failed this trial (our heartbeat was late) and queued it again: give it up
            # rather than end this worker (optuna#5582)
            raise optuna.TrialPruned(f"trial {trial.number} was retried by another worker") from None

    def _run(self, trial: optuna.Trial) -> tuple[float, float]:
        ctx = self.ctx
        trial.set_user_attr("worker", WORKER)
        if is_surplus(trial.study, trial.number, self.total):  # other workers took the last trials
            trial.study.stop()
            raise optuna.TrialPruned(f"the study's {self.total} trials are taken")
        log_lambda = trial.suggest_float("log_lambda", *ctx.space_range)
        shifts = {layer.name: trial.suggest_int(ctx.space.shift_param(layer.name), -1, 1) for layer in ctx.space.layers}
        plan = ctx.space.plan(log_lambda, shifts)
        key = plan.to_json()
        if key not in self.scores:
            self.scores[key] = scored_before(trial.study, plan) or ctx.score(plan)
        score = self.scores[key]
        cost = ctx.costs.cost(plan)
        relative = plan_path(trial.number)
        plan.save(self.run_dir / relative)
        trial.set_user_attr(PLAN_ATTR, plan.to_dict())
        slack = ctx.slack(plan)
        for name, value in (("plan", relative), ("flops", cost.flops), ("params", cost.params),
                            ("latency_ms", ctx.latency(plan)), ("agreement", score.agreement), ("kl", score.kl),
                            ("kl_additive", score.additive), ("slack", slack)):
            trial.set_user_attr(name, value)
        trial.set_constraint("budget", slack)
        return score.value, ctx.objective_cost(plan)


def stop_at_total(total: int) -> optuna.study.MaxTrialsCallback:
    """Optuna's stop once ``total`` trials are complete, counting the ones other workers are running:
    workers sharing a study end together at ``total`` (``is_surplus`` prunes a trial asked for too late)."""
    return optuna.study.MaxTrialsCallback(total, states=CLAIMED)


CSV_SHARE = 0.1  # of a worker's time, at most, spent rewriting trials.csv


class AfterTrial:
    """Optuna's callback: the live view, trials.csv rewritten (atomically, so a run cut off anywhere stays
    valid), and the next refinement move queued.

    trials.csv is rewritten after every trial while that is cheap, and less often as the study grows: never
    sooner after the last rewrite than ``1 / CSV_SHARE`` times what it took (a study of thousands of trials
    would otherwise spend more on rewriting it than on its trials; the end of the run writes it whole)."""

    def __init__(self, ctx: SearchContext, run_dir: Path, total: int,
                 shown: Callable[[float, float, bool], None]) -> None:
        self.run_dir = run_dir
        self.total = total
        self.shown = shown
        self.refinement = Refinement(ctx.space, ctx.slack, ctx.margins)
        self.saved: set[int] = set()  # trials whose plan files are in the run dir
        self.next_write = -math.inf

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            self.shown(trial.values[0], trial.values[1], trial.user_attrs.get("slack", 1) <= 0)
        start = time.monotonic()
        if start >= self.next_write:
            write_trials(self.run_dir, rows_of(study, self.run_dir, self.saved))
            end = time.monotonic()
            self.next_write = end + (end - start) / CSV_SHARE
        # the stop at the total is stop_at_total's; every TPE_EVERY-th trial is left to TPE, to explore the front
        if claimed_trials(study) < self.total and (trial.number + 1) % TPE_EVERY:
            self.refinement.enqueue_next(study)


PLAN_ATTR = "plan_layers"  # the trial's plan (RankPlan.to_dict) in the study, for every worker's run dir


def scored_before(study: optuna.Study, plan: RankPlan) -> PlanScore | None:
    """The score a complete trial of any worker already has for ``plan``: no plan is scored twice."""
    data = plan.to_dict()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        if attrs.get(PLAN_ATTR) == data and attrs.get("kl") is not None:
            return PlanScore(trial.values[0], attrs["kl"], attrs["kl_additive"], attrs.get("agreement"))
    return None


def rows_of(study: optuna.Study, run_dir: Path | None = None, saved: set[int] | None = None) -> list[TrialRow]:
    """Every trial of the study as a row of trials.csv (latency as the tables predict it); with
    ``run_dir``, the plans other workers saved in the study are written to it first (``saved``: the trials
    whose plan files a caller already knows are there, kept up to date, so a long study is not stat'ed anew)."""
    rows = []
    saved = set() if saved is None else saved
    for trial in study.get_trials(deepcopy=False):
        if run_dir is not None and trial.state == TrialState.COMPLETE and PLAN_ATTR in trial.user_attrs \
                and trial.number not in saved:
            path = run_dir / plan_path(trial.number)  # not the attr's path: a study is shared data
            if not path.exists():
                RankPlan.from_dict(trial.user_attrs[PLAN_ATTR]).save(path)
            saved.add(trial.number)
        attrs = trial.user_attrs
        done = trial.state == TrialState.COMPLETE
        rows.append(TrialRow(
            trial=trial.number, state=trial.state.name, feasible=done and attrs.get("slack", 1) <= 0,
            proxy=trial.values[0] if done else None, agreement=attrs.get("agreement"),
            flops=attrs.get("flops"), params=attrs.get("params"), latency_ms=attrs.get("latency_ms"),
            latency_predicted_ms=attrs.get("latency_ms"), plan=attrs.get("plan") if done else None))
    return rows
