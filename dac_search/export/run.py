"""Export the model of one plan of a finished run: the last step after reading the report.

``pick`` is ``best`` (the most accurate plan within the budget, as the report marks it) or a trial
number. The model is rebuilt from the run's own record (``run.json``'s model and weights, the trial's
plan file), so an export needs nothing but the run dir and the original weights.

Formats: ``onnx``, ``torchscript`` (traced), and ``pt``: a ``torch.save`` dict with the plan and the
decomposed state dict (``dac_search.export.export_pt``), read back with ``load_pt_export``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from dac_search.errors import ConfigError
from dac_search.export.formats import EXPORT_FORMATS, export_model
from dac_search.pareto import best_row, front_rows
from dac_search.plan import RankPlan
from dac_search.proxies.apply import decompose_model
from dac_search.proxies.synthetic import AUTO, resolve_kind, synthetic_inputs
from dac_search.reconstruction.engine import OnStep
from dac_search.reconstruction.planning import (
    MIN_STEPS,
    default_settings,
    plan_settings,
    reconstructed_plan_path,
    recorded_plan,
)
from dac_search.rundir import RunResults, TrialRow, load_run
from dac_search.zoo import load_model, trusted_spec


@dataclass(frozen=True)
class ExportedModel:
    """What was written, for the one line the CLI prints."""

    path: Path
    fmt: str
    row: TrialRow


def pick_trial(results: RunResults, pick: str) -> TrialRow:
    """The row ``pick`` names; ``best`` is the report's best plan. Raise ``ConfigError`` if it has no plan."""
    if pick == "best":
        rows = results.pareto if results.pareto is not None else front_rows(results.trials, results.info.objective)
        row = best_row(rows)
        if row is None:
            raise ConfigError(
                f"no plan in {results.run_dir} meets the budget {results.info.budget.text}; "
                "choose one with --pick TRIAL (see report.md)"
            )
    else:
        try:
            number = int(pick)
        except ValueError:
            raise ConfigError(f"--pick must be 'best' or a trial number, got {pick!r}") from None
        found = results.trial(number)
        if found is None:
            raise ConfigError(f"{results.run_dir} has no trial {number} (trials 0..{len(results.trials) - 1})")
        if found.state != "COMPLETE":
            raise ConfigError(f"trial {number} is {found.state}, not COMPLETE; pick another trial")
        row = found
    plan_file(results, row)
    return row


def plan_file(results: RunResults, row: TrialRow, final: bool = True) -> Path:
    """The plan file of the model ``row`` exports (``final``: the reconstructed one where the stage made it)."""
    path = results.plan_path(row, final)
    if path is None:
        raise ConfigError(f"the plan file of trial {row.trial} ({row.final_plan if final else row.plan}) is "
                          f"missing in {results.run_dir}")
    return path


def original_model(results: RunResults, model: str | None = None) -> nn.Module:
    """The run's model and weights. ``model``: the spec named again by the user, needed where the recorded one
    runs code (``trusted_spec``)."""
    info = results.info
    spec = trusted_spec(info.model, model, str(results.run_dir / "run.json"))
    return load_model(spec, weights=info.weights)


@dataclass(frozen=True)
class Reconstruct:
    """Reconstruct the picked plan before it is exported: in about ``budget_s`` seconds, on ``images``
    synthetic images (None: by input size)."""

    budget_s: float
    images: int | None = None


def exported_plan(results: RunResults, row: TrialRow) -> RankPlan:
    """The plan of ``row`` whose model is exported (the reconstructed one where made), naming the run's model
    and input shape."""
    info = results.info
    return replace(RankPlan.load(plan_file(results, row)), model=info.model, input_shape=tuple(info.input_shape))


def export_run(run_dir: str | Path, output: str | Path, fmt: str, pick: str = "best", model: str | None = None,
               reconstruct: Reconstruct | None = None, on_step: OnStep | None = None) -> ExportedModel:
    """Write the model of the picked plan to ``output`` atomically (a file is either whole or absent).

    ``reconstruct``: reconstruct the plan first (``dac_search.reconstruction``), unless the search's stage
    did; the reconstructed plan is written to the run dir's plans/, where the same command, cut off, resumes it."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    results = load_run(run_dir)
    row = pick_trial(results, pick)
    info = results.info
    original = original_model(results, model)
    if reconstruct is not None and not row.plan_reconstructed:
        row = _reconstructed_row(results, row, original, reconstruct)
    plan = exported_plan(results, row)
    built = decompose_model(original, plan, on_step=on_step)
    path = export_model(built, output, plan, info.model, info.weights, fmt, {"trial": row.trial})
    return ExportedModel(path=Path(path), fmt=fmt, row=row)


def _reconstructed_row(results: RunResults, row: TrialRow, original: nn.Module, asked: Reconstruct) -> TrialRow:
    """``row`` pointing at its reconstructed plan: the one written before (resumed), else one made to fit
    the budget on this machine."""
    assert row.plan is not None
    relative = reconstructed_plan_path(row.plan)
    if recorded_plan(results.run_dir / relative) is None:
        info = results.info
        closed = replace(RankPlan.load(plan_file(results, row, final=False)), model=info.model,
                         input_shape=tuple(info.input_shape))
        shape = tuple(info.input_shape)
        base = default_settings(shape, resolve_kind(original, closed.inputs or AUTO, shape), asked.images)
        images = synthetic_inputs(original, shape, base.inputs, base.images, base.seed)
        settings = plan_settings(original, closed, base, asked.budget_s, images)
        if settings is None:
            raise ConfigError(f"--reconstruct {asked.budget_s:g}s is too short to reconstruct trial {row.trial} here: "
                              f"it needs time for {MIN_STEPS} steps a region; give it more")
        if not settings.trains:
            return row  # no layer to fit: the closed form is the model
        replace(closed, reconstruction=settings).save(results.run_dir / relative)
    return replace(row, plan_reconstructed=relative)
