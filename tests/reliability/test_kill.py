"""Workers killed with SIGKILL: by themselves (the parent survives) and with the whole machine
(nothing survives; the heartbeat finds the trial on resume)."""

from __future__ import annotations

import os
import signal

import pytest
from optuna.trial import TrialState

from tests.reliability.helpers import (
    FINISHED,
    finished_snapshot,
    run_search,
    running_trial,
    storage_url,
    trials,
    wait_for,
    worker_pid,
)

pytestmark = pytest.mark.slow  # starts autoclf processes; `-m "not slow"` skips it


def assert_settled(url: str, target: int) -> list:
    """Exactly ``target`` finished trials, nothing RUNNING or WAITING, every FAIL explained."""
    ts = trials(url)
    assert sum(t.state in FINISHED for t in ts) == target
    assert not [t.number for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert all(t.user_attrs.get("fail_reason") for t in ts if t.state == TrialState.FAIL)
    return ts


def test_killed_worker_trial_is_retried_with_same_params_and_search_finishes(tmp_path, start):
    url = storage_url(tmp_path)
    search = start("--trials", "2", "--gpus", "cpu")
    victim = wait_for("a running trial", lambda: running_trial(url))
    os.kill(worker_pid(victim), signal.SIGKILL)
    out, err = search.communicate(timeout=300)
    assert search.returncode == 0, err + out
    assert "died with SIGKILL" in err  # the user is told (on stderr), and the worker restarted

    ts = assert_settled(url, 2)
    killed = ts[victim.number]
    assert killed.state == TrialState.FAIL
    assert "SIGKILL" in killed.user_attrs["fail_reason"]
    (retry,) = [t for t in ts if t.user_attrs.get("retry_of") == victim.number]
    assert retry.params == victim.params and retry.state in FINISHED


def test_machine_death_then_resume_retries_the_stale_trial(tmp_path, start):
    """Parent and worker die at once (a machine lost): on resume, the trial left RUNNING is
    found by its missing heartbeat, failed with that reason and re-run with its parameters;
    trials finished before are neither lost nor changed."""
    url = storage_url(tmp_path)
    search = start("--trials", "2", "--gpus", "cpu", "--heartbeat", "1")
    wait_for("a finished trial", lambda: finished_snapshot(url))
    victim = wait_for("a running trial", lambda: running_trial(url))
    before = finished_snapshot(url)
    worker = worker_pid(victim)
    os.kill(worker, signal.SIGSTOP)  # frozen first, so it cannot react to its parent's death
    search.kill()
    search.wait()
    os.kill(worker, signal.SIGKILL)
    assert trials(url)[victim.number].state == TrialState.RUNNING  # as a dead machine leaves it

    again = run_search(tmp_path, "--trials", "2", "--gpus", "cpu", "--heartbeat", "1")
    assert again.returncode == 0, again.stderr + again.stdout
    ts = assert_settled(url, 2)
    stale = ts[victim.number]
    assert stale.state == TrialState.FAIL and "no heartbeat" in stale.user_attrs["fail_reason"]
    (retry,) = [t for t in ts if t.user_attrs.get("retry_of") == victim.number]
    assert retry.params == victim.params and retry.state in FINISHED
    after = finished_snapshot(url)
    assert {n: after[n] for n in before} == before
