"""Workers sharing one study on a real PostgreSQL server: trials add up to --trials, a worker killed
mid-trial is retried, warm starts are queued once, and a worker with other settings is refused."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dac_search.search.study import POOL_OVERFLOW, POOL_SIZE
from tests.postgres import PostgresServer
from tests.search.test_search_cli import SEARCH, TIMEOUT, cli, rows

ARGS = (*SEARCH, "--device", "none", "--budget", "50%flops")
WARM_STARTS = 4  # the shares 0.8, 0.6, 0.5 (the target) and 0.4


def _study(server: PostgresServer, run_dir: Path) -> optuna.Study:
    """The study as a second process sees it: loaded by the name the worker recorded in run.json."""
    name = json.loads((run_dir / "run.json").read_text())["study"]
    url = server.url.replace("@", f":{server.password}@", 1)
    return optuna.load_study(study_name=name, storage=url)


def _wait_for(what, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := what()) is not None:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def _running_trial_of(server: PostgresServer, run_dir: Path, pid: int):
    if not (run_dir / "run.json").exists():
        return None
    trials = _study(server, run_dir).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return next((t for t in trials if str(t.user_attrs.get("worker", "")).endswith(f":{pid}")), None)


def _kill_mid_trial(server: PostgresServer, run_dir: Path, process: subprocess.Popen):
    """SIGKILL ``process`` in the middle of a trial, and that trial. A trial lasts a fraction of a second:
    the process is stopped first, and killed only if the trial it was seen running is running still."""
    while True:
        seen = _wait_for(lambda: _running_trial_of(server, run_dir, process.pid))
        process.send_signal(signal.SIGSTOP)
        if _study(server, run_dir).trials[seen.number].state == TrialState.RUNNING:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return seen
        process.send_signal(signal.SIGCONT)  # it finished that trial between the two looks: catch the next


class ConnectionWatch:
    """The most connections each dac-search worker held at once, read from pg_stat_activity as they run."""

    def __init__(self, server: PostgresServer) -> None:
        import psycopg

        self._connection = psycopg.connect(server.url, password=server.password, autocommit=True)
        self.most: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            counts = self._connection.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE application_name LIKE 'dac-search %' GROUP BY application_name").fetchall()
            for name, count in counts:
                self.most[name] = max(self.most.get(name, 0), count)

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._connection.close()


@pytest.mark.slow  # three workers and a rerun
def test_workers_on_one_postgresql_study_add_up_to_the_total_and_survive_a_kill_9(hub_cache, postgres,
                                                                                   tmp_path) -> None:
    total = 48  # enough trials that two workers started at once both get some, whatever their set-ups' skew

    def worker(i: int) -> subprocess.Popen:
        command = cli(*ARGS, "--trials", str(total), "--storage", postgres.url, "--out", str(tmp_path / f"w{i}"))
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=postgres.env)

    with ConnectionWatch(postgres) as connections:
        # the first worker fills the set-up's caches and is killed in its first trial: a worker that starts
        # later could find every trial taken before its own set-up ends, and never be caught mid-trial
        victim = worker(0)
        running = _kill_mid_trial(postgres, tmp_path / "w0", victim)
        second, third = worker(1), worker(2)  # both from the warm caches, at once
        for process in (second, third):
            assert process.wait(timeout=TIMEOUT) == 0, process.stderr.read()
    # every worker was seen by its name, none over its small pool (optuna#1347: connection exhaustion)
    assert {f"dac-search {socket.gethostname()}:{p.pid}"[:63] for p in (victim, second, third)} <= set(connections.most)
    assert max(connections.most.values()) <= POOL_SIZE + POOL_OVERFLOW, connections.most
    rerun = subprocess.run(cli(*ARGS, "--trials", str(total), "--storage", postgres.url, "--out",
                               str(tmp_path / "w0")), capture_output=True, text=True, timeout=TIMEOUT,
                           env=postgres.env)
    assert rerun.returncode == 0, rerun.stderr

    study = _study(postgres, tmp_path / "w0")
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == total and TrialState.RUNNING not in states
    assert study.trials[running.number].state == TrialState.FAIL  # the killed worker's trial, retried
    assert any(t.user_attrs.get("retry_of") == running.number for t in trials if t.state == TrialState.COMPLETE)
    assert sum(bool(t.user_attrs.get("warm_start")) for t in trials) == WARM_STARTS
    workers = {t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}
    assert len(workers) >= 2  # the two started at once share the trials
    assert set(study.user_attrs["settings"]) >= {"model", "budget", "methods", "seed"}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert {"plan", "flops", "kl", "slack", "plan_layers"} <= set(t.user_attrs)

    # every worker's run dir lists the study's trials, with the plan of each, its own or another's
    final = rows(tmp_path / "w1" / "trials.csv")
    assert sorted(int(r["trial"]) for r in final) == sorted(t.number for t in trials)
    for run in ("w0", "w1", "w2"):
        complete = [r for r in rows(tmp_path / run / "trials.csv") if r["state"] == "COMPLETE"]
        assert complete and all((tmp_path / run / r["plan"]).is_file() for r in complete)
    assert "PGPASSWORD" not in (tmp_path / "w1" / "run.json").read_text() and postgres.password not in (
        tmp_path / "w1" / "run.json").read_text()

    # the whole study rendered from the storage alone, as a user without any worker's run dir does
    name = json.loads((tmp_path / "w1" / "run.json").read_text())["study"]
    report = subprocess.run(cli("report", "--storage", postgres.url, "--study", name, str(tmp_path / "all")),
                            capture_output=True, text=True, timeout=TIMEOUT, env=postgres.env)
    assert report.returncode == 0, report.stderr
    shared = rows(tmp_path / "all" / "trials.csv")
    assert sorted(int(r["trial"]) for r in shared) == sorted(t.number for t in trials)
    assert all((tmp_path / "all" / r["plan"]).is_file() for r in shared if r["state"] == "COMPLETE")
    recorded = json.loads((tmp_path / "all" / "run.json").read_text())
    assert recorded["study"] == name and recorded["partial"] is False and recorded["trials_complete"] == total
    assert (tmp_path / "all" / "report.html").is_file() and "Pareto front" in report.stdout
    missing = subprocess.run(cli("report", "--storage", postgres.url, "--study", "nope"), capture_output=True,
                             text=True, timeout=TIMEOUT, env=postgres.env)
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr and name in missing.stderr, missing.stderr


def test_a_worker_with_other_settings_is_refused_before_any_set_up(postgres, tmp_path) -> None:
    from dac_search.budget import parse_budget
    from dac_search.search.config import SearchConfig
    from dac_search.search.identity import identity_of
    from dac_search.search.study import open_study

    with_password = postgres.url.replace("@", f":{postgres.password}@", 1)
    config = SearchConfig(model="cifar10-resnet20", budget=parse_budget("50%flops"), device="none")
    open_study(with_password, 0, identity_of(config, "shared"))
    cache = tmp_path / "cache"
    cache.mkdir()
    result = subprocess.run(cli("--model", "cifar10-resnet20", "--device", "none", "--budget", "50%flops",
                                "--methods", "dac", "--study", "shared", "--out", str(tmp_path / "r")),
                            capture_output=True, text=True, timeout=TIMEOUT,
                            env={**postgres.env, "DAC_SEARCH_STORAGE": with_password, "DAC_SEARCH_CACHE": str(cache)})
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "study 'shared'" in result.stderr and "methods" in result.stderr
    assert postgres.password not in result.stderr + result.stdout
    assert list(cache.iterdir()) == []  # refused before any distillation
