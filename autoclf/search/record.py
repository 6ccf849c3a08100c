"""One record of a trial: the keys a trial stores in its study (Optuna's user attributes),
read back as one typed record, and the one leaderboard that the search, ``status`` and the
report all show.

Every module that writes or reads a trial's attributes names them from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from optuna.trial import FrozenTrial

# The user attributes of a trial.
CONFIG = "config"  # every training setting, the fixed ones too (TrainParams.to_dict())
CV_STD = "cv_std"  # the standard deviation of the fold scores
DEVICE = "device"
DURATION_S = "duration_s"
EPOCHS_RUN = "epochs_run"  # over every fold, an early-stopped or pruned one too
FAIL_REASON = "fail_reason"
FOLD_KEPT_EPOCHS = "fold_kept_epochs"  # the epoch whose weights each fold kept
FOLD_SCORES = "fold_scores"  # one per finished fold; grows as the folds end
LOG_PATH = "log_path"  # the trial's log, relative to the study folder
MICRO_BATCH = "micro_batch"  # after an out-of-memory retry
OOF_LOG_LOSS = "oof_log_loss"  # of the out-of-fold probabilities: breaks ties of the CV score
OOF_PATH = "oof_path"  # the out-of-fold probabilities, relative to the study folder
PRUNED_REASON = "pruned_reason"
RETRY_OF = "retry_of"  # the number of the trial this one runs again
VAL_LOSSES = "val_losses"  # the validation loss at each reported step
WORKER = "worker"  # "cpu0 (pid 1234)"

# The order in which a leaderboard and a trial's lines give the settings a study searches: the
# kind of trial, the model and its image size (what most decides the time) first. Settings not
# named here follow by name.
SETTING_ORDER = (
    "kind",
    "backbone",
    "image_size",
    "epochs",
    "optimizer",
    "lr",
    "head_lr_mult",
    "weight_decay",
    "batch_size",
    "dropout",
    "drop_path",
    "aug_strength",
    "hflip",
    "label_smoothing",
    "scheduler",
    "lp_ft",
)


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # Optuna's: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None
    params: dict[str, Any]  # as sampled; a space with trial kinds names them "head.lr"
    config: dict[str, Any]  # every training setting (empty until the trial has sampled them)
    cv_std: float | None
    fold_scores: list[float]
    epochs_run: int
    duration_s: float | None
    worker: str | None
    oof_path: str | None
    reason: str | None  # why it was pruned or failed

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        return cls(
            number=trial.number,
            state=trial.state.name,
            value=trial.value,
            params=dict(trial.params),
            config=dict(attrs.get(CONFIG) or {}),
            cv_std=attrs.get(CV_STD),
            fold_scores=list(attrs.get(FOLD_SCORES) or []),
            epochs_run=int(attrs.get(EPOCHS_RUN, 0)),
            duration_s=attrs.get(DURATION_S),
            worker=attrs.get(WORKER),
            oof_path=attrs.get(OOF_PATH),
            # A trial failed by Optuna itself (a stale heartbeat) carries its reason there.
            reason=attrs.get(FAIL_REASON)
            or attrs.get(PRUNED_REASON)
            or trial.system_attrs.get(FAIL_REASON),
        )

    @property
    def kind(self) -> str:
        return self.config.get("kind", "finetune")

    def setting(self, key: str) -> Any:
        """A training setting by its name: from the full config, else from the sampled
        parameters (a section's "finetune.lr" answers "lr")."""
        if key in self.config:
            return self.config[key]
        return by_setting(self.params).get(key)


def by_setting(params: dict[str, Any]) -> dict[str, Any]:
    """Sampled parameters by the setting they set: in a space with trial kinds, a section's
    parameter is named for it ("finetune.lr" sets "lr")."""
    return {name.split(".")[-1]: value for name, value in params.items()}


def searched(params: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The settings sampled in any of these trials' parameters, in :data:`SETTING_ORDER`: what
    sets one trial apart from another. Settings a space fixes are the same in every trial."""
    names = {name for p in params for name in by_setting(p)}
    last = len(SETTING_ORDER)
    return tuple(
        sorted(names, key=lambda n: (SETTING_ORDER.index(n) if n in SETTING_ORDER else last, n))
    )


def ranking(
    value: float, number: int, maximize: bool, log_loss: float | None = None
) -> tuple[float, float, int]:
    """The sort key of a complete trial, best first: its CV score; on a tie (accuracy moves in
    steps of one image), the lower log loss of its out-of-fold probabilities (trials from
    before autoclf recorded it come after); then the earlier trial. The leaderboards,
    finalize's top-k and the fold weights the search keeps all rank by it, so ``--select topk``
    takes the trials whose fold models the search kept."""
    return (-value if maximize else value, math.inf if log_loss is None else log_loss, number)


def best_first(trials: list[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    """The complete trials, in :func:`ranking` order."""
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    return sorted(
        done, key=lambda t: ranking(t.value, t.number, maximize, t.user_attrs.get(OOF_LOG_LOSS))
    )


@dataclass(frozen=True)
class Leaderboard:
    settings: tuple[str, ...]  # the settings each row shows: the backbone and those searched
    rows: list[TrialRecord]  # the best complete trials, best first


def leaderboard(trials: list[FrozenTrial], *, maximize: bool, top: int = 10) -> Leaderboard:
    """The best ``top`` complete trials of a study, and the settings to show beside them."""
    searched_here = searched(t.params for t in trials)
    # The backbone even where the space fixes it: a row names its model.
    settings = searched_here if "backbone" in searched_here else ("backbone", *searched_here)
    rows = [TrialRecord.of(t) for t in best_first(trials, maximize)[:top]]
    return Leaderboard(settings, rows)
