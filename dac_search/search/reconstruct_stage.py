"""The reconstruction stage after a search (``--reconstruct DURATION``): the best plans of the front fitted by
gradient steps on synthetic images, within a wall-time budget, labelled as such in every file.

The closed-form scoring stays inside the search (seconds a trial); this stage costs minutes a plan, so it
takes the few best feasible plans by proxy (``CANDIDATES``), gives each an equal share of the budget (the
whole rest to the next plan where a share is too little, so a short budget fits one plan rather than none), and
turns each share into gradient steps by timing a few first (``step_cost``), so what a plan records
rebuilds it exactly. Each reconstructed plan is written (``plans/trial-N-reconstructed.json``) before its
fitting starts and its row in pareto.csv after it ends, so an interrupted stage keeps what it finished and
a rerun of the same command resumes, mid-plan included (``dac_search.reconstruction.build``). Same layers,
so the latency measured for the closed-form plan stands; the proxy after reconstruction (on the search's
held-out images, not those fitted) and, with ``--eval-data``, real top-1 are written beside the closed
form's, and ``export --pick best`` takes the better of the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from dac_search.eval_data import EvalData, top1
from dac_search.pareto import best_row
from dac_search.plan import RankPlan
from dac_search.progress import Progress, Say
from dac_search.proxies.apply import decompose_model
from dac_search.proxies.synthetic import resolve_kind, synthetic_inputs
from dac_search.reconstruction.engine import compute_device
from dac_search.reconstruction.planning import (
    default_settings,
    reconstructed_plan_path,
    recorded_plan,
    step_cost,
)
from dac_search.rundir import ReconstructionInfo, TrialRow
from dac_search.search.context import SearchContext
from dac_search.search.held_out import HeldOut

CANDIDATES = 3  # plans reconstructed at most: the best few by proxy, as the budget allows


def reconstruct_front(ctx: SearchContext, run_dir: Path, front: Sequence[TrialRow], budget_s: float, say: Say,
                      write: Callable[[list[TrialRow]], None], data: EvalData | None = None,
                      held_out: HeldOut | None = None,
                      interval_s: float = 0.5) -> tuple[list[TrialRow], ReconstructionInfo]:
    """The front with the best few plans reconstructed within ``budget_s``; ``write`` is called with the rows
    after each plan, so a cut-off keeps every plan finished. Progress goes to ``say`` every ``interval_s``."""
    started = time.monotonic()
    base = default_settings(ctx.input_shape, resolve_kind(ctx.model, ctx.config.inputs, ctx.input_shape),
                            ctx.config.reconstruct_images)
    rows = list(front)
    chosen = _candidates(rows)
    images = synthetic_inputs(ctx.model, ctx.input_shape, base.inputs, base.images, base.seed)
    done = 0
    for position, row in enumerate(chosen):
        assert row.plan is not None
        relative = reconstructed_plan_path(row.plan)
        closed = RankPlan.load(run_dir / row.plan)
        plan = recorded_plan(run_dir / relative)
        if plan is None:
            left = budget_s - (time.monotonic() - started)
            share = left / (len(chosen) - position)
            cost = step_cost(ctx.model, closed, base, images)
            settings = cost.settings(share)
            if settings is None:  # too little for an equal share: this plan alone gets the rest
                settings = cost.settings(left)
            if settings is None:
                say(f"reconstruction: {left:.0f} s left is too little for trial {row.trial}; stopping there")
                break
            if not settings.trains:
                say(f"reconstruction: trial {row.trial} has no layer to fit (its float layers are the original's)")
                continue
            plan = replace(closed, reconstruction=settings)
            plan.save(run_dir / relative)
        label = f"trial {row.trial} ({position + 1}/{len(chosen)})"
        model = decompose_model(ctx.model, plan, on_step=Progress(say, f"reconstructing {label}", interval_s, "step "))
        score = ctx.score_model(closed, model)
        updated = replace(row, proxy_reconstructed=score.value, plan_reconstructed=relative,
                          top1_reconstructed=None if data is None else top1(model, data),
                          agreement_reconstructed=None if held_out is None else held_out.agreement(model))
        rows = [updated if r.trial == row.trial else r for r in rows]
        write(rows)
        done += 1
    info = ReconstructionInfo(budget_s=budget_s, spent_s=round(time.monotonic() - started, 1), plans=done,
                              device=compute_device().type, inputs=base.inputs, images=base.images, seed=base.seed)
    return rows, info


def _candidates(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """The best feasible plans by proxy, best first."""
    left = [r for r in rows if r.complete and r.feasible and r.plan]
    chosen = []
    while left and len(chosen) < CANDIDATES:
        best = best_row(left)
        assert best is not None
        chosen.append(best)
        left = [r for r in left if r.trial != best.trial]
    return chosen
