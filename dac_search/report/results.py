"""Load a run dir (``run.json``, ``trials.csv``, ``pareto.csv``, ``plans/``) into frozen dataclasses.

The files are the edge: everything is validated here once, so the renderers never see a raw dict and a
broken run dir fails with one ``ConfigError`` line naming the file instead of a ``KeyError`` deep inside.
A run dir left by an interrupted search (``partial``) may lack ``pareto.csv`` and some plan files.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dac_search.errors import ConfigError

RUN_FORMAT = "dac-search/run@1"
STATES = ("COMPLETE", "FAIL", "PRUNED", "RUNNING", "WAITING")
OBJECTIVES = ("latency_ms", "flops")
BUDGET_KINDS = ("latency", "flops", "params")
PARETO_COLUMNS = ("trial", "feasible", "proxy", "flops", "params", "latency_ms", "latency_iqr_ms", "plan")
TRIAL_COLUMNS = ("trial", "state", *PARETO_COLUMNS[1:])

T = TypeVar("T")


@dataclass(frozen=True)
class Budget:
    """The user's budget: ``text`` as typed (``0.7x``) and its absolute ``value`` in ``unit``."""

    text: str
    kind: str
    value: float
    unit: str


@dataclass(frozen=True)
class DeviceInfo:
    """Where latency was measured; ``conditions`` are the free-form keys (cpu, threads, governor ...)."""

    name: str
    runtime: str
    conditions: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Baseline:
    """The original, undecomposed model."""

    flops: int
    params: int
    latency_ms: float | None
    latency_iqr_ms: float | None
    proxy: float
    top1: float | None


@dataclass(frozen=True)
class UniformPoint:
    """The paper's baseline: every layer decomposed at the same rank."""

    rank: int
    flops: int
    params: int
    proxy: float
    latency_ms: float | None
    top1: float | None


@dataclass(frozen=True)
class EvalInfo:
    """Real top-1 measured with ``--eval-data``."""

    data: str
    top1_original: float


@dataclass(frozen=True)
class RunInfo:
    """Everything in ``run.json``."""

    command: str
    created: str
    finished: str | None
    partial: bool
    model: str
    weights: str | None
    input_shape: tuple[int, ...]
    device: DeviceInfo | None
    budget: Budget
    objective: str
    baseline: Baseline
    uniform: tuple[UniformPoint, ...]
    versions: tuple[tuple[str, str], ...]
    n_trials: int
    seed: int
    eval: EvalInfo | None


@dataclass(frozen=True)
class TrialRow:
    """One row of ``trials.csv`` or ``pareto.csv`` (whose rows are COMPLETE trials by definition)."""

    trial: int
    state: str
    feasible: bool
    proxy: float | None
    flops: int | None
    params: int | None
    latency_ms: float | None
    latency_iqr_ms: float | None
    plan: str | None
    top1: float | None = None
    latency_ratio: float | None = None  # to the original timed in the same session (relative budgets)

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE" and self.proxy is not None and self.flops is not None

    def cost(self, objective: str) -> float | None:
        """The value of ``objective`` (``latency_ms`` or ``flops``) for this row, if measured."""
        value = self.latency_ms if objective == "latency_ms" else self.flops
        return None if value is None else float(value)

    def point(self, objective: str) -> tuple[float, float] | None:
        """(cost, proxy) of a completed trial, the pair the Pareto math works on; None if not measured."""
        cost = self.cost(objective)
        if self.state != "COMPLETE" or cost is None or self.proxy is None:
            return None
        return (cost, self.proxy)


@dataclass(frozen=True)
class RunResults:
    """A loaded run dir. ``pareto`` is None when ``pareto.csv`` was not written (interrupted search)."""

    run_dir: Path
    info: RunInfo
    trials: tuple[TrialRow, ...]
    pareto: tuple[TrialRow, ...] | None

    def trial(self, number: int) -> TrialRow | None:
        return next((row for row in self.trials if row.trial == number), None)

    def plan_path(self, row: TrialRow) -> Path | None:
        """The plan file of ``row`` if it was written."""
        if row.plan is None:
            return None
        path = self.run_dir / row.plan
        return path if path.is_file() else None


def load_run(run_dir: str | Path) -> RunResults:
    """Load and validate a run dir; raise ``ConfigError`` naming the file on anything missing or malformed."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(f"run dir {root} does not exist (expected run.json, trials.csv, pareto.csv)")
    info = _load_run_json(root / "run.json")
    trials = tuple(sorted(_read_rows(root / "trials.csv", TRIAL_COLUMNS, state_column=True), key=_trial_key))
    pareto_file = root / "pareto.csv"
    pareto = None
    if pareto_file.is_file():
        pareto = tuple(_read_rows(pareto_file, PARETO_COLUMNS, state_column=False))
    elif not info.partial:
        raise ConfigError(f"{pareto_file} is missing and run.json does not say the run is partial")
    return RunResults(run_dir=root, info=info, trials=trials, pareto=pareto)


def _trial_key(row: TrialRow) -> int:
    return row.trial


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def _load_run_json(path: Path) -> RunInfo:
    data = _read_json(path)
    where = str(path)
    if data.get("format") != RUN_FORMAT:
        raise ConfigError(f"{path}: format is {data.get('format')!r}, expected {RUN_FORMAT!r}")
    objective = _field(data, "objective", str, where)
    if objective not in OBJECTIVES:
        raise ConfigError(f"{path}: objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    shape = _field(data, "input_shape", list, where)
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ConfigError(f"{path}: input_shape must be a list of positive integers, got {shape!r}")
    uniform = _field(data, "uniform", list, where)
    versions = _field(data, "versions", dict, where)
    return RunInfo(
        command=_field(data, "command", str, where),
        created=_field(data, "created", str, where),
        finished=_optional(data, "finished", str, where),
        partial=_field(data, "partial", bool, where),
        model=_field(data, "model", str, where),
        weights=_optional(data, "weights", str, where),
        input_shape=tuple(shape),
        device=_nested(data, "device", _device, where, optional=True),
        budget=_nested(data, "budget", _budget, where),
        objective=objective,
        baseline=_nested(data, "baseline", _baseline, where),
        uniform=tuple(_uniform(item, f"{where}: uniform[{i}]") for i, item in enumerate(uniform)),
        versions=tuple((str(k), "" if v is None else str(v)) for k, v in versions.items()),
        n_trials=_field(data, "n_trials", int, where),
        seed=_field(data, "seed", int, where),
        eval=_nested(data, "eval", _eval, where, optional=True),
    )


def _nested(
    data: Mapping[str, Any],
    key: str,
    parse: Callable[[Mapping[str, Any], str], T],
    where: str,
    optional: bool = False,
) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{key}' must be an object{' or null' if optional else ''}")
    return parse(value, f"{where}: {key}")


def _device(data: Mapping[str, Any], where: str) -> DeviceInfo:
    conditions = tuple(
        (str(k), json.dumps(v) if isinstance(v, (dict, list)) else str(v))
        for k, v in data.items()
        if k not in ("name", "runtime") and v is not None
    )
    return DeviceInfo(
        name=_field(data, "name", str, where), runtime=_field(data, "runtime", str, where), conditions=conditions
    )


def _budget(data: Mapping[str, Any], where: str) -> Budget:
    kind = _field(data, "kind", str, where)
    if kind not in BUDGET_KINDS:
        raise ConfigError(f"{where}: kind {kind!r} is not one of {', '.join(BUDGET_KINDS)}")
    return Budget(
        text=_field(data, "text", str, where),
        kind=kind,
        value=_number(data, "value", where),
        unit=_field(data, "unit", str, where),
    )


def _baseline(data: Mapping[str, Any], where: str) -> Baseline:
    return Baseline(
        flops=_field(data, "flops", int, where),
        params=_field(data, "params", int, where),
        latency_ms=_optional_number(data, "latency_ms", where),
        latency_iqr_ms=_optional_number(data, "latency_iqr_ms", where),
        proxy=_number(data, "proxy", where),
        top1=_optional_number(data, "top1", where),
    )


def _uniform(data: Any, where: str) -> UniformPoint:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be an object")
    return UniformPoint(
        rank=_field(data, "rank", int, where),
        flops=_field(data, "flops", int, where),
        params=_field(data, "params", int, where),
        proxy=_number(data, "proxy", where),
        latency_ms=_optional_number(data, "latency_ms", where),
        top1=_optional_number(data, "top1", where),
    )


def _eval(data: Mapping[str, Any], where: str) -> EvalInfo:
    return EvalInfo(data=_field(data, "data", str, where), top1_original=_number(data, "top1_original", where))


def _field(data: Mapping[str, Any], key: str, kind: type[T], where: str) -> T:
    if key not in data:
        raise ConfigError(f"{where}: missing '{key}'")
    value = data[key]
    # bool is an int in Python; a flag where a count belongs is a bug in the writer, not a count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
    return value


def _optional(data: Mapping[str, Any], key: str, kind: type[T], where: str) -> T | None:
    return None if data.get(key) is None else _field(data, key, kind, where)


def _number(data: Mapping[str, Any], key: str, where: str) -> float:
    if key not in data:
        raise ConfigError(f"{where}: missing '{key}'")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def _optional_number(data: Mapping[str, Any], key: str, where: str) -> float | None:
    return None if data.get(key) is None else _number(data, key, where)


def _read_rows(path: Path, columns: tuple[str, ...], state_column: bool) -> list[TrialRow]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}")
            return [_row(record, state_column, f"{path}:{reader.line_num}") for record in reader]
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path} is not readable CSV: {exc}") from None


def _row(record: Mapping[str, str | None], state_column: bool, where: str) -> TrialRow:
    def cell(key: str) -> str:
        return (record.get(key) or "").strip()

    def parse(key: str, convert: Callable[[str], T], expected: str) -> T | None:
        text = cell(key)
        if not text:
            return None
        try:
            return convert(text)
        except ValueError:
            raise ConfigError(f"{where}: column {key} has {text!r}, expected {expected}") from None

    trial = parse("trial", int, "an integer")
    if trial is None:
        raise ConfigError(f"{where}: empty trial number")
    state = cell("state").upper() if state_column else "COMPLETE"
    if state not in STATES:
        raise ConfigError(f"{where}: state {state!r} is not one of {', '.join(STATES)}")
    return TrialRow(
        trial=trial,
        state=state,
        feasible=bool(parse("feasible", _boolean, "true or false")),
        proxy=parse("proxy", _finite, "a finite number"),
        flops=parse("flops", _integer, "an integer"),
        params=parse("params", _integer, "an integer"),
        latency_ms=parse("latency_ms", _finite, "a finite number"),
        latency_iqr_ms=parse("latency_iqr_ms", _finite, "a finite number"),
        plan=cell("plan") or None,
        top1=parse("top1", _finite, "a finite number"),
        latency_ratio=parse("latency_ratio", _finite, "a finite number"),
    )


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _integer(text: str) -> int:
    """Counts written by pandas may come out as ``40813184.0``."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)
