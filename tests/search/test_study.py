"""Resume bookkeeping on a real SQLite study: which RUNNING trials a restart fails and retries."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from optuna.trial import TrialState

from dac_search.errors import ConfigError
from dac_search.search.identity import SearchIdentity
from dac_search.search.study import WORKER, Heartbeat, fail_dead_trials, is_surplus, open_study

# ask() outside optimize() is how a killed worker leaves its trial; Optuna warns about heartbeats
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def _study(tmp_path):
    return open_study(f"sqlite:///{tmp_path / 'study.db'}", 0, SearchIdentity("test", ()))[0]


def test_a_trial_killed_before_its_worker_claimed_it_is_failed_and_its_fixed_params_retried(tmp_path) -> None:
    study = _study(tmp_path)
    study.enqueue_trial({"log_lambda": 1.5}, user_attrs={"refine": True})
    orphan = study.ask()  # popped from the queue, then the process "dies" before naming itself
    assert fail_dead_trials(study, claim_within_s=0.2) == 1
    trials = study.get_trials(deepcopy=False)
    assert trials[orphan.number].state == TrialState.FAIL
    retry = [t for t in trials if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].system_attrs["fixed_params"] == {"log_lambda": 1.5}
    assert retry[0].user_attrs["retry_of"] == orphan.number


def test_live_workers_keep_their_trials_and_dead_ones_here_lose_them(tmp_path) -> None:
    study = _study(tmp_path)
    live = study.ask()
    live.set_user_attr("worker", WORKER)
    remote = study.ask()
    remote.set_user_attr("worker", "another-host:1")
    dead = study.ask()
    dead.suggest_float("log_lambda", 0.0, 2.0)
    dead.set_user_attr("worker", f"{socket.gethostname()}:{_dead_pid()}")
    assert fail_dead_trials(study, claim_within_s=0.2) == 1
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[live.number] == states[remote.number] == TrialState.RUNNING
    assert states[dead.number] == TrialState.FAIL
    assert sum(s == TrialState.WAITING for s in states.values()) == 1


def test_two_workers_failing_one_dead_trial_at_once_fail_it_once(tmp_path, monkeypatch) -> None:
    """Two workers started together after a crash both read the dead worker's trial as RUNNING; the one
    that comes second finds it failed already and neither fails nor queues it again."""
    study = _study(tmp_path)
    dead = study.ask()
    dead.suggest_float("log_lambda", 0.0, 2.0)
    dead.set_user_attr("worker", f"{socket.gethostname()}:{_dead_pid()}")
    read_a_moment_ago = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert fail_dead_trials(study, claim_within_s=0.2) == 1
    fresh = study.get_trials
    monkeypatch.setattr(study, "get_trials", lambda deepcopy=True, states=None: (
        read_a_moment_ago if states == (TrialState.RUNNING,) else fresh(deepcopy=deepcopy, states=states)))
    assert fail_dead_trials(study, claim_within_s=0.2) == 0
    assert [t.state for t in fresh(deepcopy=False)] == [TrialState.FAIL, TrialState.WAITING]  # one retry


def test_a_queued_retry_that_starts_after_the_total_was_taken_is_surplus(tmp_path) -> None:
    """A retry is numbered when it is queued but may start after later-numbered trials took the total."""
    study = _study(tmp_path)
    study.enqueue_trial({"log_lambda": 1.0}, user_attrs={"retry_of": 7})  # trial 0, waiting
    for _ in range(2):  # trials 1 and 2 start first
        study._storage.create_new_trial(study._study_id)
    retry = study.ask()  # the queued trial 0 starts last
    assert retry.number == 0
    assert is_surplus(study, 0, total=2) and not is_surplus(study, 0, total=3)
    assert not is_surplus(study, 1, total=2) and not is_surplus(study, 2, total=2) and is_surplus(study, 2, total=1)


def test_a_trial_whose_worker_on_another_host_stopped_beating_is_failed_and_retried_by_a_live_worker(tmp_path) -> None:
    """The heartbeat is the only sign of a worker on another machine: a trial it stopped beating for longer
    than the grace is failed by the next live worker's bookkeeping and queued again with its parameters."""
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", 0, SearchIdentity("test", ()),
                       Heartbeat(interval_s=1, grace_s=2))[0]
    beating, silent = study.ask(), study.ask()
    for trial, worker in ((beating, "host-a:1"), (silent, "host-b:1")):
        trial.suggest_float("log_lambda", 0.0, 2.0)
        trial.set_user_attr("worker", worker)
        study._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # the storage's clock has whole seconds: over 3 s is over the grace of 2 whatever the rounding
    study._storage.record_heartbeat(beating._trial_id)  # host-a is alive, host-b went silent
    assert fail_dead_trials(study, claim_within_s=0.2) == 0  # nothing dead on this host...
    trials = study.get_trials(deepcopy=False)
    assert trials[beating.number].state == TrialState.RUNNING
    assert trials[silent.number].state == TrialState.FAIL  # ...but host-b's trial is stale
    retry = [t for t in trials if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].params == trials[silent.number].params
    assert retry[0].system_attrs["failed_trial"] == silent.number


def test_a_heartbeat_needs_an_interval_shorter_than_its_grace() -> None:
    with pytest.raises(ConfigError, match="interval < grace"):
        Heartbeat(interval_s=60, grace_s=30)


def _dead_pid() -> int:
    """The pid of a process that has ended (a child that exits at once; no fork of this threaded process)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
