"""Fixtures of the report tests: run dirs written by the run-dir writer from recorded points.

Two cases of one latency search on ``cifar10-resnet20`` with budget 0.7x: the finished 30-trial run
(the front measured end to end beside the original, top-1 measured on it with ``--eval-data``), and the
same search interrupted while trial 11 ran (``partial``, no pareto.csv). FLOPs and parameters are those
of the real model under each plan (every plan is valid for it: the export test decomposes them); proxies,
timings and top-1 were recorded from a plausible run. Tests derive their expectations from these records.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dac_search.plan import LayerChoice, RankPlan
from dac_search.rundir import RunInfo, TrialRow, write_pareto, write_run, write_trials

COMPLETE = "cifar10-resnet20"
PARTIAL = "cifar10-resnet20-partial"
MODEL, SHAPE = "cifar10-resnet20", (1, 3, 32, 32)
# Every conv but the first (never decomposed), in model order: the digits of RANKS below.
LAYERS = tuple(f"layer{stage}.{block}.conv{conv}" for stage in (1, 2, 3) for block in (0, 1, 2) for conv in (1, 2))
ORIGINAL_MS = 1.184  # median of the original's timings beside the measured plans
BUDGET_MS = 0.7 * ORIGINAL_MS

# trial: (state, proxy, agreement, FLOPs, params, predicted ms, DAC rank per layer of LAYERS, 0 = kept)
SEARCHED: dict[int, tuple[str, float | None, float | None, int | None, int | None, float | None, str]] = {
    0: ("COMPLETE", 0.155031, 0.8809, 23231104, 134794, 0.7747, "202302023300333220"),
    1: ("COMPLETE", 0.219307, 0.815, 19444352, 130874, 0.697, "022303223121033320"),
    2: ("COMPLETE", 0.161937, 0.8691, 21406336, 120010, 0.7588, "023303233320202133"),
    3: ("COMPLETE", 0.213695, 0.8337, 23714432, 148922, 0.8023, "333310301030100231"),
    4: ("COMPLETE", 0.165136, 0.8351, 24683136, 148026, 0.8283, "200002233301222300"),
    5: ("COMPLETE", 0.279128, 0.7716, 18385536, 91626, 0.6721, "201222220020332112"),
    6: ("COMPLETE", 0.253316, 0.8073, 20165248, 145114, 0.7139, "312102320101222003"),
    7: ("FAIL", None, None, None, None, None, "333003302012311013"),
    8: ("COMPLETE", 0.31744, 0.7642, 13906560, 75594, 0.5715, "323322223132222213"),
    9: ("COMPLETE", 0.232088, 0.8229, 22774400, 156602, 0.7639, "300101331210020023"),
    10: ("COMPLETE", 0.251586, 0.7961, 20671104, 116682, 0.7065, "003211203032122202"),
    11: ("PRUNED", None, 0.7993, 19075712, 129338, 0.6665, "200221333222220210"),
    12: ("COMPLETE", 0.361973, 0.7288, 16302720, 103386, 0.6107, "212123120013210212"),
    13: ("COMPLETE", 0.221148, 0.8089, 21992064, 137130, 0.7407, "323020330313200131"),
    14: ("COMPLETE", 0.279383, 0.778, 19503744, 140778, 0.6945, "031131223302320022"),
    15: ("COMPLETE", 0.206097, 0.8286, 21291648, 130890, 0.7292, "223303033302002231"),
    16: ("COMPLETE", 0.216355, 0.816, 21717632, 154586, 0.7557, "103230121220030220"),
    17: ("COMPLETE", 0.279365, 0.7882, 16892544, 83946, 0.6433, "233310322302222312"),
    18: ("COMPLETE", 0.194041, 0.8515, 23192192, 142010, 0.7682, "333001201330030232"),
    19: ("FAIL", None, None, None, None, None, "103303312130121223"),
    20: ("COMPLETE", 0.251548, 0.7856, 17097344, 87050, 0.6503, "323032221203221332"),
    21: ("COMPLETE", 0.347421, 0.7254, 18080384, 96602, 0.6819, "222032121300021231"),
    22: ("COMPLETE", 0.133306, 0.8832, 28502656, 210490, 0.9023, "300012230230303000"),
    23: ("PRUNED", None, 0.8431, 19669632, 116826, 0.7164, "302201033332202223"),
    24: ("COMPLETE", 0.325859, 0.7516, 13331072, 78698, 0.5671, "213231133232123222"),
    25: ("COMPLETE", 0.316633, 0.7483, 17564288, 108506, 0.6571, "221102201031221031"),
    26: ("COMPLETE", 0.191214, 0.8429, 20697728, 113834, 0.7262, "322220030033022322"),
    27: ("COMPLETE", 0.0876544, 0.9331, 29422208, 174458, 0.9286, "300300220003022030"),
    28: ("COMPLETE", 0.141708, 0.8738, 24181376, 176090, 0.826, "213330223300302020"),
    29: ("COMPLETE", 0.241408, 0.8194, 16620160, 112090, 0.6403, "322323133331331023"),
}
# trial: (median ms, IQR ms, ratio to the original timed beside it) of the plans measured at the end.
MEASURED = {
    24: (0.5739, 0.01, 0.4851), 8: (0.5775, 0.0202, 0.4862), 29: (0.6385, 0.0188, 0.5381),
    1: (0.7296, 0.0172, 0.6152), 26: (0.7496, 0.0172, 0.6331), 2: (0.7678, 0.0118, 0.6455),
    0: (0.7877, 0.0169, 0.6615), 28: (0.8376, 0.0136, 0.7094), 22: (0.93, 0.0175, 0.7842),
}
# The front of the measured plans within the budget, cheapest first as the search wrote pareto.csv,
# with the top-1 (%) measured on it.
TOP1 = {24: 84.49, 8: 84.98, 29: 85.93, 1: 87.15, 26: 87.32, 2: 88.49, 0: 88.69}
PARETO = tuple(TOP1)
HELD_OUT = {24: 0.8906, 8: 0.8945, 29: 0.9141, 1: 0.9297, 26: 0.9336, 2: 0.9531, 0: 0.9570}  # of 256 images
ORIGINAL_TOP1 = 91.38
PARTIAL_TRIALS = 12  # the interrupted run: trials 0..10 as above, trial 11 still RUNNING

DEVICE = {
    "name": "local", "runtime": "onnxruntime", "device": "local", "kind": "local", "cpus": [2], "ok": True,
    "runtime_version": "1.20.1", "threads": 1, "python": "/usr/bin/python3", "python_version": "3.11.2",
    "machine": "x86_64", "system": "Linux", "hostname": "bench", "cpu_count": 8,
    "conditions": {"cpu_model": "AMD EPYC 7B13", "governor": "performance", "freq_mhz": 2450.0,
                   "temp_c": None, "throttled": None},
}
# rank: (FLOPs, params, proxy, predicted ms) of the paper's uniform-rank plans.
UNIFORM = {1: (6392448, 37770, 0.732278, 0.3857), 2: (12341888, 73082, 0.308485, 0.5299),
           3: (18291328, 108394, 0.149297, 0.6756)}
COMMAND = "dac-search --model cifar10-resnet20 --device local --budget 0.7x --trials 30 --correction none"


def front_by_definition(points: dict[int, tuple[float, float]]) -> list[int]:
    """Trials whose (cost, proxy) no other point dominates, cheapest first: an expectation computed
    without the code under test."""
    def dominated(p: tuple[float, float]) -> bool:
        return any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points.values())

    return [t for p, t in sorted((p, t) for t, p in points.items() if not dominated(p))]


def partial_fits() -> dict[int, tuple[float, float]]:
    """(predicted ms, proxy) of the interrupted run's completed trials within the budget."""
    return {t: (s[5], s[1]) for t, s in SEARCHED.items()
            if t < PARTIAL_TRIALS - 1 and s[0] == "COMPLETE" and s[5] <= BUDGET_MS}


def plan_of(trial: int) -> RankPlan:
    """The recorded plan: DAC at the digit's rank, the stacked variant at rank 1 (faster there)."""
    ranks = SEARCHED[trial][-1]
    choices = {name: LayerChoice("dac", int(r), "stacked" if r == "1" else "grouped")
               for name, r in zip(LAYERS, ranks) if r != "0"}
    return RankPlan(choices, MODEL, SHAPE)


def searched_row(trial: int) -> TrialRow:
    """A trial as the search left it: judged on the table's predicted latency against the budget."""
    state, proxy, agreement, flops, params, predicted, _ = SEARCHED[trial]
    done = state == "COMPLETE"
    return TrialRow(trial=trial, state=state, feasible=done and predicted <= BUDGET_MS, proxy=proxy,
                    agreement=agreement, flops=flops, params=params, latency_ms=predicted,
                    latency_predicted_ms=predicted, plan=f"plans/trial-{trial}.json" if done else None)


def final_row(trial: int) -> TrialRow:
    """A trial of the finished run: a plan measured at the end is judged on its ratio to the original."""
    row = searched_row(trial)
    if trial not in MEASURED:
        return row
    latency, iqr, ratio = MEASURED[trial]
    return replace(row, latency_ms=latency, latency_iqr_ms=iqr, latency_ratio=ratio, feasible=ratio <= 0.7)


def pareto_rows() -> list[TrialRow]:
    return [replace(final_row(t), top1=TOP1[t], agreement_held_out=HELD_OUT[t]) for t in PARETO]


def run_info(partial: bool) -> RunInfo:
    """run.json as the controller writes it (``_run_info``)."""
    return RunInfo.from_dict({
        "command": COMMAND + ("" if partial else " --eval-data cifar10_test_a.npz"),
        "created": "2025-06-11T21:04:12+00:00", "finished": None if partial else "2025-06-11T21:19:47+00:00",
        "partial": partial, "model": MODEL, "weights": None, "input_shape": list(SHAPE), "device_spec": "local",
        "device": DEVICE,
        "budget": {"text": "0.7x", "kind": "latency", "value": BUDGET_MS, "unit": "ms", "fraction": 0.7},
        "objective": "latency_ms", "methods": ["dac"], "correction": None, "seed": 0, "n_trials": 30,
        "proxy": {"kind": "geometric mean of the whole-plan KL and the sum of single-layer KLs",
                  "inputs": "distilled", "n": 64, "held_out": False,
                  **({} if partial else {"agreement_images": 256})},
        "versions": {"dac_search": "0.1.0", "torch": "2.7.1", "optuna": "4.4.0", "onnxruntime": "1.20.1",
                     "python": "3.11.2"},
        "baseline": {"flops": 40551040, "params": 269722, "latency_ms": ORIGINAL_MS, "latency_iqr_ms": None,
                     "proxy": 0.0, "top1": None if partial else ORIGINAL_TOP1},
        "uniform": [{"rank": rank, "flops": flops, "params": params, "proxy": proxy, "latency_ms": ms, "top1": None}
                    for rank, (flops, params, proxy, ms) in UNIFORM.items()],
        "trials_complete": None if partial else sum(s[0] == "COMPLETE" for s in SEARCHED.values()),
    })


def write_complete(run: Path) -> Path:
    """The finished run, through the writer the search uses."""
    rows = [final_row(t) for t in SEARCHED]
    _write_plans(run, rows)
    write_trials(run, rows)
    write_pareto(run, pareto_rows())
    write_run(run, run_info(partial=False))
    return run


def write_partial(run: Path) -> Path:
    """Killed while trial 11 ran: its row is RUNNING with no plan, and no pareto.csv was written."""
    rows = [searched_row(t) for t in range(PARTIAL_TRIALS - 1)]
    rows.append(TrialRow(trial=PARTIAL_TRIALS - 1, state="RUNNING", feasible=False))
    _write_plans(run, rows)
    write_trials(run, rows)
    write_run(run, run_info(partial=True))
    return run


def _write_plans(run: Path, rows: list[TrialRow]) -> None:
    for row in rows:
        if row.plan is not None:
            plan_of(row.trial).save(run / row.plan)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The finished 30-trial run."""
    return write_complete(tmp_path / COMPLETE)


@pytest.fixture
def partial_dir(tmp_path: Path) -> Path:
    """The interrupted run: 12 of 30 trials, the last RUNNING, no pareto.csv, no eval data."""
    return write_partial(tmp_path / PARTIAL)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished run rendered once, for tests that only read report.html and report.md."""
    from dac_search.report import write_reports

    run = write_complete(tmp_path_factory.mktemp("rendered") / COMPLETE)
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
