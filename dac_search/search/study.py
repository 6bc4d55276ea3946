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

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from dac_search.errors import ConfigError
from dac_search.redact import mask_url
from dac_search.search.identity import SearchIdentity, refuse_difference
from dac_search.search.space import SearchSpace

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


def open_study(storage_url: str, seed: int, identity: SearchIdentity,
               heartbeat: Heartbeat = Heartbeat()) -> tuple[optuna.Study, bool]:
    """The study of a search and whether this worker created it; the budget is a constraint each trial
    sets (``Trial.set_constraint``). A study searched with other settings is refused in one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(storage_url, engine_kwargs=engine_settings(storage_url),
                                 heartbeat_interval=heartbeat.interval_s, grace_period=heartbeat.grace_s,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                     max_retry=heartbeat.retries))
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
        raise ConfigError(f"cannot open the study storage {mask_url(storage_url)}: {_reason(exc)}") from None
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
    try:  # only one worker creates a study, even when several start at once (the storage's unique key)
        study = optuna.create_study(storage=storage, sampler=sampler, study_name=identity.name,
                                    directions=["minimize", "minimize"])
        study.set_user_attr("settings", identity.settings_dict)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        # a joining worker samples on from its own seed: the same seed in every worker would have them
        # all propose the same plans until their histories differ
        joiner = optuna.samplers.TPESampler(seed=_worker_seed(seed), n_startup_trials=10)
        study = optuna.load_study(storage=storage, sampler=joiner, study_name=identity.name)
    refuse_difference(f"study {identity.name!r}", _settings(study), identity.settings)
    return study, False


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
    if storage_url.startswith("postgresql"):
        settings["connect_args"] = {"application_name": f"dac-search {WORKER}"[:63]}
    return settings


RUN_ATTR = "run"  # the run.json of the worker that last finished: what a report from the storage needs


def load_study_from(storage_url: str, name: str) -> optuna.Study:
    """An existing study, read-only in intent (``dac-search report --storage``); bad URL or name: one line."""
    try:
        storage = RDBStorage(storage_url, engine_kwargs=engine_settings(storage_url))
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
        raise ConfigError(f"cannot open the study storage {mask_url(storage_url)}: {_reason(exc)}") from None
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise ConfigError(f"no study {name!r} in {mask_url(storage_url)} (studies there: {names})") from None


def _worker_seed(seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{WORKER}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _reason(exc: Exception) -> str:
    """The first line of a storage error, password masked: what the user can act on (a wrong host, a
    missing driver) without sqlalchemy's page of context."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return mask_url(f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)


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


def enqueue_warm_starts(study: optuna.Study, space: SearchSpace, log_lambdas: Sequence[float]) -> None:
    """Start from the additive-model optimum at several targets (every shift 0). Called by the worker
    that created the study only, so several workers starting at once enqueue them once."""
    for log_lambda in log_lambdas:
        params = {"log_lambda": log_lambda, **{space.shift_param(layer.name): 0 for layer in space.layers}}
        study.enqueue_trial(params, user_attrs={"warm_start": True}, skip_if_exists=True)


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
