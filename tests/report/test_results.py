"""Loading a run dir written by the search's writer: its values, and one ConfigError line per kind of breakage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dac_search.errors import ConfigError
from dac_search.rundir import load_run
from tests.report.conftest import BUDGET_MS, PARETO, PARTIAL_TRIALS, SEARCHED, UNIFORM, edit_csv, edit_run_json


def test_complete_run_loads_with_its_values(run_dir: Path) -> None:
    results = load_run(run_dir)
    info = results.info
    assert (info.model, info.objective, info.partial, info.n_trials) == ("cifar10-resnet20", "latency_ms", False, 30)
    assert info.budget.value == pytest.approx(BUDGET_MS) and info.budget.kind == "latency"
    assert info.device is not None and ("threads", 1) in info.device.details
    assert info.baseline.top1 is not None
    assert [u.rank for u in info.uniform] == list(UNIFORM)
    assert [r.trial for r in results.trials] == list(SEARCHED)
    assert [r.state for r in results.trials] == [s[0] for s in SEARCHED.values()]
    assert results.pareto is not None and [r.trial for r in results.pareto] == list(PARETO)
    assert all(r.top1 is not None and r.feasible for r in results.pareto)
    assert results.plan_path(results.pareto[0]) is not None


def test_partial_run_loads_without_pareto_csv(partial_dir: Path) -> None:
    results = load_run(partial_dir)
    assert results.info.partial and results.info.finished is None and results.pareto is None
    running = results.trial(PARTIAL_TRIALS - 1)
    assert running is not None and running.state == "RUNNING" and not running.complete
    assert results.plan_path(running) is None


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: shutil.rmtree(d), "does not exist"),
        (lambda d: (d / "run.json").unlink(), "run.json is missing"),
        (lambda d: (d / "run.json").write_text("{not json"), "not readable JSON"),
        (lambda d: edit_run_json(d, lambda r: r.update(format="other@9")), "expected 'dac-search/run@1'"),
        (lambda d: edit_run_json(d, lambda r: r.pop("budget")), "'budget' must be an object"),
        (lambda d: edit_run_json(d, lambda r: r.update(objective="energy")), "objective 'energy'"),
        (lambda d: edit_run_json(d, lambda r: r["baseline"].update(flops="many")), "'flops' must be int"),
        (lambda d: (d / "pareto.csv").unlink(), "pareto.csv is missing"),
        (lambda d: (d / "trials.csv").write_text("trial,state\n0,COMPLETE\n"), "missing column(s) feasible"),
        (lambda d: edit_csv(d / "trials.csv", lambda r: r.update(proxy="lots")), "column proxy has 'lots'"),
        (lambda d: edit_csv(d / "trials.csv", lambda r: r.update(state="DONE")), "column state has 'DONE'"),
        (lambda d: edit_csv(d / "pareto.csv", lambda r: r.update(plan="../x.json")), "column plan has '../x.json'"),
    ],
)
def test_broken_run_dir_is_one_config_error(run_dir: Path, breakage, message: str) -> None:
    breakage(run_dir)
    with pytest.raises(ConfigError) as caught:
        load_run(run_dir)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
