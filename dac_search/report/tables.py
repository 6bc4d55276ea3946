"""The report's text: tables and key-value lists as strings, shared by the HTML, Markdown and terminal views.

Formatting lives here once so the three views show the same digits; each renderer only adds markup.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dac_search.budget import Budget
from dac_search.report.summary import ReportData
from dac_search.rundir import Baseline, ReferencePoint, StageTime, TrialRow, stage_seconds

DASH = "–"
_OBJECTIVE_NAMES = {"latency_ms": "latency", "flops": "FLOPs"}


@dataclass(frozen=True)
class TextTable:
    """Rows of already formatted cells; ``numeric`` columns are right-aligned, ``strong`` rows emphasised."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]
    strong: tuple[bool, ...]


def fmt_float(value: float | None, digits: int) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def fmt_flops(value: float | None) -> str:
    return DASH if value is None else f"{value / 1e6:.2f} M"


def fmt_params(value: float | None) -> str:
    return DASH if value is None else f"{value / 1e3:.1f} K"


def fmt_ratio(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}×"


def _scaled(value: float | None, unit: float, digits: int) -> str:
    return DASH if value is None else f"{value / unit:.{digits}f}"


def _percent(share: float | None) -> str:
    return fmt_float(None if share is None else 100.0 * share, 1)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _speedup(base: Baseline, row: TrialRow | None) -> float | None:
    """Original over plan latency; for a paired measurement, against the original timed beside it."""
    if row is None:
        return 1.0 if base.latency_ms is not None else None
    if row.latency_ratio:
        return 1.0 / row.latency_ratio
    return _ratio(base.latency_ms, row.latency_ms)


def pareto_table(data: ReportData) -> TextTable:
    """The original model, then the Pareto points by cost: what a person chooses from."""
    base = data.results.info.baseline
    held_out = data.results.info.proxy.agreement_images if any(
        row.agreement_held_out is not None for row in data.pareto) else None
    # agreement moves in steps of 1/n: say n, and which images
    agrees = (f"Agrees (% of {held_out} held-out synthetic)" if held_out
              else f"Agrees (% of {data.results.info.proxy.n} scoring synthetic)")
    headers = ["Trial", "Proxy", agrees, "FLOPs (M)", "FLOPs ×", "Params (K)"]
    if data.has_latency:
        headers += ["Latency (ms)", "IQR (ms)", "Speed-up"]
    if data.has_top1:
        headers += ["Top-1 (%)"]
    reconstructed = any(row.plan_reconstructed for row in data.pareto)
    if reconstructed:  # the stage after the search, labelled as such
        headers += (["Proxy reconstructed"] + (["Agrees reconstructed (%)"] if held_out else [])
                    + (["Top-1 reconstructed (%)"] if data.has_top1 else []))
    headers += ["Note"]

    def cells(label: str, row: TrialRow | None, note: str) -> tuple[str, ...]:
        proxy = base.proxy if row is None else row.proxy
        flops = base.flops if row is None else row.flops
        params = base.params if row is None else row.params
        agreement = 1.0 if row is None else (row.agreement_held_out if held_out else row.agreement)
        values = [
            label,
            fmt_float(proxy, 4),
            _percent(agreement),
            _scaled(flops, 1e6, 2),
            fmt_ratio(_ratio(flops, base.flops)),
            _scaled(params, 1e3, 1),
        ]
        if data.has_latency:
            latency = base.latency_ms if row is None else row.latency_ms
            iqr = base.latency_iqr_ms if row is None else row.latency_iqr_ms
            values += [fmt_float(latency, 3), fmt_float(iqr, 3), fmt_ratio(_speedup(base, row))]
        if data.has_top1:
            values += [fmt_float(base.top1 if row is None else row.top1, 2)]
        if reconstructed:
            values += [fmt_float(None if row is None else row.proxy_reconstructed, 4)]
            if held_out:
                values += [_percent(None if row is None else row.agreement_reconstructed)]
            if data.has_top1:
                values += [fmt_float(None if row is None else row.top1_reconstructed, 2)]
        return (*values, note)

    def reference(point: ReferencePoint) -> tuple[str, ...]:
        values = [point.label, fmt_float(point.proxy, 4), _percent(point.agreement) if held_out else DASH,
                  _scaled(point.flops, 1e6, 2),
                  fmt_ratio(_ratio(point.flops, base.flops)), _scaled(point.params, 1e3, 1)]
        if data.has_latency:
            speedup = 1.0 / point.latency_ratio if point.latency_ratio else _ratio(base.latency_ms, point.latency_ms)
            values += [fmt_float(point.latency_ms, 3), "", fmt_ratio(speedup)]
        if data.has_top1:
            values += [fmt_float(point.top1, 2)]
        if reconstructed:
            values += [DASH] * (1 + bool(held_out) + data.has_top1)
        return (*values, "reference")

    references = data.results.info.references
    rows = [cells("original", None, ""), *(reference(point) for point in references)]
    rows += [cells(str(row.trial), row, _note(data, row)) for row in data.pareto]
    numeric = tuple(h not in ("Trial", "Note") for h in headers)
    strong = (False, *(False for _ in references), *(row == data.best for row in data.pareto))
    return TextTable(headers=tuple(headers), rows=tuple(rows), numeric=numeric, strong=strong)


def _note(data: ReportData, row: TrialRow) -> str:
    if row == data.best:
        return "best"
    return "" if row.feasible else "over budget"


def uniform_table(data: ReportData) -> TextTable:
    """The paper's uniform-rank baseline, to judge what the search bought."""
    info = data.results.info
    headers = ["Rank", "Proxy", "FLOPs (M)", "Params (K)"]
    if data.has_latency:
        headers += ["Latency (ms)"]
    with_top1 = any(u.top1 is not None for u in info.uniform)
    if with_top1:
        headers += ["Top-1 (%)"]
    rows = []
    for point in info.uniform:
        values = [
            str(point.rank),
            fmt_float(point.proxy, 4),
            _scaled(point.flops, 1e6, 2),
            _scaled(point.params, 1e3, 1),
        ]
        if data.has_latency:
            values += [fmt_float(point.latency_ms, 3)]
        if with_top1:
            values += [fmt_float(point.top1, 2)]
        rows.append(tuple(values))
    return TextTable(
        headers=tuple(headers), rows=tuple(rows), numeric=(True,) * len(headers), strong=(False,) * len(rows)
    )


def summary_items(data: ReportData) -> tuple[tuple[str, str], ...]:
    """The few lines that answer "what did the night buy": budget, trials, the best plan against the original."""
    info = data.results.info
    counts = data.counts
    budget = info.budget
    items = [
        ("Model", info.model + ("" if info.weights is None else f" (weights {info.weights})")),
        ("Budget", budget_text(budget)),
        ("Objectives", f"minimise {_OBJECTIVE_NAMES[info.objective]} and proxy (lower = closer to the original)"),
        (
            "Trials",
            f"{counts.total} of {info.n_trials}: {counts.complete} complete ({counts.feasible} within budget), "
            f"{counts.failed} failed, {counts.pruned} pruned, {counts.running} running",
        ),
        ("Pareto points", f"{len(data.pareto)} (from {data.pareto_source})"),
        ("Best plan", _best_text(data)),
        ("Original", _original_text(data)),
        ("Run", f"started {info.created}, " + (f"finished {info.finished}" if info.finished else "not finished")),
    ]
    if info.reconstruction is not None:
        stage = info.reconstruction
        items.append(("Reconstruction", f"{stage.plans} plan(s) fitted by gradient steps on {stage.images} synthetic "
                      f"images ({stage.inputs}, seed {stage.seed}; no data) in {stage.spent_s:.0f} s of "
                      f"{stage.budget_s:.0f} s on {stage.device}"))
    if info.stages:
        items.append(("Time", stages_text(info.stages)))
    curve = data.hypervolume
    if curve.values:
        axis = curve.axis
        line = f"{curve.values[-1] / axis.scale:.4g} {axis.unit} × proxy (reference: "
        line += f"{curve.reference[0] / axis.scale:.4g} {axis.unit}, proxy {curve.reference[1]:.4g})"
        if curve.uniform is not None:
            line += f"; uniform-rank plans within budget: {curve.uniform / axis.scale:.4g}"
        items.append(("Hypervolume", line))
    if data.best is not None:
        items.append(("Export", export_command(data.best)))
    return tuple(items)


def stages_text(stages: Sequence[StageTime]) -> str:
    """``host 612 s (distillation 140 s, ...); device 363 s (latency table 187 s, ...)``: what to buy down."""
    parts = []
    for where in ("host", "device"):
        mine = [s for s in stages if s.where == where]
        if mine:
            each = ", ".join(f"{s.name} {s.seconds:.0f} s" for s in mine)
            parts.append(f"{where} {stage_seconds(stages, where):.0f} s ({each})")
    return "; ".join(parts) + " in this session"


def export_command(row: TrialRow) -> str:
    """A placeholder, not the run dir's path: the same run must render the same bytes wherever it is."""
    return f"dac-search export RUN_DIR --pick {row.trial} --format onnx -o model.onnx"


def budget_text(budget: Budget) -> str:
    """``latency ≤ 0.829 ms (30ms)``: the absolute limit first, then what the user typed. A relative latency
    budget reads as the ratio it is judged by (each plan against the original timed beside it): its limit in ms
    is only the original's median times the fraction, which a plan timed in its own pair may pass and still fit."""
    if budget.unit == "ms":
        limit = f"{budget.value:.3f} ms"
    elif budget.unit == "flops":
        limit = f"{budget.value / 1e6:.2f} MFLOPs"
    else:
        limit = f"{budget.value / 1e3:.1f} K params"
    if budget.relative_latency:
        return f"latency ≤ {budget.text} of the original timed beside each plan ({limit} at its median)"
    return f"{budget.kind} ≤ {limit} ({budget.text})"


def _best_text(data: ReportData) -> str:
    best = data.best
    if best is None:
        return "none within the budget"
    info = data.results.info
    parts = [f"trial {best.trial}" + (" reconstructed" if best.plan_reconstructed else ""),
             f"proxy {fmt_float(best.final_proxy, 4)}"]
    top1 = best.final_top1
    if top1 is not None:
        original = info.baseline.top1
        drop = "" if original is None else f" ({top1 - original:+.2f} vs original)"
        parts.append(f"top-1 {top1:.2f} %{drop}")
    if best.latency_ms is not None:
        speedup = _speedup(info.baseline, best)
        parts.append(f"latency {best.latency_ms:.3f} ms" + ("" if speedup is None else f" ({speedup:.2f}× faster)"))
    parts.append(f"FLOPs {fmt_ratio(_ratio(best.flops, info.baseline.flops))} of the original")
    return ", ".join(parts)


def _original_text(data: ReportData) -> str:
    base = data.results.info.baseline
    parts = [f"FLOPs {fmt_flops(base.flops)}", f"params {fmt_params(base.params)}"]
    if base.latency_ms is not None:
        parts.append(f"latency {base.latency_ms:.3f} ms (IQR {fmt_float(base.latency_iqr_ms, 3)})")
    if base.top1 is not None:
        parts.append(f"top-1 {base.top1:.2f} %")
    return ", ".join(parts)


def condition_items(data: ReportData) -> tuple[tuple[str, str], ...]:
    """Where and how it was measured, so a latency number can be trusted or questioned."""
    info = data.results.info
    items = []
    if info.device is None:
        items.append(("Device", "none (cost = FLOPs, no latency measured)"))
    else:
        items += [("Device", info.device.name), ("Runtime", info.device.runtime)]
        items += [(key.replace("_", " "), _detail_text(value)) for key, value in info.device.details
                  if key not in _SAID_ALREADY and value not in (None, "", [], {})]
    items += [("Input shape", "×".join(str(n) for n in info.input_shape)), ("Seed", str(info.seed))]
    items.append(("Command", info.command))
    items += [(f"{name} version", version) for name, version in info.versions]
    return tuple(items)


_SAID_ALREADY = {"name", "device", "runtime", "ok"}  # a device's report of itself repeats what the rows above say


def _detail_text(value: Any) -> str:
    """A device detail as shown: nested values (the runner's conditions) as compact JSON."""
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
