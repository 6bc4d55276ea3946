"""The Optuna study: storage in the run dir (or any URL), resume, stale trials, warm starts."""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Sequence
from datetime import datetime

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from dac_search.errors import ConfigError
from dac_search.redact import mask_url
from dac_search.search.space import SearchSpace

STUDY_NAME = "dac-search"
WORKER = f"{socket.gethostname()}:{os.getpid()}"
CLAIM_WITHIN_S = 10.0  # a live worker claims its trial within milliseconds of asking for it


def open_study(storage_url: str, seed: int) -> optuna.Study:
    """The study of a run; the budget is a constraint each trial sets (``Trial.set_constraint``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(storage_url, heartbeat_interval=30, grace_period=120,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
        raise ConfigError(f"cannot open the study storage {mask_url(storage_url)}: {type(exc).__name__}") from None
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
    return optuna.create_study(storage=storage, sampler=sampler, study_name=STUDY_NAME,
                               directions=["minimize", "minimize"], load_if_exists=True)


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
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
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
    """Start from the additive-model optimum at several targets (every shift 0)."""
    if study.get_trials(deepcopy=False):
        return
    for log_lambda in log_lambdas:
        params = {"log_lambda": log_lambda, **{space.shift_param(layer.name): 0 for layer in space.layers}}
        study.enqueue_trial(params, user_attrs={"warm_start": True})
