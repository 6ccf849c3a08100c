"""Faults inside a trial, through the real trainer: out of memory, a non-finite loss, a
DataLoader worker that dies, and memory still held after a trial.

The faults are injected by wrapping the real timm model (or dataset); everything else, the
study, the trainer, the pruner, is real and runs in this process.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import weakref

import pytest
import torch
from optuna.trial import TrialState

import autoclf.trainer
from autoclf.config import FinalizeConfig, SearchConfig
from autoclf.errors import AutoclfError
from autoclf.finalize import finalize
from autoclf.search.runner import SearchFailedError, prepare, run

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


def cuda_oom(images: int) -> Exception:
    return torch.OutOfMemoryError(f"CUDA out of memory (injected at {images} images)")


class Faulty(torch.nn.Module):
    """The real model, but out of memory above ``oom_above`` images per forward pass (raising
    ``oom(images)``), and NaN at training forward pass ``nan_at``."""

    def __init__(self, model, oom_above: int | None, nan_at: int | None, oom=cuda_oom):
        super().__init__()
        self.model, self.oom_above, self.nan_at, self.oom = model, oom_above, nan_at, oom
        self.train_calls = 0

    def state_dict(self, *args, **kwargs):  # saved as the real model's, as finalize reloads it
        return self.model.state_dict(*args, **kwargs)

    def forward(self, x):
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise self.oom(x.shape[0])
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

    def install(*, oom_above=None, nan_at=None, oom=cuda_oom):
        def create(params, *, num_classes):
            model = Faulty(real(params, num_classes=num_classes), oom_above, nan_at, oom)
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


@pytest.mark.parametrize(
    "oom",
    [
        lambda n: RuntimeError(f"CUDA error: out of memory (injected at {n} images)"),
        lambda n: RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            f"memory: you tried to allocate {n << 30} bytes. Error code 12"
        ),
    ],
    ids=["cuda-runtime-error", "cpu-allocator"],
)
def test_out_of_memory_reported_as_a_runtime_error_is_retried_too(config, faulty, oom):
    faulty(oom_above=40, oom=oom)
    (trial,) = run(prepare(config)).trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["micro_batch"] == 32


def test_other_runtime_errors_fail_the_trial_without_a_retry(config, faulty):
    _, refs = faulty(oom_above=40, oom=lambda n: RuntimeError(f"shapes ({n}x8) cannot multiply"))
    prepared = prepare(config)
    with pytest.raises(SearchFailedError, match="3 trials in a row failed"):
        run(prepared)
    trials = prepared.study.trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    for trial in trials:
        assert trial.user_attrs["fail_reason"] == "RuntimeError: shapes (64x8) cannot multiply"
        assert "micro_batch" not in trial.user_attrs
    assert len(refs) == 3  # one model a trial: no retry at a smaller micro-batch


def test_finalize_retrains_at_the_micro_batch_the_search_fell_back_to(config, faulty):
    """Without it, a member that only fit at half its batch runs out of memory again when
    finalize retrains it on every image (or retrains the folds the search did not keep)."""
    _, refs = faulty(oom_above=40)
    run(prepare(SearchConfig(**{**config.to_dict(), "keep_weights": 0})))
    searched = len(refs)
    result = finalize(
        FinalizeConfig(study="f", studies_dir=config.studies_dir, tta="off", refit="full")
    )
    (member,) = result.members
    assert member.micro_batch == 32 and member.refit_epochs is not None
    assert len(refs) - searched == 3  # 2 folds and the refit on every image, each fitting
    summary = json.loads((result.final_dir / "summary.json").read_text())
    assert summary["members"][0]["micro_batch"] == 32


def test_finalize_falls_back_to_half_micro_batch_when_its_own_training_runs_out(config, faulty):
    """The search fit at the full batch; finalize's device has less room now (another job)."""
    run(prepare(SearchConfig(**{**config.to_dict(), "keep_weights": 0})))
    _, refs = faulty(oom_above=40)
    steps: list[str] = []
    result = finalize(
        FinalizeConfig(study="f", studies_dir=config.studies_dir, tta="off", refit="full"),
        on_step=steps.append,
    )
    (member,) = result.members
    assert member.micro_batch == 32 and member.refit_epochs is not None
    # Fold 1 out of memory, then at 32: fold 1 again, fold 2 and the refit, no more retries.
    assert len(refs) == 4
    assert sum("again with micro-batch 32" in step for step in steps) == 1
    summary = json.loads((result.final_dir / "summary.json").read_text())
    assert summary["members"][0]["micro_batch"] == 32


def test_finalize_still_out_of_memory_names_the_trial_and_resumes(config, faulty, monkeypatch):
    run(prepare(SearchConfig(**{**config.to_dict(), "keep_weights": 0})))
    real = autoclf.trainer.create_model
    faulty(oom_above=10)
    final = FinalizeConfig(study="f", studies_dir=config.studies_dir, tta="off", refit="full")
    with pytest.raises(AutoclfError, match=r"trial 0: fold 1/2: out of memory at micro-batch 32 "):
        finalize(final)
    monkeypatch.setattr(autoclf.trainer, "create_model", real)  # the device is free again
    (member,) = finalize(final).members
    assert member.micro_batch is None and member.refit_epochs is not None


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
