"""A worker's trial when a stop signal lands: in the objective, the trial fails and is queued
again; in Optuna's own bookkeeping after the objective (where CI once saw one land), it waits
until the trial's result is written, and the worker stops before its next trial."""

from __future__ import annotations

import os
import signal

import optuna
import pytest
from optuna.trial import TrialState

from autoclf.search import worker
from autoclf.search.storage import claim_lock


class SignalInTell(optuna.samplers.RandomSampler):
    """Sends SIGINT to this process from ``after_trial``, which Optuna calls while it tells
    the trial's result, before the trial's state is written."""

    def after_trial(self, study, trial, state, values):
        os.kill(os.getpid(), signal.SIGINT)
        super().after_trial(study, trial, state, values)


@pytest.fixture
def stop_signals():
    saved = {s: signal.getsignal(s) for s in worker.STOP_SIGNALS}
    worker.STOPPING.__init__()
    worker.STOPPING.install()
    yield worker.STOPPING
    worker.STOPPING.__init__()
    for s, handler in saved.items():
        signal.signal(s, handler)


def _work(study, url, objective):
    return worker.work(study, objective, target=5, claim=claim_lock(url, study.study_name))


def test_a_signal_in_optunas_tell_waits_for_the_result_then_stops(tmp_path, stop_signals):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        study_name="w", storage=url, direction="maximize", sampler=SignalInTell(seed=0)
    )
    with pytest.raises(worker.Interrupted) as stopped:
        _work(study, url, lambda trial: trial.suggest_float("x", 0, 1))
    assert stopped.value.signum == signal.SIGINT
    (trial,) = study.trials  # the worker stopped before a second trial
    assert trial.state == TrialState.COMPLETE and trial.value == trial.params["x"]


def test_a_signal_in_the_objective_fails_the_trial_and_queues_it_again(tmp_path, stop_signals):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="w", storage=url, direction="maximize")

    def objective(trial):
        trial.suggest_float("x", 0, 1)
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # raises here, in the objective
        except KeyboardInterrupt as exc:  # as autoclf's objective does
            trial.set_user_attr("fail_reason", f"interrupted ({exc})")
            raise
        return 1.0

    with pytest.raises(worker.Interrupted) as stopped:
        _work(study, url, objective)
    assert stopped.value.signum == signal.SIGTERM
    failed, queued = study.trials
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == "interrupted (SIGTERM)"
    assert queued.state == TrialState.WAITING and queued.params == failed.params


class SignalInAsk(optuna.samplers.RandomSampler):
    """Sends SIGTERM from ``before_trial``, while Optuna creates the trial."""

    def before_trial(self, study, trial):
        os.kill(os.getpid(), signal.SIGTERM)
        super().before_trial(study, trial)


def test_a_signal_while_optuna_creates_the_trial_fails_it_before_training(tmp_path, stop_signals):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        study_name="w", storage=url, direction="maximize", sampler=SignalInAsk(seed=0)
    )
    trained = []
    with pytest.raises(worker.Interrupted):
        _work(study, url, lambda trial: trained.append(trial.number) or 1.0)
    assert trained == []  # stopped before the objective trained anything
    (failed,) = study.trials  # no parameters drawn yet: nothing to queue again
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == "interrupted (SIGTERM)"
