"""Fixtures of the report tests: copies of the fixed run dirs, so a test may edit or render into them."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
COMPLETE = "cifar10-resnet20"
PARTIAL = "cifar10-resnet20-partial"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The finished 30-trial run (eval data measured, 7 Pareto points, best = trial 22)."""
    return Path(shutil.copytree(FIXTURES / COMPLETE, tmp_path / COMPLETE))


@pytest.fixture
def partial_dir(tmp_path: Path) -> Path:
    """An interrupted run: 12 of 30 trials, one RUNNING, no pareto.csv, no eval data."""
    return Path(shutil.copytree(FIXTURES / PARTIAL, tmp_path / PARTIAL))


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished run rendered once, for tests that only read report.html and report.md."""
    from dac_search.report import write_reports

    run = Path(shutil.copytree(FIXTURES / COMPLETE, tmp_path_factory.mktemp("rendered") / COMPLETE))
    write_reports(run)
    return run


def edit_run_json(run: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((run / "run.json").read_text())
    edit(data)
    (run / "run.json").write_text(json.dumps(data, indent=2))


def edit_csv(path: Path, edit: Callable[[dict[str, str]], None]) -> None:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or ()), list(reader)
    for row in rows:
        edit(row)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
