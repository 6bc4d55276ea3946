"""The Optuna study: storage in the run dir (or any URL), resume, stale trials, warm starts."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Sequence

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from dac_search.errors import ConfigError
from dac_search.search.space import SearchSpace

STUDY_NAME = "dac-search"
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def open_study(storage_url: str, seed: int) -> optuna.Study:
    """The study of a run; the budget is a constraint each trial sets (``Trial.set_constraint``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(storage_url, heartbeat_interval=30, grace_period=120,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
        raise ConfigError(f"cannot open the study storage {storage_url}: {type(exc).__name__}") from None
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
    return optuna.create_study(storage=storage, sampler=sampler, study_name=STUDY_NAME,
                               directions=["minimize", "minimize"], load_if_exists=True)


def fail_dead_trials(study: optuna.Study) -> int:
    """RUNNING trials of a worker on this host whose process is gone (kill -9): fail them, retry their
    parameters. Workers on other hosts are covered by the storage heartbeat."""
    host = socket.gethostname()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        failed += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


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
