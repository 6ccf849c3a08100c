"""A worker's one trial when an interrupt lands where CI once saw it: inside Optuna's own
bookkeeping after the objective returned, before the trial's state is written."""

from __future__ import annotations

import signal

import optuna
import pytest
from optuna.trial import TrialState

from autoclf.search import worker
from autoclf.search.storage import claim_lock


def test_an_interrupt_in_optunas_tell_fails_and_requeues_the_trial(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="w", storage=url, direction="maximize")

    def interrupted_tell(**kwargs):  # the signal arrives as the state is about to be written
        raise worker.Interrupted(signal.SIGINT)

    monkeypatch.setattr(optuna.study._optimize, "_tell_with_warning", interrupted_tell)
    claim = claim_lock(url, "w")
    claim.acquire()
    # Optuna's `finally` turns the interrupt into an UnboundLocalError; the worker must still
    # see the interrupt (its exit code and "stopped by" message depend on it).
    with pytest.raises(worker.Interrupted):
        worker._run_one(study, lambda trial: trial.suggest_float("x", 0, 1), claim)

    stopped, queued = study.trials
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["fail_reason"] == "interrupted (SIGINT)"
    assert queued.state == TrialState.WAITING and queued.params == stopped.params
    # Nothing else is mistaken for an interrupt: another error comes out as it is.
    monkeypatch.setattr(optuna.study._optimize, "_tell_with_warning", _broken_tell)
    claim.acquire()
    with pytest.raises(BaseException) as raised:
        worker._run_one(study, lambda trial: trial.suggest_float("x", 0, 1), claim)
    assert not isinstance(raised.value, KeyboardInterrupt)


def _broken_tell(**kwargs):
    raise OSError("disk full")
