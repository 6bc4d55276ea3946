"""The Optuna study: storage in the run dir (or any URL shared by workers), its identity, resume, stale
trials, warm starts, and the stop at the study's total."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from dac_search.errors import ConfigError
from dac_search.redact import mask_url
from dac_search.search.identity import SearchIdentity, refuse_difference
from dac_search.search.space import SearchSpace
from dac_search.search.storage_setup import setup_lock, with_retries

WORKER = f"{socket.gethostname()}:{os.getpid()}"
CLAIM_WITHIN_S = 10.0  # a live worker claims its trial within milliseconds of asking for it


@dataclass(frozen=True)
class Heartbeat:
    """How a worker on another host that died mid-trial is noticed: every live worker beats for its running
    trial each ``interval_s``; a trial without a beat for ``grace_s`` is failed by the next worker that
    asks for a trial, and queued again (at most ``retries`` times)."""

    interval_s: int = 30
    grace_s: int = 120
    retries: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.interval_s < self.grace_s:
            raise ConfigError(f"a heartbeat needs 0 < interval < grace, got {self.interval_s} s and {self.grace_s} s")

    @classmethod
    def of_grace(cls, grace_s: float) -> Heartbeat:
        """A beat every quarter of the grace: three beats may be late before a live worker is taken for dead."""
        return cls(interval_s=max(1, int(grace_s) // 4), grace_s=int(grace_s))


def open_study(storage_url: str, seed: int, identity: SearchIdentity,
               heartbeat: Heartbeat = Heartbeat()) -> tuple[optuna.Study, bool]:
    """The study of a search and whether this worker created it; the budget is a constraint each trial
    sets (``Trial.set_constraint``). A study searched with other settings is refused in one line.

    Workers may start at the same instant on an empty database: the schema, the study and its settings
    are made under the storage's set-up lock, once (``storage_setup``)."""
    study, created = with_retries(storage_url, lambda: _open_study(storage_url, seed, identity, heartbeat))
    if not created:
        refuse_difference(f"study {identity.name!r}", _settings(study), identity.settings)
    return study, created


def _open_study(storage_url: str, seed: int, identity: SearchIdentity,
                heartbeat: Heartbeat) -> tuple[optuna.Study, bool]:
    with setup_lock(storage_url, _connect_args(storage_url)):
        storage = _storage(storage_url, heartbeat)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
        try:
            study = optuna.create_study(storage=storage, sampler=sampler, study_name=identity.name,
                                        directions=["minimize", "minimize"])
        except optuna.exceptions.DuplicatedStudyError:
            # a joining worker samples on from its own seed: the same seed in every worker would have them
            # all propose the same plans until their histories differ
            joiner = optuna.samplers.TPESampler(seed=_worker_seed(seed), n_startup_trials=10)
            return optuna.load_study(storage=storage, sampler=joiner, study_name=identity.name), False
        study.set_user_attr("settings", identity.settings_dict)
        return study, True


def _storage(storage_url: str, heartbeat: Heartbeat | None = None) -> RDBStorage:
    """Optuna's storage with this worker's engine settings (and heartbeat, for a worker that runs trials)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        beat = {} if heartbeat is None else {
            "heartbeat_interval": heartbeat.interval_s, "grace_period": heartbeat.grace_s,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.retries)}
        storage = RDBStorage(storage_url, engine_kwargs=engine_settings(storage_url), **beat)
    if storage_url.startswith("sqlite"):
        _begin_immediately(storage.engine)
    return storage


def _begin_immediately(engine: sqlalchemy.engine.Engine) -> None:
    """Every SQLite transaction takes the write lock as it begins (SQLAlchemy's recipe for pysqlite).

    pysqlite begins a transaction at its first write, so two workers sharing a SQLite file could both read a
    queued trial as waiting and both run it (one then ends with "Cannot tell a COMPLETE trial"); PostgreSQL
    locks the row Optuna pops instead. Connections opened before the hooks are dropped."""
    def autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, begins the transactions

    def begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    sqlalchemy.event.listen(engine, "connect", autocommit_driver)
    sqlalchemy.event.listen(engine, "begin", begin_immediate)
    engine.dispose()


POOL_SIZE, POOL_OVERFLOW = 2, 2  # a worker's connections: its own and the heartbeat thread's, and a spare pair


def engine_settings(storage_url: str) -> dict[str, object]:
    """SQLAlchemy engine settings of one worker's storage.

    Pre-ping: an overnight worker's pooled connection may have been dropped by the server. A small pool:
    every worker holds at most ``POOL_SIZE + POOL_OVERFLOW`` connections, so a server's
    ``max_connections`` bounds the workers knowingly (optuna#1347: SQLAlchemy's default of 5 + 10 per
    worker exhausts a server of 100 at seven workers). On PostgreSQL each connection carries the worker's
    name (``application_name``), so ``pg_stat_activity`` tells whose connections are open.
    """
    settings: dict[str, object] = {"pool_pre_ping": True}
    if not storage_url.startswith("sqlite"):
        settings.update(pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    settings["connect_args"] = _connect_args(storage_url)
    return settings


def _connect_args(storage_url: str) -> dict[str, object]:
    """On PostgreSQL each connection carries the worker's name (``application_name``); on SQLite a worker
    waits up to 30 s for another's write (the driver's default, 5 s, is short for several workers)."""
    if storage_url.startswith("postgresql"):
        return {"application_name": f"dac-search {WORKER}"[:63]}
    return {"timeout": 30} if storage_url.startswith("sqlite") else {}


RUN_ATTR = "run"  # the run.json of the worker that last finished: what a report from the storage needs


def load_study_from(storage_url: str, name: str) -> optuna.Study:
    """An existing study, read-only in intent (``dac-search report --storage``); bad URL or name: one line."""
    def opened() -> RDBStorage:
        with setup_lock(storage_url, _connect_args(storage_url)):  # an empty database gets its schema
            return _storage(storage_url)

    storage = with_retries(storage_url, opened)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise ConfigError(f"no study {name!r} in {mask_url(storage_url)} (studies there: {names})") from None


def _worker_seed(seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{WORKER}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _settings(study: optuna.Study, wait_s: float = 10.0) -> dict[str, str]:
    """The settings the study's creator recorded; a study just created by another worker gets them
    within milliseconds, a study from before settings were recorded has none."""
    deadline = time.monotonic() + wait_s
    while True:
        settings = study.user_attrs.get("settings")
        if settings is not None or time.monotonic() > deadline or study.get_trials(deepcopy=False):
            return dict(settings or {})
        time.sleep(0.2)


def fail_dead_trials(study: optuna.Study, claim_within_s: float = CLAIM_WITHIN_S) -> int:
    """Fail RUNNING trials whose worker is gone (kill -9) and queue their parameters again.

    A worker names itself on its trial first thing (the ``worker`` user attr). A trial on this host
    whose worker pid is dead is failed at once. A trial with no worker was killed between Optuna's
    ``ask`` and that first line: no live worker leaves one unclaimed for ``claim_within_s``, so young
    ones are waited for, then failed. Workers on other hosts are covered by the storage heartbeat.
    """
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" not in trial.user_attrs:
            trial = _claimed_or_orphan(study, trial, claim_within_s)
            if trial is None:
                continue
        elif not _dead_here(str(trial.user_attrs["worker"])):
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker starting at the same moment failed it first, and queued its retry
        params = trial.system_attrs.get("fixed_params") or trial.params
        if params:
            study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
        failed += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


def _claimed_or_orphan(study: optuna.Study, trial: FrozenTrial, claim_within_s: float) -> FrozenTrial | None:
    """The trial if nobody claimed it within ``claim_within_s`` of its start, else None."""
    started = trial.datetime_start or datetime.now()
    age = (datetime.now() - started).total_seconds()
    if age < claim_within_s:
        time.sleep(claim_within_s - age)
    trial = study._storage.get_trial(trial._trial_id)
    if trial.state != TrialState.RUNNING or "worker" in trial.user_attrs:
        return None
    return trial


def _dead_here(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


WARM_STARTS_ATTR = "warm_starts_queued"


def enqueue_warm_starts(study: optuna.Study, storage_url: str, space: SearchSpace,
                        log_lambdas: Sequence[float]) -> None:
    """Start from the additive-model optimum at several targets (every shift 0): once per study, by whichever
    worker ends its set-up first, under the storage's set-up lock (workers starting at once queue them once)."""
    def queue() -> None:
        with setup_lock(storage_url, _connect_args(storage_url)):
            if study.user_attrs.get(WARM_STARTS_ATTR) or study.get_trials(deepcopy=False):
                return  # queued by another worker, or a study from before the mark that has trials
            for log_lambda in log_lambdas:
                params = {"log_lambda": log_lambda, **{space.shift_param(layer.name): 0 for layer in space.layers}}
                study.enqueue_trial(params, user_attrs={"warm_start": True}, skip_if_exists=True)
            study.set_user_attr(WARM_STARTS_ATTR, True)

    with_retries(storage_url, queue)


CLAIMED = (TrialState.COMPLETE, TrialState.RUNNING)  # what counts towards the total while workers share a study


def claimed_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=CLAIMED))


def is_surplus(study: optuna.Study, number: int, total: int) -> bool:
    """Whether trial ``number`` started after the study's ``total`` was already taken by complete or running
    trials. Trials are ordered by their start, then number: every worker reads the same order from the
    storage, so exactly ``total`` go on. (Ordered by number alone, a queued retry, numbered when it was
    queued but started last, went on past the total: 25 complete trials of 24.)"""
    claimed = study.get_trials(deepcopy=False, states=CLAIMED)

    def start(trial: FrozenTrial) -> tuple[datetime, int]:
        return trial.datetime_start or datetime.max, trial.number

    mine = next((start(t) for t in claimed if t.number == number), (datetime.max, number))
    return sum(start(t) < mine for t in claimed if t.number != number) >= total
