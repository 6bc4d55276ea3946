"""Turn a loaded run into the numbers every renderer draws: panels, hypervolume curve, layer grid, counts.

Like optuna's ``_get_pareto_front_info`` feeding both plot backends: computed once here, so the HTML,
the Markdown and the terminal table cannot disagree about the front, the best plan or the reference point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dac_search.budget import Budget
from dac_search.pareto import best_row, front_rows, hypervolume, hypervolume_history
from dac_search.plan import LayerChoice, RankPlan
from dac_search.rundir import RunResults, TrialRow, UniformPoint

# Margin above the worst proxy, so the worst completed trial still adds area to the hypervolume.
PROXY_MARGIN = 1.1


@dataclass(frozen=True)
class CostAxis:
    """A cost trials are plotted against: its column, and the unit shown (raw value / ``scale``)."""

    key: str
    name: str
    unit: str
    scale: float

    @property
    def label(self) -> str:
        return f"{self.name} ({self.unit})"


LATENCY = CostAxis(key="latency_ms", name="latency", unit="ms", scale=1.0)
FLOPS = CostAxis(key="flops", name="FLOPs", unit="MFLOPs", scale=1e6)


@dataclass(frozen=True)
class Mark:
    """One point on a Pareto panel."""

    trial: int
    cost: float
    proxy: float
    feasible: bool


@dataclass(frozen=True)
class UniformMark:
    rank: int
    cost: float
    proxy: float


@dataclass(frozen=True)
class FrontPanel:
    """Everything one "cost against proxy" plot shows; costs are in raw units (ms, FLOPs)."""

    axis: CostAxis
    trials: tuple[Mark, ...]
    pareto: tuple[Mark, ...]
    original: tuple[float, float] | None  # (cost, proxy) of the undecomposed model
    uniform: tuple[UniformMark, ...]
    budget: float | None
    is_objective: bool
    references: tuple[tuple[str, float, float], ...] = ()  # (label, cost, proxy): the original in int8


@dataclass(frozen=True)
class HypervolumeCurve:
    """Hypervolume of the feasible front after each trial, and of the uniform-rank plans for comparison.

    In raw units (ms or FLOPs times proxy); divide by ``axis.scale`` to show it.
    """

    axis: CostAxis
    trials: tuple[int, ...]
    values: tuple[float, ...]
    reference: tuple[float, float]
    uniform: float | None


@dataclass(frozen=True)
class LayerGrid:
    """Per-layer choices of the Pareto plans: ``cells[i][j]`` is layer i in plan j, None = kept;
    ``precisions[i][j]`` the precision it runs in."""

    layers: tuple[str, ...]
    trials: tuple[int, ...]
    cells: tuple[tuple[LayerChoice | None, ...], ...]
    missing: tuple[int, ...]
    precisions: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class TrialCounts:
    total: int
    complete: int
    feasible: int
    failed: int
    pruned: int
    running: int


@dataclass(frozen=True)
class AgreementMark:
    """A plan in percentages a person reads: held-out agreement with the original, and real top-1 if measured."""

    label: str
    cost: float
    agreement: float | None
    top1: float | None
    feasible: bool


@dataclass(frozen=True)
class AgreementPanel:
    """The Pareto points' held-out agreement (and real top-1) against the objective's cost, the original and
    the references beside them; ``images``: how many held-out synthetic images the agreement is taken on."""

    axis: CostAxis
    points: tuple[AgreementMark, ...]
    original: AgreementMark | None
    references: tuple[AgreementMark, ...]
    budget: float | None
    images: int | None


@dataclass(frozen=True)
class ReportData:
    """The single input of every renderer."""

    results: RunResults
    counts: TrialCounts
    pareto: tuple[TrialRow, ...]
    pareto_source: str
    best: TrialRow | None
    panels: tuple[FrontPanel, ...]
    hypervolume: HypervolumeCurve
    layers: LayerGrid
    has_latency: bool
    has_top1: bool
    notes: tuple[str, ...]
    agreement: AgreementPanel | None = None  # None: the front was judged on no held-out images nor data


def build_report_data(results: RunResults) -> ReportData:
    """Compute everything the report shows from a loaded run, measuring nothing."""
    info = results.info
    objective = LATENCY if info.objective == "latency_ms" else FLOPS
    source = "pareto.csv" if results.pareto is not None else "trials.csv"
    pareto_rows = results.pareto if results.pareto is not None else front_rows(results.trials, info.objective)
    pareto = tuple(sorted(pareto_rows, key=lambda r: (r.cost(info.objective) or 0.0, r.proxy or 0.0, r.trial)))
    has_latency = info.device is not None and any(
        value is not None
        for value in (info.baseline.latency_ms, *(r.latency_ms for r in (*results.trials, *pareto)))
    )
    axes = (LATENCY, FLOPS) if has_latency else (FLOPS,)
    best = best_row(pareto)
    notes = []
    if pareto and not any(r.feasible for r in pareto):
        notes.append(f"No trial met the budget {info.budget.text}; the table shows the closest trials.")
    if results.pareto is None:
        notes.append("pareto.csv was not written (interrupted search): the front is computed from trials.csv.")
    if info.budget.kind == "params":
        notes.append(f"The budget is on parameters ({info.budget.text} = {info.budget.value:,.0f}).")
    return ReportData(
        results=results,
        counts=_counts(results.trials),
        pareto=pareto,
        pareto_source=source,
        best=best,
        panels=tuple(_panel(results, pareto, axis, axis == objective) for axis in axes),
        hypervolume=_hypervolume(results, objective),
        layers=_layer_grid(results, pareto),
        has_latency=has_latency,
        has_top1=any(r.top1 is not None for r in pareto) or info.baseline.top1 is not None,
        notes=tuple(notes),
        agreement=_agreement_panel(results, pareto, objective),
    )


def _agreement_panel(results: RunResults, pareto: tuple[TrialRow, ...], axis: CostAxis) -> AgreementPanel | None:
    info = results.info
    points = tuple(AgreementMark(str(r.trial), cost, _pct(r.final_agreement), r.final_top1, r.feasible)
                   for r in pareto if (cost := r.cost(axis.key)) is not None
                   and (r.final_agreement is not None or r.final_top1 is not None))
    if not points:
        return None
    original_cost = _original_cost(results, axis)
    original = None if original_cost is None else AgreementMark("original", original_cost, 100.0,
                                                                info.baseline.top1, True)
    references = tuple(AgreementMark(r.label, cost, _pct(r.agreement), r.top1, True) for r in info.references
                       if (cost := (r.latency_ms if axis is LATENCY else r.flops)) is not None)
    budget_kind = "latency" if axis is LATENCY else "flops"
    return AgreementPanel(axis, points, original, references,
                          info.budget.value if info.budget.kind == budget_kind else None, info.proxy.agreement_images)


def _pct(share: float | None) -> float | None:
    return None if share is None else 100.0 * share


def _counts(trials: tuple[TrialRow, ...]) -> TrialCounts:
    return TrialCounts(
        total=len(trials),
        complete=sum(r.state == "COMPLETE" for r in trials),
        feasible=sum(r.complete and r.feasible for r in trials),
        failed=sum(r.state == "FAIL" for r in trials),
        pruned=sum(r.state == "PRUNED" for r in trials),
        running=sum(r.state in ("RUNNING", "WAITING") for r in trials),
    )


def _mark(row: TrialRow, axis: CostAxis) -> Mark | None:
    pair = row.point(axis.key)
    return None if pair is None else Mark(trial=row.trial, cost=pair[0], proxy=pair[1], feasible=row.feasible)


def _panel(results: RunResults, pareto: tuple[TrialRow, ...], axis: CostAxis, is_objective: bool) -> FrontPanel:
    info = results.info
    original_cost = _original_cost(results, axis)
    budget_kind = "latency" if axis is LATENCY else "flops"
    return FrontPanel(
        axis=axis,
        trials=tuple(m for m in (_mark(r, axis) for r in results.trials) if m is not None),
        pareto=tuple(sorted((m for m in (_mark(r, axis) for r in pareto) if m is not None), key=_by_cost)),
        original=None if original_cost is None else (original_cost, info.baseline.proxy),
        uniform=tuple(
            UniformMark(u.rank, cost, u.proxy) for u in info.uniform if (cost := _uniform_cost(u, axis)) is not None
        ),
        budget=info.budget.value if info.budget.kind == budget_kind else None,
        is_objective=is_objective,
        references=tuple((r.label, cost, r.proxy) for r in info.references
                         if (cost := (r.latency_ms if axis is LATENCY else r.flops)) is not None),
    )


def _by_cost(mark: Mark) -> tuple[float, float, int]:
    return (mark.cost, mark.proxy, mark.trial)


def _hypervolume(results: RunResults, axis: CostAxis) -> HypervolumeCurve:
    """Reference point: the original model's cost (a plan costlier than it gains nothing) and the worst proxy.

    Fixed per run so the curve only rises; falls back to the worst trial cost when the baseline lacks it.
    """
    info = results.info
    points = [row.point(axis.key) if row.feasible else None for row in results.trials]
    original = _original_cost(results, axis)
    worst_cost = max((p[0] for p in points if p is not None), default=1.0)
    worst_proxy = max((r.proxy for r in results.trials if r.complete and r.proxy is not None), default=0.0)
    reference = (original if original is not None else worst_cost, worst_proxy * PROXY_MARGIN or 1.0)
    uniform = [
        (cost, u.proxy)
        for u in info.uniform
        if (cost := _uniform_cost(u, axis)) is not None and _uniform_feasible(u, info.budget)
    ]
    return HypervolumeCurve(
        axis=axis,
        trials=tuple(r.trial for r in results.trials),
        values=hypervolume_history(points, reference),
        reference=reference,
        uniform=hypervolume(uniform, reference) if uniform else None,
    )


def _original_cost(results: RunResults, axis: CostAxis) -> float | None:
    base = results.info.baseline
    return base.latency_ms if axis is LATENCY else float(base.flops)


def _uniform_cost(point: UniformPoint, axis: CostAxis) -> float | None:
    return point.latency_ms if axis is LATENCY else float(point.flops)


def _uniform_feasible(point: UniformPoint, budget: Budget) -> bool:
    """Only uniform-rank plans within the budget compete with the feasible front."""
    measured = {"latency": point.latency_ms, "flops": point.flops, "params": point.params}[budget.kind]
    return measured is not None and measured <= budget.value


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """``layer1.10.conv1`` after ``layer1.9.conv1``: model order for the usual dotted names."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


def _layer_grid(results: RunResults, pareto: tuple[TrialRow, ...]) -> LayerGrid:
    plans: dict[int, RankPlan] = {}
    missing = []
    for row in pareto:
        path = results.plan_path(row)
        if path is None:
            missing.append(row.trial)
            continue
        plans[row.trial] = RankPlan.load(path)
    names = sorted({name for plan in plans.values() for name in (*plan.layers, *plan.precisions)}, key=_natural_key)
    trials = tuple(row.trial for row in pareto if row.trial in plans)
    cells = tuple(tuple(plans[t].layers.get(name) for t in trials) for name in names)
    precisions = tuple(tuple(plans[t].precision_of(name) for t in trials) for name in names)
    return LayerGrid(layers=tuple(names), trials=trials, cells=cells, missing=tuple(missing), precisions=precisions)
