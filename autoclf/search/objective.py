"""One Optuna trial: sample params, train every fold through the shared trainer, report,
prune, and leave the out-of-fold probabilities on disk.

Pruning with K-fold: each epoch is reported at the global step ``fold * max_epochs + epoch``.
Steps never collide across folds, and a given step means the same fold and epoch in every
trial of the study, so the pruner compares like with like, from the first fold on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from autoclf import atomic
from autoclf.metrics import Metric
from autoclf.search.events import EpochDone, EventFn, TrialStarted
from autoclf.search.space import SearchSpace
from autoclf.trainer import EpochReport, NonFiniteLossError, fit


@dataclass
class Objective:
    space: SearchSpace
    images: np.ndarray  # the shared decoded cache
    labels: np.ndarray
    folds: np.ndarray
    num_classes: int
    metric: Metric
    seed: int
    device: torch.device
    study_dir: Path
    on_event: EventFn
    loader_workers: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.space.suggest(trial)
        trial.set_user_attr("config", params.to_dict())
        trial.set_user_attr("device", describe_device(self.device))
        self.on_event(TrialStarted(trial.number, dict(trial.params)))
        n_folds = int(self.folds.max()) + 1
        oof = np.full((len(self.labels), self.num_classes), np.nan, dtype=np.float32)
        scores: list[float] = []
        best_epochs: list[int] = []
        epochs_run = 0
        start = time.perf_counter()
        try:
            for fold in range(n_folds):

                def on_epoch(report: EpochReport, fold: int = fold) -> None:
                    nonlocal epochs_run
                    epochs_run += 1  # pruned folds count too: epochs are the compute spent
                    trial.set_user_attr("epochs_run", epochs_run)
                    self.on_event(EpochDone(trial.number, fold, n_folds, report))
                    step = fold * self.space.max_epochs + report.epoch
                    trial.report(report.score, step)
                    if trial.should_prune():
                        trial.set_user_attr(
                            "pruned_reason",
                            f"{self.metric.name} {report.score:.4f} at fold {fold + 1}, "
                            f"epoch {report.epoch} (step {step}) fell behind other trials",
                        )
                        raise optuna.TrialPruned()

                val_idx = np.flatnonzero(self.folds == fold)
                result = fit(
                    params,
                    images=self.images,
                    labels=self.labels,
                    train_idx=np.flatnonzero(self.folds != fold),
                    val_idx=val_idx,
                    num_classes=self.num_classes,
                    metric=self.metric,
                    seed=trial_seed(self.seed, trial.number, fold),
                    device=self.device,
                    loader_workers=self.loader_workers,
                    on_epoch=on_epoch,
                )
                oof[val_idx] = result.val_probs
                scores.append(result.best_score)
                best_epochs.append(result.best_epoch)
                trial.set_user_attr("fold_scores", scores)
                trial.set_user_attr("fold_best_epochs", best_epochs)
        except NonFiniteLossError as exc:
            trial.set_user_attr("pruned_reason", f"non-finite loss: {exc}")
            raise optuna.TrialPruned(str(exc)) from exc
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            # The trial boundary: any other failure becomes FAIL with its reason on the trial.
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            trial.set_user_attr("duration_s", round(time.perf_counter() - start, 2))

        oof_path = self.study_dir / "trials" / str(trial.number) / "oof.npy"
        atomic.save_npy(oof_path, oof)
        trial.set_user_attr("oof_path", str(oof_path.relative_to(self.study_dir)))
        value = float(np.mean(scores))
        trial.set_user_attr("cv_std", float(np.std(scores)))
        return value


def trial_seed(study_seed: int, trial_number: int, fold: int) -> int:
    """A seed fixed by (study, trial, fold), independent across the three."""
    return int(np.random.SeedSequence([study_seed, trial_number, fold]).generate_state(1)[0])


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
