"""Faults inside a trial, through the real trainer: out of memory, a non-finite loss, a
DataLoader worker that dies, and memory still held after a trial.

The faults are injected by wrapping the real timm model (or dataset); everything else, the
study, the trainer, the pruner, is real and runs in this process.
"""

from __future__ import annotations

import gc
import os
import signal
import weakref

import pytest
import torch
from optuna.trial import TrialState

import autoclf.trainer
from autoclf.config import SearchConfig
from autoclf.search.runner import prepare, run

SPACE = """
params:
  backbone: test_efficientnet
  lr: 0.003
  batch_size: 64
  epochs: 2
  image_size: 16
  scheduler: constant
"""


@pytest.fixture
def config(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    return SearchConfig(
        data="digits",
        study="f",
        space=str(tmp_path / "space.yaml"),
        folds=2,
        trials=1,
        studies_dir=str(tmp_path / "studies"),
    )


class Faulty(torch.nn.Module):
    """The real model, but out of memory above ``oom_above`` images per forward pass, and
    NaN at training forward pass ``nan_at``."""

    def __init__(self, model, oom_above: int | None, nan_at: int | None):
        super().__init__()
        self.model, self.oom_above, self.nan_at = model, oom_above, nan_at
        self.train_calls = 0

    def forward(self, x):
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected at {x.shape[0]} images)")
        out = self.model(x)
        if self.training:
            self.train_calls += 1
            if self.train_calls == self.nan_at:
                out = out * float("nan")
        return out


@pytest.fixture
def faulty(monkeypatch):
    """``faulty(oom_above=…, nan_at=…)`` makes every model of the next trials faulty; returns
    the list of (weak references to) the models made."""
    made: list[Faulty] = []
    refs: list[weakref.ref] = []
    real = autoclf.trainer.create_model

    def install(*, oom_above=None, nan_at=None):
        def create(params, *, num_classes):
            model = Faulty(real(params, num_classes=num_classes), oom_above, nan_at)
            refs.append(weakref.ref(model))
            if nan_at is not None:
                made.append(model)  # kept alive to count its training steps
            return model

        monkeypatch.setattr(autoclf.trainer, "create_model", create)
        return made, refs

    return install


def test_out_of_memory_retries_at_half_micro_batch_and_frees_the_first_model(config, faulty):
    _, refs = faulty(oom_above=40)  # batch 64 does not fit, 32 does
    study = run(prepare(config))
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.value > 0.3  # it learned
    assert trial.user_attrs["micro_batch"] == 32
    assert len(refs) == 3  # fold 1 at 64 (out of memory), fold 1 again and fold 2 at 32
    gc.collect()
    assert [r() for r in refs] == [None] * 3  # no model outlives its trial, failed try included


def test_still_out_of_memory_at_half_micro_batch_prunes_with_reason_oom(config, faulty):
    faulty(oom_above=10)
    study = run(prepare(config))
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    reason = trial.user_attrs["pruned_reason"]
    assert reason.startswith("oom: out of memory at micro-batch 32 (batch 64) in fold 1")


def test_non_finite_loss_prunes_within_one_step(config, faulty):
    made, _ = faulty(nan_at=3)
    study = run(prepare(config))
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert "loss became nan at epoch 1, step 3" in trial.user_attrs["pruned_reason"]
    assert made[0].train_calls == 3  # not one step more


def test_dataloader_worker_death_fails_the_trial_and_the_next_runs(config, tmp_path, monkeypatch):
    parent, marker = os.getpid(), tmp_path / "killed-once"
    real_getitem = autoclf.trainer.CachedImages.__getitem__

    def getitem(self, i):
        if os.getpid() != parent and not marker.exists():  # in a loader worker, once
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_getitem(self, i)

    monkeypatch.setattr(autoclf.trainer.CachedImages, "__getitem__", getitem)
    config = SearchConfig(**{**config.to_dict(), "loader_workers": 1})
    study = run(prepare(config))
    failed, complete = study.trials
    assert failed.state == TrialState.FAIL
    assert "DataLoader worker" in failed.user_attrs["fail_reason"]
    assert complete.state == TrialState.COMPLETE
