"""The run-dir format: what the writer writes reads back the same, as typed rows and as pandas frames."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import dac_search
from dac_search.errors import ConfigError
from dac_search.rundir import (
    PARETO_COLUMNS,
    TRIAL_COLUMNS,
    RunInfo,
    TrialRow,
    load_run,
    read_run,
    write_pareto,
    write_run,
    write_trials,
)
from tests.report.conftest import final_row, pareto_rows, run_info

ROWS = [
    TrialRow(0, "COMPLETE", True, 0.125, 0.875, 20_000_000, 100_000, 0.75, 0.0125, 0.7375, 0.625,
             "plans/trial-0.json", 88.5, agreement_held_out=0.90625),
    TrialRow(1, "COMPLETE", False, 0.0625, 0.9375, 30_000_000, 150_000, 0.9, None, 0.9, None, "plans/trial-1.json"),
    TrialRow(2, "FAIL", False),
    TrialRow(3, "RUNNING", False, flops=25_000_000),
]


def write(run: Path, rows: list[TrialRow] = ROWS, pareto: list[TrialRow] | None = None) -> Path:
    run.mkdir()
    write_trials(run, rows)
    write_pareto(run, pareto if pareto is not None else rows[:1])
    write_run(run, run_info(partial=False))
    return run


def test_columns_keep_the_order_the_search_writes() -> None:
    assert TRIAL_COLUMNS == ("trial", "state", "feasible", "proxy", "agreement", "flops", "params", "latency_ms",
                             "latency_iqr_ms", "latency_predicted_ms", "latency_ratio", "plan", "top1",
                             "proxy_reconstructed", "top1_reconstructed", "plan_reconstructed",
                             "agreement_held_out", "agreement_reconstructed")  # new columns go last
    assert PARETO_COLUMNS == tuple(c for c in TRIAL_COLUMNS if c != "state")


def test_a_run_dir_from_before_the_reconstruction_and_held_out_columns_reads_them_as_empty(tmp_path: Path) -> None:
    run = write(tmp_path / "run")
    newer = {"agreement_held_out", "proxy_reconstructed", "top1_reconstructed", "agreement_reconstructed",
             "plan_reconstructed"}
    for name in ("trials.csv", "pareto.csv"):
        frame = pd.read_csv(run / name, dtype=str, keep_default_na=False)
        frame.drop(columns=[c for c in frame.columns if c in newer]).to_csv(run / name, index=False)
    results = load_run(run)
    assert results.trials == tuple(replace(r, agreement_held_out=None) for r in ROWS)


def test_run_info_round_trips_through_a_dict_and_the_file(tmp_path: Path) -> None:
    info = run_info(partial=False)
    assert RunInfo.from_dict(info.to_dict()) == info
    run = write(tmp_path / "run")
    data = json.loads((run / "run.json").read_text())
    assert data["format"] == "dac-search/run@1" and data["device"]["conditions"]["governor"] == "performance"
    assert load_run(run).info == info


def test_rows_round_trip_through_the_csvs(tmp_path: Path) -> None:
    assert [TrialRow.from_dict(row.to_dict()) for row in ROWS] == ROWS
    results = load_run(write(tmp_path / "run"))
    assert results.trials == tuple(ROWS)
    assert results.pareto == (ROWS[0],)  # pareto.csv has no state: its rows are COMPLETE


def test_recorded_fixture_rows_round_trip(tmp_path: Path) -> None:
    rows = [final_row(t) for t in range(30)]
    results = load_run(write(tmp_path / "run", rows, pareto_rows()))
    assert results.trials == tuple(rows) and results.pareto == tuple(pareto_rows())


def test_read_run_gives_typed_frames(tmp_path: Path) -> None:
    frames = dac_search.read_run(write(tmp_path / "run"))
    assert frames.info == run_info(partial=False)
    trials, pareto = frames.trials, frames.pareto
    assert tuple(trials.columns) == TRIAL_COLUMNS and tuple(pareto.columns) == PARETO_COLUMNS
    for name in ("trial", "flops", "params"):
        assert trials[name].dtype == pd.Int64Dtype()
    for name in ("proxy", "agreement", "latency_ms", "latency_iqr_ms", "latency_predicted_ms", "latency_ratio",
                 "top1"):
        assert trials[name].dtype == "float64"
    assert trials["feasible"].dtype == pd.BooleanDtype() and trials["state"].dtype == pd.StringDtype()
    assert trials["flops"].isna().tolist() == [False, False, True, False]
    assert trials.loc[trials["feasible"], "trial"].tolist() == [0]
    assert pareto["top1"].tolist() == [88.5]


def test_a_partial_run_has_no_pareto_frame(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_trials(run, ROWS)
    write_run(run, run_info(partial=True))
    assert read_run(run).pareto is None


@pytest.mark.parametrize("plan", ["../x.json", "/etc/passwd", "plans/../../x.json", "other/trial-0.json", "plans"])
def test_a_plan_path_escaping_plans_is_refused(tmp_path: Path, plan: str) -> None:
    run = write(tmp_path / "run")
    text = (run / "trials.csv").read_text().replace("plans/trial-1.json", plan)
    (run / "trials.csv").write_text(text)
    with pytest.raises(ConfigError, match=r"trials\.csv:3: column plan has"):
        read_run(run)
    with pytest.raises(ConfigError, match="trial 0"):
        write_trials(run, [TrialRow(0, "COMPLETE", True, plan=plan)])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace(",latency_ratio,", ","), "missing column(s) latency_ratio"),
        (lambda text: text.replace("20000000", "twenty"), "trials.csv:2: column flops has 'twenty'"),
        (lambda text: text.replace("20000000", "2.5"), "column flops has '2.5', expected an integer"),
        (lambda text: text.replace(",True,", ",maybe,"), "column feasible has 'maybe'"),
        (lambda text: text.replace("0,COMPLETE", ",COMPLETE"), "column trial has ''"),
        (lambda text: text.replace("0.125", "inf"), "column proxy has 'inf', expected a finite number"),
    ],
)
def test_a_missing_column_or_a_bad_value_is_one_config_error_naming_the_file(tmp_path: Path, edit, message) -> None:
    run = write(tmp_path / "run")
    path = run / "trials.csv"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as caught:
        read_run(run)
    assert message in str(caught.value) and str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_run_json_value_names_the_file_and_the_key(tmp_path: Path) -> None:
    run = write(tmp_path / "run")
    data = json.loads((run / "run.json").read_text())
    data["uniform"][1]["proxy"] = "low"
    (run / "run.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"run\.json: uniform\[1\]: 'proxy' must be a finite number, got 'low'"):
        read_run(run)


def test_non_finite_measures_are_written_empty(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_trials(run, [TrialRow(0, "COMPLETE", True, float("inf"), flops=1, plan="plans/trial-0.json")])
    assert (run / "trials.csv").read_text().splitlines()[1] == "0,COMPLETE,True,,,1,,,,,,plans/trial-0.json,,,,,,"
