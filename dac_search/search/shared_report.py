"""A run dir written from a study several workers share, so ``dac-search report`` renders the whole front.

Each worker's run dir holds its own view as of its end; the study holds every worker's trials and the
run.json its last writer recorded (``RUN_ATTR``). The front is then the study's trials as the latency tables
predict them: the end-to-end measurement of a worker's front stays in that worker's run dir.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dac_search.errors import ConfigError
from dac_search.rundir import PLANS_DIR, RunInfo, write_pareto, write_run, write_trials
from dac_search.search.final import Judge, unmeasured_front
from dac_search.search.objective import rows_of
from dac_search.search.study import RUN_ATTR, load_study_from


def write_study_run(storage_url: str, name: str, run_dir: Path) -> Path:
    study = load_study_from(storage_url, name)
    recorded = study.user_attrs.get(RUN_ATTR)
    if recorded is None:
        raise ConfigError(f"study {name!r} holds no run record: no dac-search worker has started on it")
    info = RunInfo.from_dict(recorded, where=f"study {name!r}")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file")
    (run_dir / PLANS_DIR).mkdir(parents=True, exist_ok=True)
    rows = rows_of(study, run_dir)
    complete = [row for row in rows if row.state == "COMPLETE"]
    write_trials(run_dir, rows)
    write_pareto(run_dir, unmeasured_front(complete, Judge(info.budget, info.baseline.latency_ms)).points)
    write_run(run_dir, replace(info, partial=len(complete) < info.n_trials, trials_complete=len(complete)))
    return run_dir
