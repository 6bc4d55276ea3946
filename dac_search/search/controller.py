"""The search controller: propose plans, score them data-free, price them, keep the Pareto front.

model -> factors -> plan -> decomposed model -> {proxy, cost, latency} -> study -> results.
During the search latency comes from per-layer tables; at the end every reported Pareto point is
measured end to end on the device, and the measured value is the one reported.
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from dac_search.decompose import max_rank
from dac_search.errors import ConfigError
from dac_search.latency import measure_beside, measure_models
from dac_search.plan import LayerChoice, RankPlan
from dac_search.search.config import SearchConfig
from dac_search.search.context import SearchContext, build_context
from dac_search.search.live import LiveView
from dac_search.report.pareto import pareto_front
from dac_search.rundir import RunInfo, read_run_json, write_pareto, write_run, write_trials
from dac_search.rundir import TrialRow as Point
from dac_search.search.pareto_select import closest_misses
from dac_search.search.refine import plan_of, propose
from dac_search.search.study import WORKER, enqueue_warm_starts, fail_dead_trials, open_study

WARM_START_SHARES = (0.8, 0.6, 0.5, 0.4)
MEASURE_ROUNDS = 3  # end-to-end measurement rounds at the end, each with predictions rescaled
NEAR_BUDGET = 0.1  # plans predicted up to 10% over the budget are worth measuring
TPE_EVERY = 4  # one trial in four is TPE's; the others refine the best feasible plan


@dataclass(frozen=True)
class SearchOutcome:
    run_dir: Path
    pareto: tuple[Point, ...]
    feasible: bool
    interrupted: bool
    message: str


def run_search(config: SearchConfig, view_factory: Callable[..., LiveView] = LiveView) -> SearchOutcome:
    run_dir = config.out or config.default_out()
    _check_run_dir(run_dir, config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    view = view_factory(config.trials, _cost_text(config))
    with view:
        ctx = build_context(config, view.say, view.console.print)
        if ctx.pool is not None:
            view.hosts = ctx.pool.status
        try:
            (run_dir / "plans").mkdir(parents=True, exist_ok=True)
            return _search(ctx, run_dir, view)
        finally:
            ctx.close()


def _cost_text(config: SearchConfig) -> Callable[[float], str]:
    if config.budget.objective == "latency_ms":
        return lambda cost: f"{cost:.2f} ms"
    return lambda cost: f"{cost / 1e6:.1f} MFLOPs"


def _check_run_dir(run_dir: Path, config: SearchConfig) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file")
    previous = read_run_json(run_dir) if run_dir.is_dir() else None
    if previous is None:
        return
    for key, value in (("model", config.model), ("budget", config.budget.text), ("device_spec", config.device)):
        before = previous.get(key, {}).get("text") if key == "budget" else previous.get(key)
        if before != value:
            raise ConfigError(f"{run_dir} holds a search with {key} {before!r}, not {value!r}: "
                              f"pick another --out")


def _run_info(ctx: SearchContext, started: str, partial: bool, extra: dict[str, Any]) -> dict[str, Any]:
    import torch, onnxruntime, dac_search  # versions only

    config = ctx.config
    return {
        "command": config.command, "created": started,
        "finished": None if partial else datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "partial": partial, "model": config.model, "weights": config.weights,
        "input_shape": list(ctx.input_shape), "device_spec": config.device, "device": ctx.device_info,
        "budget": {**ctx.budget.to_dict(), "text": config.budget.text}, "objective": ctx.budget.objective,
        "methods": list(config.methods), "correction": config.correction, "seed": config.seed,
        "n_trials": config.trials,
        "proxy": {"kind": "geometric mean of the whole-plan KL and the sum of single-layer KLs",
                  "inputs": "distilled", "n": int(ctx.proxy.inputs.shape[0]), "held_out": ctx.proxy.held_out},
        "versions": {"dac_search": dac_search.__version__, "torch": torch.__version__,
                     "optuna": optuna.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
        **extra,
    }


def _search(ctx: SearchContext, run_dir: Path, view: LiveView) -> SearchOutcome:
    config = ctx.config
    previous = read_run_json(run_dir) or {}
    started = previous.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    baseline = {"flops": ctx.costs.baseline.flops, "params": ctx.costs.baseline.params,
                "latency_ms": ctx.table.original_ms if ctx.table else None, "latency_iqr_ms": None,
                "proxy": 0.0, "top1": None}
    uniform = _uniform_baseline(ctx)
    write_run(run_dir, RunInfo.from_dict(_run_info(ctx, started, True, {"baseline": baseline, "uniform": uniform})))

    storage = config.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    study = open_study(storage, config.seed)
    retried = fail_dead_trials(study)
    if retried:
        view.say(f"{retried} trial(s) left running by a killed worker failed and queued again")
    share = ctx.budget.value / _baseline_cost(ctx)
    shares = sorted({min(share, 0.99), *(s for s in WARM_START_SHARES if s < 0.99)}, reverse=True)
    enqueue_warm_starts(study, ctx.space, [ctx.space.log_lambda_for(s, _exact_share(ctx)) for s in shares])

    scores: dict[str, Any] = {}
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        trial.set_user_attr("worker", WORKER)
        log_lambda = trial.suggest_float("log_lambda", *ctx.space_range)
        shifts = {layer.name: trial.suggest_int(ctx.space.shift_param(layer.name), -1, 1)
                  for layer in ctx.space.layers}
        plan = ctx.space.plan(log_lambda, shifts)
        key = plan.to_json()
        if key not in scores:
            scores[key] = ctx.score(plan)
        score = scores[key]
        cost = ctx.costs.cost(plan)
        latency = ctx.latency(plan)
        relative = ctx.plan_path(trial.number)
        plan.save(run_dir / relative)
        trial.set_user_attr("plan", relative)
        trial.set_user_attr("flops", cost.flops)
        trial.set_user_attr("params", cost.params)
        trial.set_user_attr("latency_ms", latency)
        trial.set_user_attr("agreement", score.agreement)
        trial.set_user_attr("kl", score.kl)
        trial.set_user_attr("kl_additive", score.additive)
        slack = ctx.budget.slack(ctx.budget_cost(plan)) / ctx.budget.value
        trial.set_user_attr("slack", slack)
        trial.set_constraint("budget", slack)
        return score.value, ctx.objective_cost(plan)

    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    view.total = config.trials
    view.done = completed
    refine = Refinement(ctx)
    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            view.trial_done(trial.values[0], trial.values[1], trial.user_attrs.get("slack", 1) <= 0)
        write_trials(run_dir, _points(study))
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= config.trials:
            study.stop()
        elif (trial.number + 1) % TPE_EVERY:  # every TPE_EVERY-th trial is left to TPE, to explore the front
            refine.enqueue_next(study)

    interrupted = False
    if completed < config.trials:
        view.say(f"searching: {ctx.space.describe()}")
        try:
            study.optimize(objective, n_trials=config.trials - completed, timeout=config.timeout_s,
                           callbacks=[after_trial], catch=(), gc_after_trial=False)
        except KeyboardInterrupt:
            interrupted = True
    points = _points(study)
    write_trials(run_dir, points)
    final = _final_front(ctx, run_dir, points, view, measure=not interrupted)
    front, feasible = final.points, final.feasible
    if final.measured:  # end-to-end timings replace the table's predictions in trials.csv too
        measured = {p.trial: p for p in final.measured}
        write_trials(run_dir, [measured.get(p.trial, p) for p in points])
    if final.original_ms is not None:
        baseline["latency_ms"] = final.original_ms  # measured in the same sessions as the front
    if config.eval_data and not interrupted:
        front, baseline = _with_top1(ctx, run_dir, front, baseline)
    write_pareto(run_dir, front)
    done = len([p for p in points if p.state == "COMPLETE"])
    write_run(run_dir, RunInfo.from_dict(_run_info(
        ctx, started, interrupted or done < config.trials,
        {"baseline": baseline, "uniform": uniform, "trials_complete": done})))
    message = "" if feasible else _miss_message(ctx, front)
    return SearchOutcome(run_dir, tuple(front), feasible, interrupted, message)


class Refinement:
    """Queues the next exchange move around the best feasible trial (see ``refine``)."""

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.keys: dict[int, str] = {}  # trial number -> plan, computed once

    def enqueue_next(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return  # warm starts or another worker's move come first
        feasible = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("slack", 1) <= 0]
        if not feasible:
            return
        incumbent = min(feasible, key=lambda t: (t.values[0], t.number))
        for trial in trials:
            if trial.number not in self.keys and "log_lambda" in trial.params:
                self.keys[trial.number] = plan_of(self.ctx.space, trial.params).to_json()
        budget = self.ctx.budget
        params = propose(self.ctx.space, incumbent.params, set(self.keys.values()),
                         lambda plan: budget.slack(self.ctx.budget_cost(plan)) <= 0)
        if params is not None:
            study.enqueue_trial(params, user_attrs={"refined_from": incumbent.number})


def _baseline_cost(ctx: SearchContext) -> float:
    kind = ctx.budget.kind
    if kind == "latency":
        return ctx.table.original_ms
    return float(ctx.costs.baseline.flops if kind == "flops" else ctx.costs.baseline.params)


def _exact_share(ctx: SearchContext) -> Callable[[RankPlan], float]:
    base = _baseline_cost(ctx)
    return lambda plan: ctx.budget_cost(plan) / base


def _points(study: optuna.Study) -> list[Point]:
    points = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        done = trial.state == TrialState.COMPLETE
        points.append(Point(
            trial=trial.number, state=trial.state.name, feasible=done and attrs.get("slack", 1) <= 0,
            proxy=trial.values[0] if done else None, agreement=attrs.get("agreement"),
            flops=attrs.get("flops"), params=attrs.get("params"), latency_ms=attrs.get("latency_ms"),
            latency_iqr_ms=None, latency_predicted_ms=attrs.get("latency_ms"),
            plan=attrs.get("plan") if done else None))
    return points


@dataclass(frozen=True)
class FinalFront:
    """What a search reports: ``points`` (the front, or the closest misses when nothing is ``feasible``),
    every plan ``measured`` end to end, and the original's median latency timed beside them."""

    points: list[Point]
    feasible: bool
    measured: list[Point]
    original_ms: float | None


def _final_front(ctx: SearchContext, run_dir: Path, points: list[Point], view: LiveView,
                 measure: bool) -> FinalFront:
    """The Pareto front of the feasible trials, measured end to end on the device when there is one.

    A relative budget (``0.6x``) judges each plan against the original timed in its own session, not
    hours earlier.
    """
    complete = [p for p in points if p.state == "COMPLETE"]
    cost = (lambda p: p.latency_ms) if ctx.budget.objective == "latency_ms" else (lambda p: p.flops)
    feasible = [p for p in complete if p.feasible]
    if ctx.pool is None or not measure:
        front = pareto_front(feasible, cost)
        return FinalFront(front or closest_misses(complete, ctx), bool(front), [], None)
    # Predictions err: measure the best-proxy plans predicted near the budget, then rescale the predictions
    # by what was measured and go on while an unmeasured plan that may fit has a better proxy than the best
    # measured plan that fits. A relative budget (0.6x) is judged on each plan's ratio to the original
    # timed in the same session.
    relative = ctx.budget.relative_latency
    limit = ctx.config.measure_points * 2
    measured: list[Point] = []
    originals: list[float] = []
    scale = 1.0
    for _ in range(MEASURE_ROUNDS):
        done = {p.trial for p in measured}
        best = min((p.proxy for p in measured if p.feasible), default=float("inf"))
        near = [p for p in complete if p.trial not in done and p.proxy < best
                and ctx.slack_of(_scaled(ctx, p, scale)) <= NEAR_BUDGET]
        candidates = pareto_front(near, cost)[-limit:]  # the front is cheapest first: keep the best proxies
        if not candidates:
            break
        view.say(f"measuring {len(candidates)} Pareto candidates end to end on {ctx.pool.config.name}")
        measured += _measure_points(ctx, run_dir, candidates, relative, originals)
        measured = [replace(p, feasible=ctx.slack_of(p) <= 0) for p in measured]
        if ctx.budget.kind != "latency":
            break  # FLOPs and parameters are exact: nothing to rescale
        errors = [_prediction_error(ctx, p) for p in measured if p.latency_predicted_ms]
        scale = statistics.median(errors) if errors else scale
    if ctx.budget.kind == "latency":
        # One timing can land low by luck (one ResNet-20 plan's paired ratio: 0.865, then 0.941 a minute
        # later), and keeping the plans that fit favours such luck: time each again, keep the slower timing.
        fits = [p for p in measured if p.feasible]
        again = {p.trial: p for p in _measure_points(ctx, run_dir, fits, relative, originals)}
        measured = [_slower(p, again[p.trial]) if p.trial in again else p for p in measured]
        measured = [replace(p, feasible=ctx.slack_of(p) <= 0) for p in measured]
    original_ms = statistics.median(originals) if originals else None
    front = pareto_front([p for p in measured if p.feasible], cost)
    return FinalFront(front or closest_misses(measured or complete, ctx), bool(front), measured, original_ms)


def _measure_points(ctx: SearchContext, run_dir: Path, points: list[Point], relative: bool,
                    originals: list[float]) -> list[Point]:
    """The points with their end-to-end timings; paired with the original under a relative budget (its
    timings are added to ``originals``, and the budget's value follows their median, for the report)."""
    if not points:
        return []
    models = [ctx.proxy.build(RankPlan.load(run_dir / p.plan)) for p in points]
    if not relative:
        results = measure_models(ctx.pool, models, ctx.input_shape)
        return [replace(p, latency_ms=r.median_ms, latency_iqr_ms=r.iqr_ms) for p, r in zip(points, results)]
    pairs = measure_beside(ctx.pool, ctx.model, models, ctx.input_shape)
    originals += [pair.reference.median_ms for pair in pairs]
    ctx.budget = ctx.config.budget.resolve(statistics.median(originals))
    return [replace(p, latency_ms=pair.result.median_ms, latency_iqr_ms=pair.result.iqr_ms, latency_ratio=pair.ratio)
            for p, pair in zip(points, pairs)]


def _slower(first: Point, second: Point) -> Point:
    """Of two timings of one plan, the one less favourable to it."""
    key = (lambda p: p.latency_ratio) if first.latency_ratio is not None else (lambda p: p.latency_ms)
    return first if key(first) >= key(second) else second


def _prediction_error(ctx: SearchContext, point: Point) -> float:
    """Measured over predicted latency; for a paired measurement, on the scale of the table's original."""
    if point.latency_ratio is not None and ctx.table is not None:
        return point.latency_ratio * ctx.table.original_ms / point.latency_predicted_ms
    return point.latency_ms / point.latency_predicted_ms


def _scaled(ctx: SearchContext, point: Point, scale: float) -> Point:
    """A point whose predicted latency is scaled by what end-to-end measurements showed. Under a relative
    budget, also as a ratio to the table's original: the scale its predictions are on."""
    if point.latency_ms is None or ctx.table is None:
        return point
    latency = point.latency_ms * scale
    ratio = latency / ctx.table.original_ms if ctx.budget.relative_latency else None
    return replace(point, latency_ms=latency, latency_ratio=ratio)


def _uniform_baseline(ctx: SearchContext) -> list[dict[str, Any]]:
    """The paper's allocation (one DAC rank everywhere) at every rank, for the report to draw."""
    rows = []
    limits = {name: max_rank(ctx.model.get_submodule(name), "dac") for name in ctx.costs.geometry}
    first = next(iter(limits))  # the input conv stays, as in the paper
    for rank in range(1, max(limits.values()) + 1):
        choices = {}
        for name, limit in limits.items():
            if name == first:
                continue
            variant = ctx.table.fastest_variant(name, "dac", min(rank, limit)) if ctx.table else "grouped"
            choices[name] = LayerChoice("dac", min(rank, limit), variant)
        plan = RankPlan(choices, ctx.config.model, ctx.input_shape, ctx.config.correction)
        cost = ctx.costs.cost(plan)
        if cost.flops >= ctx.costs.baseline.flops:
            break  # higher ranks only cost more than the original
        score = ctx.score(plan)
        rows.append({"rank": rank, "flops": cost.flops, "params": cost.params, "proxy": score.value,
                     "latency_ms": ctx.latency(plan), "top1": None})
    return rows


def _with_top1(ctx: SearchContext, run_dir: Path, front: list[Point],
               baseline: dict[str, Any]) -> tuple[list[Point], dict[str, Any]]:
    from dac_search.report.eval_data import load_eval_data, top1

    norm = {k: v for k, v in (("mean", ctx.config.mean), ("std", ctx.config.std)) if v is not None}
    data = load_eval_data(ctx.config.eval_data, size=tuple(ctx.input_shape[2:]), **norm)
    baseline = {**baseline, "top1": top1(ctx.model, data)}
    front = [replace(p, top1=top1(ctx.proxy.build(RankPlan.load(run_dir / p.plan)), data)) for p in front]
    return front, baseline


def _miss_message(ctx: SearchContext, closest: list[Point]) -> str:
    if not closest:
        return f"no trial finished, so no plan meets the budget {ctx.config.budget.text}"
    best = min(ctx.slack_of(p) for p in closest)
    return (f"no plan meets the budget {ctx.config.budget.text}; the closest misses it by {best:.1%} "
            f"(see pareto.csv)")
