"""The search controller: set up, run the Optuna study, measure the front, write the run dir.

model -> factors -> plan -> decomposed model -> {proxy, cost, latency} -> study -> results.
The pieces live beside it: ``context`` (set-up), ``objective`` (one trial, the callback after it),
``refine`` (exchange moves), ``final`` (the end-of-run measurement policy), ``baselines`` (uniform
DAC and real top-1), ``record`` (run.json), ``study`` (Optuna storage, warm starts, resume).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dac_search.errors import ConfigError
from dac_search.eval_data import EvalData, top1
from dac_search.plan import RankPlan
from dac_search.progress import Progress
from dac_search.provenance import now
from dac_search.proxies.apply import fit_inputs
from dac_search.proxies.correction import fit_of
from dac_search.rundir import Baseline, RunInfo, TrialRow, read_run_info, write_pareto, write_run, write_trials
from dac_search.search.baselines import int8_reference, measured_references, uniform_baseline
from dac_search.search.config import SearchConfig
from dac_search.search.context import SearchContext, build_context, load_inputs
from dac_search.search.final import DeviceTimer, FinalFront, measured_front, unmeasured_front
from dac_search.search.held_out import HeldOut, judged_front, worth_judging
from dac_search.search.identity import LEGACY_STUDY, SearchIdentity, identity_of, refuse_difference
from dac_search.search.live import LiveView
from dac_search.search.objective import AfterTrial, Objective, rows_of, stop_at_total
from dac_search.search.reconstruct_stage import reconstruct_front
from dac_search.search.record import run_info
from dac_search.search.stages import DEVICE, HOST, beside
from dac_search.search.study import RUN_ATTR, Heartbeat, enqueue_warm_starts, fail_dead_trials, open_study
from profilers.devices import load_device

WARM_START_SHARES = (0.8, 0.6, 0.5, 0.4)


@dataclass(frozen=True)
class SearchOutcome:
    run_dir: Path
    pareto: tuple[TrialRow, ...]
    feasible: bool
    interrupted: bool
    message: str


def run_search(config: SearchConfig, view_factory: Callable[..., LiveView] = LiveView) -> SearchOutcome:
    """Run a search, or resume the one in the run dir; every file written stays valid if it is cut off."""
    run_dir = config.out or config.default_out()
    identity = identity_of(config, config.study)
    previous = _previous_run(run_dir, config, identity)
    if previous is not None and not previous.settings and config.study is None:
        identity = replace(identity, name=LEGACY_STUDY)  # a run dir from before study names were derived
    elif previous is not None and previous.study and config.study is None:
        identity = replace(identity, name=previous.study)  # resumed: its study, though settings were added since
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if config.has_device:
        load_device(config.device)  # a bad device config is one line before anything is written
    # a shared storage is opened before any set-up: a wrong URL must not wait for minutes of distillation
    heartbeat = Heartbeat.of_grace(config.heartbeat_s)
    opened = open_study(config.storage, config.seed, identity, heartbeat) if config.storage else None
    inputs = load_inputs(config)  # a model, input shape or --eval-data it cannot use: before anything is written
    view = view_factory(config.trials, _cost_text(config))
    with view:
        # the run dir after the set-up: a device that cannot be reached leaves no empty study behind
        ctx = build_context(config, inputs, view.say, view.warn, view.progress_interval_s)
        if ctx.pool is not None:
            view.hosts = ctx.pool.status
        try:
            (run_dir / "plans").mkdir(parents=True, exist_ok=True)
            storage_url = config.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"
            study, _ = opened or open_study(storage_url, config.seed, identity, heartbeat)
            return _search(ctx, inputs.eval_data, identity, study, storage_url, run_dir, view,
                           previous.created if previous else now())
        finally:
            ctx.close()


def _cost_text(config: SearchConfig) -> Callable[[float], str]:
    if config.budget.objective == "latency_ms":
        return lambda cost: f"{cost:.2f} ms"
    return lambda cost: f"{cost / 1e6:.1f} MFLOPs"


def _previous_run(run_dir: Path, config: SearchConfig, identity: SearchIdentity) -> RunInfo | None:
    """The run.json of a search to resume in ``run_dir``; a search with other settings there is refused
    (its trials were scored differently and would end up on one front with the new ones)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file")
    if not (run_dir / "run.json").is_file():
        return None
    previous = read_run_info(run_dir / "run.json")
    if previous.settings:
        refuse_difference(str(run_dir), dict(previous.settings), identity.settings)
        return previous
    for key, before, value in (
        ("model", previous.model, config.model),
        ("budget", previous.budget.text, config.budget.text),
        ("device_spec", previous.device_spec, config.device),
    ):
        if before != value:
            raise ConfigError(f"{run_dir} holds a search with {key} {before!r}, not {value!r}: pick another --out")
    return previous


def _search(ctx: SearchContext, data: EvalData | None, identity: SearchIdentity, study: optuna.Study,
            storage_url: str, run_dir: Path, view: LiveView, started: str) -> SearchOutcome:
    config = ctx.config
    baseline = Baseline(flops=ctx.costs.baseline.flops, params=ctx.costs.baseline.params,
                        latency_ms=ctx.table.original_ms if ctx.table else None, latency_iqr_ms=None,
                        proxy=0.0, top1=None)
    with ctx.clock.stage("baselines scored (uniform ranks, original in int8)", HOST):
        uniform = uniform_baseline(ctx)
        references = int8_reference(ctx)
    _record(run_dir, study, run_info(ctx, identity, started, partial=True, baseline=baseline, uniform=uniform,
                                     references=references))

    retried = fail_dead_trials(study)
    if retried:
        view.say(f"{retried} trial(s) left running by a killed worker failed and queued again")
    target = ctx.budget.value / ctx.baseline_cost()
    shares = sorted({*(min(target * (1 - m), 0.99) for m in ctx.margins), *(s for s in WARM_START_SHARES if s < 0.99)},
                    reverse=True)
    enqueue_warm_starts(study, storage_url, ctx.space, [ctx.space.log_lambda_for(s, ctx.share) for s in shares])

    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    view.total, view.done = config.trials, completed
    interrupted = False
    if completed < config.trials:
        view.say(f"searching: {ctx.space.describe()}")
        try:
            with ctx.clock.stage("trials", HOST):
                study.optimize(Objective(ctx, run_dir, config.trials), n_trials=config.trials - completed,
                               timeout=config.timeout_s, catch=(), gc_after_trial=False,
                               callbacks=[AfterTrial(ctx, run_dir, config.trials, view.trial_done),
                                          stop_at_total(config.trials)])
        except KeyboardInterrupt:
            interrupted = True

    rows = rows_of(study, run_dir)
    write_trials(run_dir, rows)
    judging = not interrupted and (data is not None or ctx.agreement_images > 0)
    # A remote device times the front while the host makes the images it is judged on (they share nothing), as
    # soon as a trial is worth judging as predicted; a local one times on the host's cores, so there they come
    # after, and only for a measured front with a point worth judging.
    early = judging and ctx.remote and bool(worth_judging(rows, data, config.measure_points))

    def measure() -> FinalFront:
        with ctx.clock.stage("final measurement", DEVICE) if ctx.pool and not interrupted else nullcontext():
            return _final_front(ctx, run_dir, rows, view, measure=not interrupted)

    final, early_images = beside(measure, lambda: _judging_images(ctx, view) if early else None, overlap=early)
    front = final.points
    if final.measured:  # end-to-end timings replace the table's predictions in trials.csv too
        measured = {p.trial: p for p in final.measured}
        rows = [measured.get(p.trial, p) for p in rows]
        write_trials(run_dir, rows)
    budget = ctx.budget
    if final.original_ms is not None:  # the original timed in the same sessions as the front
        baseline = replace(baseline, latency_ms=final.original_ms)
        budget = config.budget.resolve(final.original_ms) if ctx.budget.relative_latency else budget
    held_out = None
    # nothing is distilled or built for a front with no point worth judging (no plan fits, no --eval-data)
    if judging and worth_judging(front, data, config.measure_points):
        held_out = early_images if early else _judging_images(ctx, view)
        with ctx.clock.stage("front judged on held-out images" + (" and --eval-data" if data else ""), HOST):
            label = "building and judging the front's models as export writes them"
            view.say(label)
            front = judged_front(ctx.model, run_dir, front, held_out, data, config.measure_points,
                                 Progress(view.say, label, view.progress_interval_s, "plan "))
            if data is not None:
                baseline = replace(baseline, top1=top1(ctx.model, data))
    if not interrupted and references:
        view.say("measuring the original in int8 beside the original")
        with ctx.clock.stage("int8 reference", DEVICE):
            references = measured_references(ctx, references, data, held_out)
    write_pareto(run_dir, front)
    reconstruction = None
    if config.reconstruct_s and not interrupted and final.feasible:
        try:
            with ctx.clock.stage("reconstruction", HOST):
                front, reconstruction = reconstruct_front(ctx, run_dir, front, config.reconstruct_s, view.say,
                                                          lambda points: _write_front(run_dir, points, rows),
                                                          data, held_out, view.progress_interval_s)
        except KeyboardInterrupt:
            interrupted = True  # the plans finished are in pareto.csv; the same command resumes the rest
    done = sum(p.state == "COMPLETE" for p in rows)
    _record(run_dir, study, run_info(ctx, identity, started, partial=interrupted or done < config.trials,
                                     baseline=baseline, uniform=uniform, budget=budget, trials_complete=done,
                                     references=references, reconstruction=reconstruction,
                                     stages=tuple(ctx.clock.stages)))
    message = "" if final.feasible else _miss_message(ctx, front)
    return SearchOutcome(run_dir, tuple(front), final.feasible, interrupted, message)


def _write_front(run_dir: Path, front: list[TrialRow], rows: list[TrialRow]) -> None:
    """pareto.csv, and the reconstruction columns of its rows in trials.csv too (``--pick TRIAL`` reads them)."""
    write_pareto(run_dir, front)
    stage = {p.trial: p for p in front if p.plan_reconstructed}
    write_trials(run_dir, [p if p.trial not in stage else replace(
        p, proxy_reconstructed=stage[p.trial].proxy_reconstructed, top1_reconstructed=stage[p.trial].top1_reconstructed,
        plan_reconstructed=stage[p.trial].plan_reconstructed) for p in rows])


def _record(run_dir: Path, study: optuna.Study, info: RunInfo) -> None:
    """run.json in this worker's run dir, and in the study for ``dac-search report --storage``."""
    write_run(run_dir, info)
    study.set_user_attr(RUN_ATTR, info.to_dict())


def _judging_images(ctx: SearchContext, view: LiveView) -> HeldOut | None:
    """What the front is judged with, made (and cached) now: the images a corrected plan's own model is fitted on
    (``export`` builds it so), and the held-out images, or None where none are asked for. On a copy of the model:
    beside a remote device's final measurement, the proxy runs the original in the other thread, and distilling
    hooks every BatchNorm of the model it runs."""
    model = copy.deepcopy(ctx.model)  # the same weights: the same cached images
    with ctx.clock.stage("images the front is judged with", HOST):
        if ctx.config.correction:
            plan = RankPlan({}, **ctx.space.plan_fields())  # type: ignore[arg-type]
            label = f"making the {fit_of(ctx.input_shape, plan.fit_images)[0]} inputs the front's models are fitted on"
            view.say(label)
            fit_inputs(model, plan, Progress(view.say, label, view.progress_interval_s, "step "))
        if not ctx.agreement_images:
            return None
        label = f"making {ctx.agreement_images} held-out synthetic inputs to judge the front on"
        view.say(label)
        return HeldOut.of(model, ctx.input_shape, ctx.config.inputs, ctx.agreement_images, ctx.config.seed,
                          Progress(view.say, label, view.progress_interval_s, "step "))


def _final_front(ctx: SearchContext, run_dir: Path, rows: list[TrialRow], view: LiveView,
                 measure: bool) -> FinalFront:
    """The front as measured on the device when there is one and the search was not interrupted."""
    complete = [p for p in rows if p.state == "COMPLETE"]
    if ctx.pool is None or not measure:
        return unmeasured_front(complete, ctx.judge)
    # built by the proxy, fitted on its own inputs: the plan's architecture, which is all a timing sees, without
    # distilling the plan's larger fit in the middle of a search (the export pays that once)
    timer = DeviceTimer(ctx.pool, lambda p: ctx.proxy.build(RankPlan.load(run_dir / p.plan)), ctx.model,
                        ctx.input_shape, paired=ctx.budget.relative_latency)
    return measured_front(complete, ctx.judge, timer, ctx.config.measure_points, view.say, ctx.pool.config.name)


def _miss_message(ctx: SearchContext, closest: list[TrialRow]) -> str:
    if not closest:
        return f"no trial finished, so no plan meets the budget {ctx.config.budget.text}"
    best = min(ctx.judge.slack_of(p) for p in closest)
    return (f"no plan meets the budget {ctx.config.budget.text}; the closest misses it by {best:.1%} "
            f"(see pareto.csv)")
