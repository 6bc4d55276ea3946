"""Workers started at the same instant on an empty database, as a job scheduler's array job starts them:
on a new PostgreSQL database with no schema, on one SQLite file in a shared run dir, and a dozen of them on
a throwaway cluster sized just above their connection bound. Also: a worker on another machine lost
mid-trial, whose trial a live worker runs again; a storage that refuses every connection; and what one
trial reads from the storage as the study grows."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from dac_search.errors import ConfigError, StorageUnavailableError
from dac_search.search.identity import SearchIdentity
from dac_search.search.objective import PLAN_ATTR, rows_of, scored_before
from dac_search.search.storage_setup import with_retries
from dac_search.search.study import POOL_OVERFLOW, POOL_SIZE, WORKER, claimed_trials, is_surplus, open_study
from tests.conftest import require
from tests.postgres import postgres_server, server_binaries
from tests.search.test_search_cli import SEARCH, TIMEOUT, cli
from tests.search.test_shared_study import WARM_STARTS, ConnectionWatch

ARGS = (*SEARCH, "--device", "none", "--budget", "50%flops")
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")
WORKERS = 12


@pytest.fixture(scope="module")
def warm_caches(hub_cache, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The set-up's caches (distilled inputs, single-layer proxies) filled by one small search, so workers
    started together meet the storage, not several minutes of the same distillation each."""
    out = tmp_path_factory.mktemp("warm")
    warm = subprocess.run(cli(*ARGS, "--trials", "1", "--out", str(out)), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert warm.returncode == 0, warm.stderr


def _at_once(count: int, total: int, out: callable, env: dict[str, str], *storage: str) -> list[subprocess.Popen]:
    """``count`` workers of one search started together: none is given a head start."""
    return [subprocess.Popen(cli(*ARGS, "--trials", str(total), *storage, "--out", str(out(i))),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            for i in range(count)]


def _finished(processes: list[subprocess.Popen]) -> None:
    codes = [p.wait(timeout=TIMEOUT) for p in processes]
    failed = [(code, p.stderr.read().strip().splitlines()[-1:]) for code, p in zip(codes, processes) if code]
    assert not failed, failed


def _check_one_study(study: optuna.Study, total: int) -> None:
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == total
    assert not any(t.state == TrialState.RUNNING for t in trials)
    assert sum(bool(t.user_attrs.get("warm_start")) for t in trials) == WARM_STARTS  # queued once, not per worker


@pytest.mark.slow  # four workers
def test_four_workers_started_at_once_on_an_empty_postgresql_database_all_finish_one_study(
        warm_caches, postgres, tmp_path) -> None:
    url = postgres.fresh_database("cold")  # no schema yet: every worker would create it
    total = 24
    with ConnectionWatch(postgres) as connections:
        _finished(_at_once(4, total, lambda i: tmp_path / f"w{i}", postgres.env, "--storage", url))
    assert max(connections.most.values()) <= POOL_SIZE + POOL_OVERFLOW, connections.most
    name = json.loads((tmp_path / "w0" / "run.json").read_text())["study"]
    with_password = url.replace("@", f":{postgres.password}@", 1)
    assert [s.study_name for s in optuna.get_all_study_summaries(with_password)] == [name]
    _check_one_study(optuna.load_study(study_name=name, storage=with_password), total)


WORKER_SCRIPT = """
import sys
import optuna
from dac_search.search.identity import SearchIdentity
from dac_search.search.study import Heartbeat, open_study

study, _ = open_study(sys.argv[1], 0, SearchIdentity("dozen", ()), Heartbeat(interval_s=1, grace_s=5))
study.optimize(lambda trial: (trial.suggest_float("x", 0, 1), 1.0), n_trials=int(sys.argv[2]))
"""


@pytest.mark.slow  # a dozen processes
def test_a_dozen_workers_started_at_once_stay_within_a_server_sized_for_their_connection_bound(tmp_path) -> None:
    """Twelve processes open one study on an empty database at the same instant and run trials with the
    heartbeat beating, as workers do, on a server whose ``max_connections`` is just above 12 x the bound:
    none is refused a connection, none holds more than the bound."""
    bin_dir = server_binaries()
    require(bin_dir is not None, "PostgreSQL's server is not installed (apt-get install postgresql)")
    bound = POOL_SIZE + POOL_OVERFLOW
    # the dozen's bound, and the watcher's connection
    with postgres_server(bin_dir, max_connections=WORKERS * bound + 1) as server:
        with ConnectionWatch(server) as connections:
            processes = [subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, server.url, "5"], env=server.env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                         for _ in range(WORKERS)]
            _finished(processes)
        assert len(connections.most) == WORKERS and max(connections.most.values()) <= bound, connections.most
        study = optuna.load_study(study_name="dozen", storage=server.url.replace("@", f":{server.password}@", 1))
        assert sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) == WORKERS * 5


@pytest.mark.slow  # a search of 40 trials
def test_a_live_worker_runs_again_the_trial_of_a_worker_lost_on_another_machine(warm_caches, postgres,
                                                                                tmp_path) -> None:
    """A worker on another host stops beating mid-trial (its machine lost): the live worker fails that trial
    once the grace of ``--heartbeat`` has passed, and runs it again within the study's total."""
    url = postgres.fresh_database("heartbeat")
    total = 40
    (live,) = _at_once(1, total, lambda i: tmp_path / "live", postgres.env, "--storage", url, "--heartbeat", "4s")
    run_json = tmp_path / "live" / "run.json"
    deadline = time.monotonic() + TIMEOUT
    while not run_json.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    study = optuna.load_study(study_name=json.loads(run_json.read_text())["study"],
                              storage=url.replace("@", f":{postgres.password}@", 1))
    lost = study.ask()  # a trial the other machine's worker took...
    lost.set_user_attr("worker", "another-host:4242")
    study._storage.record_heartbeat(lost._trial_id)  # ...and beat for once, then the machine was lost
    _finished([live])
    trials = study.get_trials(deepcopy=False)
    assert trials[lost.number].state == TrialState.FAIL
    again = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    assert again[0].user_attrs["worker"] != "another-host:4242"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == total


@pytest.mark.slow  # four workers
def test_four_workers_started_at_once_in_one_run_dir_share_its_sqlite_study(warm_caches, tmp_path) -> None:
    """No trial is run twice: SQLite transactions take the write lock as they begin (without that, two
    workers popped one queued trial, and one ended with "Cannot tell a COMPLETE trial")."""
    total = 16
    run_dir = tmp_path / "shared"
    _finished(_at_once(4, total, lambda i: run_dir, None))
    name = json.loads((run_dir / "run.json").read_text())["study"]
    _check_one_study(optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'study.db'}"), total)


def test_a_storage_that_refuses_every_connection_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys) -> None:
    import socket

    from dac_search.cli import main
    from dac_search.search import storage_setup

    with socket.socket() as sock:  # a port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(storage_setup, "RETRY_DELAYS_S", (0.05, 0.1))  # the same path, without its 7.5 s of waits
    code = main([*ARGS, "--storage", f"postgresql://dac:hunter2@127.0.0.1:{port}/dac", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "unavailable after 3 tries" in err and "hunter2" not in err and "***" in err
    assert not (tmp_path / "r").exists()  # refused before any set-up


def test_storage_faults_are_retried_and_bad_urls_are_not() -> None:
    from sqlalchemy.exc import ArgumentError, OperationalError

    slept: list[float] = []
    faults = iter([OperationalError("SELECT 1", {}, Exception("server closed the connection")),
                   OperationalError("SELECT 1", {}, Exception("the database system is starting up"))])

    def flaky() -> str:
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return "opened"

    assert with_retries("postgresql://db", flaky, slept.append) == "opened" and slept == [0.5, 1.0]
    with pytest.raises(ConfigError, match="cannot open"):
        with_retries("nosuch://db", lambda: (_ for _ in ()).throw(ArgumentError("no such dialect")), slept.append)

    def down() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    with pytest.raises(StorageUnavailableError, match="connection refused"):
        with_retries("postgresql://db", down, lambda _: None)


def test_what_a_trial_reads_from_the_storage_does_not_grow_with_the_study(tmp_path) -> None:
    """The bookkeeping of one trial - ask, claim, the surplus check, the plan looked up among scored ones,
    the rows of trials.csv, tell - runs the same statements and fetches the same trials at 20 trials as
    at 400 (counted with SQLAlchemy's event hooks on the worker's own engine)."""
    from optuna.storages import RDBStorage
    from sqlalchemy import event

    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", 0, SearchIdentity("reads", ()))[0]
    engine = study._storage._backend.engine
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    fetched: list[int] = []
    backend_get_trials = RDBStorage._get_trials

    def counting(self, *args, **kwargs):
        trials = backend_get_trials(self, *args, **kwargs)
        fetched.append(len(trials))
        return trials

    plan = {"layers": {"layer1.0.conv1": {"method": "dac", "rank": 2}}}

    def add_trials(count: int) -> None:
        study.add_trials([optuna.trial.create_trial(values=[0.1, 1.0], user_attrs={
            PLAN_ATTR: {"layers": {"conv": {"rank": i}}}, "kl": 0.1}) for i in range(count)])

    def one_trial() -> tuple[int, int]:
        statements.clear()
        fetched.clear()
        trial = study.ask()
        trial.set_user_attr("worker", WORKER)
        assert not is_surplus(study, trial.number, 10_000)
        assert scored_before(study, _plan(plan)) is None
        claimed_trials(study)
        study.tell(trial, [0.2, 1.0])
        rows_of(study)
        return len(statements), sum(fetched)

    import unittest.mock

    with unittest.mock.patch.object(RDBStorage, "_get_trials", counting):
        add_trials(20)
        one_trial()  # the worker's cache holds what it has read
        small = one_trial()
        add_trials(380)
        one_trial()
        large = one_trial()
    assert large == small, (small, large)


def _plan(data: dict):
    from dac_search.plan import LayerChoice, RankPlan

    return RankPlan({name: LayerChoice(c["method"], c["rank"], "stacked") for name, c in data["layers"].items()})
