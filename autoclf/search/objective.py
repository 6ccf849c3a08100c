"""One Optuna trial: sample params, train every fold through the shared trainer, report,
prune, and leave the out-of-fold probabilities on disk.

Pruning with K-fold: each epoch is reported at the global step ``fold * max_epochs + epoch``.
Steps never collide across folds, and a given step means the same fold and epoch in every
trial of the study, so the pruner compares like with like, from the first fold on.

Out of memory: a fold that runs out of (GPU) memory is trained again with half the
micro-batch and gradient accumulation, so the effective batch and everything else stay the
same. If that runs out too, the trial is pruned with reason ``oom``: a pruned trial (unlike a
failed one) teaches the sampler to stay away from that region.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from autoclf import atomic
from autoclf.config import SearchConfig, TrainParams
from autoclf.data.index import DataIndex
from autoclf.features import FeatureStore, LogFn
from autoclf.head import fit_head, probe_params, train_head
from autoclf.metrics import Metric, get_metric
from autoclf.search import record, storage, weights
from autoclf.search.events import EpochDone, EventFn, TrialStarted
from autoclf.search.space import SearchSpace
from autoclf.search.trial_log import TrialLog
from autoclf.trainer import (
    EpochReport,
    FitResult,
    NonFiniteLossError,
    fit,
    is_out_of_memory,
    release_memory,
)


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
    worker: str = ""
    balance: str | None = None
    keep_weights: int = 0  # the best this many complete trials keep their fold weights
    features: FeatureStore | None = None  # for head-only and LP-FT trials

    @classmethod
    def for_study(
        cls,
        config: SearchConfig,
        *,
        space: SearchSpace,
        index: DataIndex,
        folds: np.ndarray,
        images: np.ndarray,
        cache_name: str,
        device: torch.device,
        study_dir: Path,
        on_event: EventFn,
        loader_workers: int | None,
        worker: str = "",
    ) -> Objective:
        """The objective of a prepared study, in the process that prepared it or in a worker
        process that attached to it: the same settings either way."""
        return cls(
            space=space,
            images=images,
            labels=index.label_array,
            folds=folds,
            num_classes=len(index.classes),
            metric=get_metric(config.metric),
            seed=config.seed,
            device=device,
            study_dir=study_dir,
            on_event=on_event,
            loader_workers=loader_workers,
            worker=worker,
            balance=config.balance,
            keep_weights=config.keep_weights,
            features=FeatureStore(study_dir / "features", images, cache_name, device),
        )

    def __call__(self, trial: optuna.Trial) -> float:
        trial_dir = trial_dir_of(self.study_dir, trial.number)
        with TrialLog(trial_dir / "log.txt") as log:
            trial.set_user_attr(record.LOG_PATH, str(log.path.relative_to(self.study_dir)))
            try:
                value = self._run(trial, log)
            except optuna.TrialPruned as exc:
                weights.drop(trial_dir)
                log(f"pruned: {trial.user_attrs.get(record.PRUNED_REASON, exc)}")
                raise
            except BaseException as exc:
                weights.drop(trial_dir)
                log(f"failed: {trial.user_attrs.get(record.FAIL_REASON, repr(exc))}")
                log("".join(traceback.format_exception(exc)).rstrip())
                raise
            log(f"complete: {self.metric.name} {value:.4f} ± {trial.user_attrs[record.CV_STD]:.4f}")
            return value

    def _run(self, trial: optuna.Trial, log: TrialLog) -> float:
        params = self.space.suggest(trial)
        if self.balance is not None:  # --balance applies to every trial, whatever the space says
            params = dataclasses.replace(params, balance=self.balance)
        log(
            f"trial {trial.number} on {describe_device(self.device)}"
            + (f" by worker {self.worker} (pid {os.getpid()})" if self.worker else "")
        )
        log(f"params: {params.to_dict()}")
        trial.set_user_attr(record.CONFIG, params.to_dict())
        trial.set_user_attr(record.DEVICE, describe_device(self.device))
        if self.worker:
            trial.set_user_attr(record.WORKER, f"{self.worker} (pid {os.getpid()})")
        self.on_event(
            TrialStarted(trial.number, dict(trial.params), self.worker, storage.trial_id(trial))
        )
        n_folds = int(self.folds.max()) + 1
        oof = np.full((len(self.labels), self.num_classes), np.nan, dtype=np.float32)
        scores: list[float] = []
        kept_epochs: list[int] = []
        val_losses: dict[str, float] = {}  # step → validation loss, beside the reported scores
        epochs_run = 0
        micro_batch: int | None = None  # set after an out-of-memory error
        start = time.perf_counter()
        try:
            for fold in range(n_folds):

                def on_epoch(report: EpochReport, fold: int = fold) -> None:
                    nonlocal epochs_run
                    epochs_run += 1  # pruned folds count too: epochs are the compute spent
                    # A head-only fold reports once, at the step of a fine-tune fold's end.
                    stride = self.space.max_epochs
                    step = fold * stride + (stride if params.kind == "head" else report.epoch)
                    val_losses[str(step)] = round(report.val_loss, 6)
                    trial.set_user_attr(record.EPOCHS_RUN, epochs_run)
                    trial.set_user_attr(record.VAL_LOSSES, val_losses)
                    log(
                        f"fold {fold + 1}/{n_folds} epoch {report.epoch}/{report.epochs}: "
                        f"{self.metric.name} {report.score:.4f} (fold best "
                        f"{report.best_score:.4f}), val loss {report.val_loss:.4f}, "
                        f"train loss {report.train_loss:.4f}, "
                        f"lr {report.lr:.2e}, {report.seconds:.1f} s"
                    )
                    self.on_event(EpochDone(trial.number, fold, n_folds, report, self.worker))
                    trial.report(report.score, step)
                    if trial.should_prune():
                        trial.set_user_attr(
                            "pruned_reason",
                            f"{self.metric.name} {report.score:.4f} at fold {fold + 1}, "
                            f"epoch {report.epoch} (step {step}) fell behind other trials",
                        )
                        raise optuna.TrialPruned()

                val_idx = np.flatnonzero(self.folds == fold)
                while True:
                    result = fit_fold_or_oom(
                        params,
                        features=self.features,
                        log=log,
                        images=self.images,
                        labels=self.labels,
                        train_idx=np.flatnonzero(self.folds != fold),
                        val_idx=val_idx,
                        num_classes=self.num_classes,
                        metric=self.metric,
                        seed=trial_seed(self.seed, trial.number, fold),
                        device=self.device,
                        loader_workers=self.loader_workers,
                        micro_batch=micro_batch,
                        on_epoch=on_epoch,
                        # A head refits from the features in a second: writing a
                        # whole body per fold would cost more than finalize refitting it.
                        keep_weights=self.keep_weights > 0 and params.kind != "head",
                    )
                    if not isinstance(result, str):
                        break
                    oom = result
                    tried = micro_batch or params.batch_size
                    if micro_batch is not None or tried < 2:
                        raise OutOfMemoryPruned(
                            f"oom: out of memory at micro-batch {tried} "
                            f"(batch {params.batch_size}) in fold {fold + 1}: {oom}"
                        )
                    micro_batch = tried // 2  # kept for the later folds too
                    trial.set_user_attr(record.MICRO_BATCH, micro_batch)
                    log(f"fold {fold + 1}: {oom}; again with micro-batch {micro_batch}")
                oof[val_idx] = result.val_probs
                if result.state_dict is not None:
                    path = weights.fold_weights(trial_dir_of(self.study_dir, trial.number), fold)
                    weights.save_weights(path, result.state_dict, kept_epoch=result.kept_epoch)
                scores.append(result.kept_score)
                kept_epochs.append(result.kept_epoch)
                log(
                    f"fold {fold + 1}/{n_folds}: {self.metric.name} {result.kept_score:.4f} "
                    f"at epoch {result.kept_epoch}"
                )
                trial.set_user_attr(record.FOLD_SCORES, scores)
                trial.set_user_attr(record.FOLD_KEPT_EPOCHS, kept_epochs)
        except NonFiniteLossError as exc:
            trial.set_user_attr(record.PRUNED_REASON, f"non-finite loss: {exc}")
            raise optuna.TrialPruned(str(exc)) from exc
        except OutOfMemoryPruned as exc:
            trial.set_user_attr(record.PRUNED_REASON, str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP: Optuna fails the trial
            trial.set_user_attr(record.FAIL_REASON, f"interrupted ({exc or 'SIGINT'})")
            raise
        except Exception as exc:
            # The trial boundary: any other failure becomes FAIL with its reason on the trial.
            trial.set_user_attr(record.FAIL_REASON, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            trial.set_user_attr(record.DURATION_S, round(time.perf_counter() - start, 2))

        oof_path = trial_dir_of(self.study_dir, trial.number) / "oof.npy"
        atomic.save_npy(oof_path, oof)
        trial.set_user_attr(record.OOF_PATH, str(oof_path.relative_to(self.study_dir)))
        value = float(np.mean(scores))
        trial.set_user_attr(record.CV_STD, float(np.std(scores)))
        log_loss = None  # NaN probabilities keep their (poor) score but have no log loss
        if np.isfinite(oof).all():
            log_loss = float(get_metric("log_loss")(self.labels, oof))
            trial.set_user_attr(record.OOF_LOG_LOSS, log_loss)
        weights.keep_best(
            trial.study,
            self.study_dir / "trials",
            keep=self.keep_weights,
            number=trial.number,
            value=value,
            log_loss=log_loss,
        )
        return value


# fit()'s arguments that a head on cached features has no use for.
FINETUNE_ONLY_ARGS = ("images", "device", "loader_workers", "micro_batch")


def fit_fold(
    params: TrainParams,
    *,
    features: FeatureStore | None,
    log: LogFn = lambda _: None,
    **kwargs,
) -> FitResult:
    """One fold of a trial of either kind: a head on the cached features (``kind: head``), or
    :func:`autoclf.trainer.fit`, from a head fitted on them where ``lp_ft`` asks for it.
    ``kwargs`` are :func:`autoclf.trainer.fit`'s."""
    if (params.kind == "head" or params.lp_ft) and features is None:
        raise ValueError(f"a {params.kind} trial with lp_ft={params.lp_ft} needs a FeatureStore")
    if params.kind == "head":
        return fit_head(
            params,
            features=features.get(params, log=log),
            **{k: v for k, v in kwargs.items() if k not in FINETUNE_ONLY_ARGS},
        )
    head = None
    if params.lp_ft:
        head = train_head(
            probe_params(params),
            features=features.get(params, log=log),
            labels=kwargs["labels"],
            train_idx=kwargs["train_idx"],
            num_classes=kwargs["num_classes"],
            seed=kwargs["seed"],
        )
    return fit(params, head=head, **kwargs)


def fit_fold_or_oom(params: TrainParams, **kwargs) -> FitResult | str:
    """:func:`fit_fold`, or where memory ran out (:func:`is_out_of_memory`), the error's first
    line, with the memory handed back: the caller decides whether a smaller micro-batch is worth
    a try. Any other error propagates. ``kwargs`` are :func:`fit_fold`'s, ``device`` among them."""
    try:
        return fit_fold(params, **kwargs)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        oom = str(exc).splitlines()[0] if str(exc) else "out of memory"
    # Outside the except block: the traceback, and the tensors its frames hold, are gone
    # before the memory is handed back.
    release_memory(kwargs["device"])
    return oom


def trial_dir_of(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / str(number)


class OutOfMemoryPruned(Exception):
    """Still out of memory at half the micro-batch."""


def trial_seed(study_seed: int, trial_number: int, fold: int) -> int:
    """A seed fixed by (study, trial, fold), independent across the three."""
    return int(np.random.SeedSequence([study_seed, trial_number, fold]).generate_state(1)[0])


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
