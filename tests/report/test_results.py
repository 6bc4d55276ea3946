"""Loading a run dir: the fixture's values, and one clear ConfigError line for each kind of broken dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dac_search.errors import ConfigError
from dac_search.report.results import load_run
from tests.report.conftest import edit_csv, edit_run_json


def test_complete_run_loads_with_its_values(run_dir: Path) -> None:
    results = load_run(run_dir)
    info = results.info
    assert (info.model, info.objective, info.partial, info.n_trials) == ("cifar10-resnet20", "latency_ms", False, 30)
    assert info.budget.value == pytest.approx(0.8288) and info.budget.kind == "latency"
    assert info.device is not None and ("threads", "1") in info.device.conditions
    assert info.eval is not None and info.eval.top1_original == pytest.approx(91.64)
    assert [u.rank for u in info.uniform] == [1, 2, 3, 4, 5]
    assert len(results.trials) == 30 and [r.trial for r in results.trials] == list(range(30))
    assert {r.state for r in results.trials} == {"COMPLETE", "FAIL", "PRUNED"}
    assert results.pareto is not None and len(results.pareto) == 7
    assert all(r.top1 is not None and r.feasible for r in results.pareto)
    assert results.plan_path(results.pareto[0]) is not None


def test_partial_run_loads_without_pareto_csv(partial_dir: Path) -> None:
    results = load_run(partial_dir)
    assert results.info.partial and results.info.finished is None and results.pareto is None
    running = results.trial(11)
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
        (lambda d: edit_csv(d / "trials.csv", lambda r: r.update(state="DONE")), "state 'DONE'"),
    ],
)
def test_broken_run_dir_is_one_config_error(run_dir: Path, breakage, message: str) -> None:
    breakage(run_dir)
    with pytest.raises(ConfigError) as caught:
        load_run(run_dir)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
