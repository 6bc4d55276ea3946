"""The run dir: ``run.json``, ``trials.csv``, ``pareto.csv``, ``plans/trial-N.json``, written atomically.

Rewritten from the study after every trial, so a run cut off at any moment leaves valid files.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dac_search.atomic import write_text_atomic

RUN_FORMAT = "dac-search/run@1"
COLUMNS = ("trial", "feasible", "proxy", "agreement", "flops", "params", "latency_ms", "latency_iqr_ms",
           "latency_predicted_ms", "latency_ratio", "plan", "top1")


@dataclass(frozen=True)
class Point:
    """One evaluated plan: what the CSVs hold per row."""

    trial: int
    state: str
    feasible: bool
    proxy: float | None
    agreement: float | None
    flops: int | None
    params: int | None
    latency_ms: float | None
    latency_iqr_ms: float | None
    latency_predicted_ms: float | None
    plan: str | None
    top1: float | None = None
    latency_ratio: float | None = None  # to the original timed in the same interleaved session

    def row(self, with_state: bool) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in COLUMNS}
        if with_state:
            values = {"trial": self.trial, "state": self.state, **values}
        return {key: _cell(value) for key, value in values.items()}


def _cell(value: object) -> object:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_csv(path: Path, points: Iterable[Point], with_state: bool) -> Path:
    buffer = io.StringIO()
    columns = ("trial", "state", *COLUMNS[1:]) if with_state else COLUMNS
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for point in points:
        writer.writerow(point.row(with_state))
    return write_text_atomic(path, buffer.getvalue())


def write_trials(run_dir: Path, points: Sequence[Point]) -> Path:
    return write_csv(run_dir / "trials.csv", points, with_state=True)


def write_pareto(run_dir: Path, points: Sequence[Point]) -> Path:
    return write_csv(run_dir / "pareto.csv", points, with_state=False)


def read_run(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "run.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_run(run_dir: Path, data: Mapping[str, Any]) -> Path:
    return write_text_atomic(run_dir / "run.json", json.dumps({"format": RUN_FORMAT, **data}, indent=1) + "\n")
