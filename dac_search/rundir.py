"""The run dir: one format for the search that writes it and for the report, the export and notebooks that read it.

    run.json            RunInfo: what was searched, where, against which baseline (``dac-search/run@1``)
    trials.csv          one TrialRow per trial, in TRIAL_COLUMNS
    pareto.csv          the rows the search reports, in PARETO_COLUMNS (the same without ``state``)
    plans/trial-N.json  the plan of each completed trial

The search rewrites the files atomically after every trial, so a run cut off at any moment leaves valid
files (``partial`` in run.json; no pareto.csv yet). Read back with ``load_run`` (typed rows, for the report
and the export) or ``read_run`` (pandas frames, for a notebook). Everything is validated here, once: a
broken run dir fails with one ``ConfigError`` line naming the file, never a ``KeyError`` deep inside.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from dac_search.atomic import write_text_atomic
from dac_search.budget import UNITS, Budget
from dac_search.errors import ConfigError

RUN_FORMAT = "dac-search/run@1"
RUN_JSON, TRIALS_CSV, PARETO_CSV, PLANS_DIR = "run.json", "trials.csv", "pareto.csv", "plans"
STATES = ("COMPLETE", "FAIL", "PRUNED", "RUNNING", "WAITING")
OBJECTIVES = ("latency_ms", "flops")
BUDGET_KINDS = tuple(UNITS)

R = TypeVar("R")


# ------------------------------------------------------------------------------------------------ trials


@dataclass(frozen=True)
class TrialRow:
    """One trial: a row of trials.csv, or of pareto.csv (whose rows are completed trials, so it has no state).

    ``latency_ms`` is the end-to-end timing of a plan measured at the end of the search, else the latency
    table's prediction (``latency_predicted_ms``); ``latency_ratio`` is to the original timed in the same
    session, set for plans judged against a relative budget (``0.7x``). ``agreement`` is the trial's, on the
    scoring batch; ``agreement_held_out`` that of the exported model on held-out synthetic images, and ``top1``
    its real top-1 with ``--eval-data``, both measured on the front. The ``*_reconstructed`` columns are set
    on the plans the reconstruction stage fitted (``--reconstruct``): the proxy, top-1 and held-out agreement
    of the reconstructed model, and its plan file (same layers, so the same latency). The field order is the
    column order.
    """

    trial: int
    state: str
    feasible: bool
    proxy: float | None = None
    agreement: float | None = None
    flops: int | None = None
    params: int | None = None
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None
    latency_predicted_ms: float | None = None
    latency_ratio: float | None = None
    plan: str | None = None
    top1: float | None = None
    proxy_reconstructed: float | None = None
    top1_reconstructed: float | None = None
    plan_reconstructed: str | None = None
    agreement_held_out: float | None = None
    agreement_reconstructed: float | None = None

    @property
    def final_proxy(self) -> float | None:
        """The proxy of the model the row exports: the reconstructed one where the stage made it."""
        return self.proxy_reconstructed if self.plan_reconstructed else self.proxy

    @property
    def final_top1(self) -> float | None:
        return self.top1_reconstructed if self.plan_reconstructed else self.top1

    @property
    def final_agreement(self) -> float | None:
        """Held-out agreement of the model the row exports (None where it was not measured)."""
        return self.agreement_reconstructed if self.plan_reconstructed else self.agreement_held_out

    @property
    def final_plan(self) -> str | None:
        return self.plan_reconstructed or self.plan

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRow:
        """From ``to_dict`` or a record of a run-dir frame (empty cells are NA); no state means COMPLETE."""
        values = {name: _plain(data.get(name)) for name in TRIAL_COLUMNS}
        return cls(**{**values, "state": values["state"] or "COMPLETE"})


TRIAL_COLUMNS = tuple(f.name for f in fields(TrialRow))
LATER_COLUMNS = ("proxy_reconstructed", "top1_reconstructed", "plan_reconstructed", "agreement_held_out",
                 "agreement_reconstructed")  # read as empty when absent: a run dir written before them
PARETO_COLUMNS = tuple(name for name in TRIAL_COLUMNS if name != "state")


def _plain(value: Any) -> Any:
    """A frame cell as a Python value: NA and NaN are None, numpy scalars their Python equivalent."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------------------------------------ run.json


class _Record:
    """A run.json record that maps to JSON by its fields' type hints (see ``_to_dict`` / ``_from_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], where: str | None = None) -> R:
        return _from_dict(cls, data, where or cls.__name__)


@dataclass(frozen=True)
class DeviceInfo:
    """Where latency was measured: ``name`` and ``runtime``, and ``details`` as the device reported them
    (cpu, threads, governor ...: free-form JSON values, kept in order so the file reads back the same)."""

    name: str
    runtime: str
    details: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "runtime": self.runtime, **dict(self.details)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "device") -> DeviceInfo:
        named = {key: data[key] for key in ("name", "runtime") if key in data}
        rest = {key: value for key, value in data.items() if key not in ("name", "runtime")}
        return _from_dict(cls, {**named, "details": rest}, where)


@dataclass(frozen=True)
class Baseline(_Record):
    """The original, undecomposed model; ``top1`` when measured with ``--eval-data``."""

    flops: int
    params: int
    latency_ms: float | None
    latency_iqr_ms: float | None
    proxy: float
    top1: float | None


@dataclass(frozen=True)
class UniformPoint(_Record):
    """The paper's baseline: every layer decomposed at the same rank."""

    rank: int
    flops: int
    params: int
    proxy: float
    latency_ms: float | None
    top1: float | None


@dataclass(frozen=True)
class ReferencePoint(_Record):
    """What a user could do instead of the search, scored and timed as its plans are: ``original int8`` is
    the original with every conv in int8, calibrated as the plans are (``baselines.int8_original_plan``)."""

    label: str
    flops: int
    params: int
    proxy: float
    latency_ms: float | None
    latency_ratio: float | None  # measured beside the original in one session (None: predicted or unmeasured)
    top1: float | None
    agreement: float | None = None  # on the held-out synthetic images the front is judged on


@dataclass(frozen=True)
class ProxyInfo(_Record):
    """What the proxy measured: ``n`` synthetic inputs of kind ``inputs``, scored ``held_out`` from the fit."""

    kind: str
    inputs: str
    n: int
    held_out: bool
    agreement_images: int | None = None  # held-out synthetic images the exported front is judged on


@dataclass(frozen=True)
class ReconstructionInfo(_Record):
    """What the reconstruction stage did: ``plans`` reconstructed in ``spent_s`` of ``budget_s`` seconds, on
    ``device`` (cpu or cuda), from ``images`` synthetic images of kind ``inputs`` made from ``seed``."""

    budget_s: float
    spent_s: float
    plans: int
    device: str
    inputs: str
    images: int
    seed: int


@dataclass(frozen=True)
class StageTime(_Record):
    """Wall seconds of one stage of a search, and what it waited on: ``device`` (timings, with the exports
    they time) or ``host`` (distillation, proxies, trials, reconstruction). With a remote device the latency
    table is timed while the host distils, so stages can overlap; ``started_s`` is from the set-up's start."""

    name: str
    where: str
    started_s: float
    seconds: float


def stage_seconds(stages: Sequence[StageTime], where: str) -> float:
    """The seconds of the stages that wait on ``where`` (host or device), overlapping or not."""
    return sum(s.seconds for s in stages if s.where == where)


@dataclass(frozen=True)
class RunInfo:
    """Everything in ``run.json``. ``budget`` is absolute (resolved against the original);
    ``trials_complete`` is written when the search ends."""

    command: str
    created: str
    finished: str | None
    partial: bool
    model: str
    weights: str | None
    input_shape: tuple[int, ...]
    device_spec: str
    device: DeviceInfo | None
    budget: Budget
    objective: str
    methods: tuple[str, ...]
    correction: str | None
    seed: int
    n_trials: int
    proxy: ProxyInfo
    versions: tuple[tuple[str, str], ...]
    baseline: Baseline
    uniform: tuple[UniformPoint, ...]
    trials_complete: int | None = None
    study: str | None = None  # the Optuna study's name (None: a run dir from before names were derived)
    settings: tuple[tuple[str, str], ...] = ()  # what changes a score (search.identity); resume compares them
    references: tuple[ReferencePoint, ...] = ()  # the original in int8 (under a search offering int8)
    reconstruction: ReconstructionInfo | None = None  # the stage after the search (--reconstruct), when it ran
    stages: tuple[StageTime, ...] = ()  # where this session's time went (a resumed search: its own session)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = RUN_JSON) -> RunInfo:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must hold a JSON object")
        info = _from_dict(cls, data, where)
        if info.objective not in OBJECTIVES:
            raise ConfigError(f"{where}: objective {info.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if info.budget.kind not in BUDGET_KINDS:
            raise ConfigError(f"{where}: budget: kind {info.budget.kind!r} is not one of {', '.join(BUDGET_KINDS)}")
        if info.budget.value is None:
            raise ConfigError(f"{where}: budget: 'value' must be a finite number, got None")
        if not info.input_shape or min(info.input_shape) <= 0:
            raise ConfigError(f"{where}: input_shape must be a list of positive integers, got {list(info.input_shape)}")
        return info


# Records map to JSON by their fields' type hints, so to_dict and from_dict cannot drift apart: scalars as
# they are, ``X | None`` as X or null, ``tuple[X, ...]`` as a list, ``tuple[tuple[str, X], ...]`` as an object,
# a nested record through its own to_dict / from_dict (the search's Budget: by its fields).


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of ``X | None``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _pairs_of(hint: Any) -> Any | None:
    """The value type of ``tuple[tuple[str, X], ...]`` (a JSON object), else None."""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if typing.get_origin(item) is tuple:
            return typing.get_args(item)[1]
    return None


def _to_dict(record: Any) -> dict[str, Any]:
    hints = _hints(type(record))
    return {f.name: _encode(hints[f.name], getattr(record, f.name)) for f in fields(record)}


def _encode(hint: Any, value: Any) -> Any:
    kind, _ = _unwrap(hint)
    if value is None:
        return None
    if is_dataclass(kind):
        return value.to_dict()
    if (item := _pairs_of(kind)) is not None:
        return {key: _encode(item, v) for key, v in value}
    if typing.get_origin(kind) is tuple:
        return [_encode(typing.get_args(kind)[0], v) for v in value]
    return value


def _from_dict(cls: type[R], data: Mapping[str, Any], where: str) -> R:
    hints = _hints(cls)
    values = {}
    for f in fields(cls):
        if f.name not in data and f.default is not MISSING:
            continue
        kind, optional = _unwrap(hints[f.name])
        if f.name not in data and not optional and not is_dataclass(kind):
            raise ConfigError(f"{where}: missing '{f.name}'")
        values[f.name] = _decode(hints[f.name], data.get(f.name), f.name, where)
    return cls(**values)


def _decode(hint: Any, value: Any, key: str, where: str) -> Any:
    kind, optional = _unwrap(hint)
    if value is None and optional:
        return None
    if is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be an object{' or null' if optional else ''}")
        parse = getattr(kind, "from_dict", None)
        return parse(value, f"{where}: {key}") if parse else _from_dict(kind, value, f"{where}: {key}")
    if (item := _pairs_of(kind)) is not None:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be an object")
        return tuple((str(k), _decode(item, v, str(k), f"{where}: {key}")) for k, v in value.items())
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(_decode(item, v, f"{key}[{i}]", where) for i, v in enumerate(value))
    return _scalar(kind, value, key, where)


def _scalar(kind: Any, value: Any, key: str, where: str) -> Any:
    if kind is Any:
        return value
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
    # bool is an int in Python; a flag where a count belongs is a bug in the writer, not a count.
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class RunResults:
    """A loaded run dir as typed rows. ``pareto`` is None when pareto.csv was not written (interrupted)."""

    run_dir: Path
    info: RunInfo
    trials: tuple[TrialRow, ...]
    pareto: tuple[TrialRow, ...] | None

    def trial(self, number: int) -> TrialRow | None:
        return next((row for row in self.trials if row.trial == number), None)

    def plan_path(self, row: TrialRow, final: bool = False) -> Path | None:
        """The plan file of ``row`` if it was written (its path is checked to be under plans/ on reading);
        ``final``: of the model the row exports (``TrialRow.final_plan``, the reconstructed one where made)."""
        plan = row.final_plan if final else row.plan
        if plan is None:
            return None
        path = self.run_dir / plan
        return path if path.is_file() else None


@dataclass(frozen=True, eq=False)
class RunFrames:
    """A run dir for analysis in a notebook: ``read_run(path).trials.query("feasible")``.

    ``trials`` has TRIAL_COLUMNS, ``pareto`` PARETO_COLUMNS (None for an interrupted run); counts are
    nullable ``Int64``, measures ``float64`` (NaN = not measured), ``feasible`` ``boolean``.
    """

    info: RunInfo
    trials: pd.DataFrame
    pareto: pd.DataFrame | None


def read_run(run_dir: str | Path) -> RunFrames:
    """Read and validate a run dir; raise ``ConfigError`` naming the file on anything missing or malformed."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(f"run dir {root} does not exist (expected {RUN_JSON}, {TRIALS_CSV}, {PARETO_CSV})")
    info = read_run_info(root / RUN_JSON)
    trials = _read_csv(root / TRIALS_CSV, TRIAL_COLUMNS).sort_values("trial", kind="stable", ignore_index=True)
    pareto_file = root / PARETO_CSV
    pareto = None
    if pareto_file.is_file():
        pareto = _read_csv(pareto_file, PARETO_COLUMNS)
    elif not info.partial:
        raise ConfigError(f"{pareto_file} is missing and {RUN_JSON} does not say the run is partial")
    return RunFrames(info=info, trials=trials, pareto=pareto)


def load_run(run_dir: str | Path) -> RunResults:
    """``read_run`` as typed rows: what the report and the export work on."""
    frames = read_run(run_dir)
    pareto = None if frames.pareto is None else _rows(frames.pareto)
    return RunResults(run_dir=Path(run_dir), info=frames.info, trials=_rows(frames.trials), pareto=pareto)


def read_run_info(path: Path) -> RunInfo:
    data = _read_json(path)
    if data.get("format") != RUN_FORMAT:
        raise ConfigError(f"{path}: format is {data.get('format')!r}, expected {RUN_FORMAT!r}")
    return RunInfo.from_dict(data, str(path))


def _rows(frame: pd.DataFrame) -> tuple[TrialRow, ...]:
    return tuple(TrialRow.from_dict(record) for record in frame.to_dict("records"))


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


# The frames' dtypes, from TrialRow's hints: nullable so an empty cell stays "not measured".
_DTYPES = {int: "Int64", float: "float64", bool: "boolean", str: "string"}
DTYPES = {name: _DTYPES[_unwrap(_hints(TrialRow)[name])[0]] for name in TRIAL_COLUMNS}
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """The CSV as a typed frame; cells are checked column by column, the first bad one named with its line."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"{path} is not readable CSV: {str(exc).strip()}") from None
    for name in LATER_COLUMNS:  # a run dir written before these columns existed: nothing was measured there
        if name in columns and name not in raw.columns:
            raw[name] = ""
    missing = [name for name in columns if name not in raw.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}")
    return pd.DataFrame({name: _column(path, name, raw[name].str.strip()) for name in columns})


def _column(path: Path, name: str, text: pd.Series) -> pd.Series:
    empty = text == ""
    kind, optional = _unwrap(_hints(TrialRow)[name])
    if kind in (int, float):
        values = pd.to_numeric(text.mask(empty), errors="coerce")
        bad = ~empty & ~np.isfinite(values)
        if kind is int:
            bad |= ~empty & (values % 1 != 0)
        expected = "an integer" if kind is int else "a finite number"
    elif kind is bool:
        values = text.str.lower().map(_BOOLEANS)
        bad = values.isna()
        expected = "true or false"
    else:
        values = text.mask(empty)
        bad = ~empty & ~text.isin(STATES) if name == "state" else ~empty & ~text.map(_inside_plans)
        expected = f"one of {', '.join(STATES)}" if name == "state" else f"a path under {PLANS_DIR}/"
    if not optional:
        bad |= empty
    if bad.any():
        index = int(np.flatnonzero(bad.to_numpy())[0])
        raise ConfigError(f"{path}:{index + 2}: column {name} has {text.iloc[index]!r}, expected {expected}")
    return values.astype(DTYPES[name])


def _inside_plans(text: str) -> bool:
    """A plan path is relative and under plans/: a run dir never points outside itself (``../x.json``)."""
    parts = PurePosixPath(text).parts
    return len(parts) >= 2 and parts[0] == PLANS_DIR and ".." not in parts and "\\" not in text


# ------------------------------------------------------------------------------------------------ writing


def write_run(run_dir: Path, info: RunInfo) -> Path:
    return write_text_atomic(run_dir / RUN_JSON, json.dumps({"format": RUN_FORMAT, **info.to_dict()}, indent=1) + "\n")


def write_trials(run_dir: Path, rows: Sequence[TrialRow]) -> Path:
    return _write_csv(run_dir / TRIALS_CSV, rows, TRIAL_COLUMNS)


def write_pareto(run_dir: Path, rows: Sequence[TrialRow]) -> Path:
    return _write_csv(run_dir / PARETO_CSV, rows, PARETO_COLUMNS)


def _write_csv(path: Path, rows: Sequence[TrialRow], columns: tuple[str, ...]) -> Path:
    """Floats to 6 significant digits; a value that is not finite is written empty, as not measured."""
    for row in rows:
        if row.state not in STATES or (row.plan is not None and not _inside_plans(row.plan)):
            raise ConfigError(f"{path}: trial {row.trial} has state {row.state!r} and plan {row.plan!r}")
    frame = pd.DataFrame([row.to_dict() for row in rows], columns=list(columns)).astype(
        {name: DTYPES[name] for name in columns})
    floats = [name for name in columns if DTYPES[name] == "float64"]
    frame[floats] = frame[floats].where(np.isfinite(frame[floats]))
    return write_text_atomic(path, frame.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
