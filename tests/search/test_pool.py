"""Planning worker slots from --gpus/--workers, and re-queueing lost trials."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autoclf.errors import AutoclfError
from autoclf.search import storage
from autoclf.search.pool import plan_slots
from autoclf.search.storage import MAX_RETRY, fail_trial, open_storage, retry_trial
from autoclf.search.worker import sampler_seed


def test_cpu_slots_one_per_worker():
    slots = plan_slots("cpu", 3)
    assert [(s.name, s.device, s.visible_gpu) for s in slots] == [
        ("cpu0", "cpu", None),
        ("cpu1", "cpu", None),
        ("cpu2", "cpu", None),
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without GPUs")
def test_naming_a_gpu_that_does_not_exist_is_a_clear_error():
    with pytest.raises(AutoclfError, match=r"--gpus '0': there is no GPU 0; .*no CUDA device"):
        plan_slots("0", 1)
    assert plan_slots("auto", 2)[0].device == "cpu"  # auto falls back to the CPU


@pytest.mark.parametrize(
    "gpus,workers,message",
    [
        ("zero", 1, "expected 'auto', 'cpu' or GPU indices such as 0,1"),
        ("cpu", 0, "--workers must be at least 1, got 0"),
    ],
)
def test_bad_worker_settings_are_named(gpus, workers, message):
    with pytest.raises(AutoclfError, match=message):
        plan_slots(gpus, workers)


def test_sampler_seeds_differ_per_worker_and_restart():
    seeds = {sampler_seed(0, worker, start, 5) for worker in range(4) for start in range(3)}
    assert len(seeds) == 12
    assert sampler_seed(0, 1, 0, 5) == sampler_seed(0, 1, 0, 5)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() outside optimize(), on purpose
def test_a_lost_trial_is_failed_with_its_reason_and_retried_with_its_params(tmp_path):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    trial = study.ask()
    x = trial.suggest_float("x", 0, 1)
    assert fail_trial(study, storage.trial_id(trial), "worker cpu0 died with SIGKILL")
    assert not fail_trial(study, storage.trial_id(trial), "again")  # finished already: left alone
    lost, retry = study.trials
    assert lost.state == TrialState.FAIL
    assert lost.user_attrs["fail_reason"] == "worker cpu0 died with SIGKILL"
    assert retry.state == TrialState.WAITING and retry.params == {"x": x}
    assert retry.user_attrs == {"retry_of": 0}
    # A retry that is lost too is retried again, up to MAX_RETRY times in all.
    for _ in range(MAX_RETRY):
        nxt = study.ask()  # pops the waiting retry
        assert nxt.params == {"x": x}
        fail_trial(study, storage.trial_id(nxt), "lost again")
    assert len(study.trials) == 1 + MAX_RETRY  # the original and its retries, nothing queued
    assert all(t.state == TrialState.FAIL for t in study.trials)
    assert retry_trial(study, study.trials[-1]) is None
