"""The fold models the search keeps, so that ``finalize`` need not train them again.

Each fold of a trial leaves ``trials/<n>/fold<k>.pt`` and a small ``fold<k>.json`` (its kept
epoch, written last: it marks the weights finished) the moment the fold ends. A trial that is
pruned or fails drops its own at once. When a trial completes, only the best ``keep`` complete
trials keep theirs: a complete trial's value never changes, so a trial that falls out of the
best never comes back in, and a worker that drops weights is right whatever other workers are
doing (at worst a few more than ``keep`` are kept until the next trial completes). Trials
still running are never touched; with ``keep`` 0, a trial that completes drops every complete
trial's weights, those kept by earlier runs of the study too.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from autoclf import atomic
from autoclf.search.record import OOF_LOG_LOSS, ranking


def fold_weights(trial_dir: Path, fold: int) -> Path:
    return trial_dir / f"fold{fold}.pt"


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], *, kept_epoch: int) -> None:
    """Weights first, then the small record that marks them finished: a crash between the two
    costs a retrain, never a half-written checkpoint."""
    atomic.write_with(path, lambda tmp: torch.save(state_dict, tmp), suffix=".pt")
    atomic.write_json(path.with_suffix(".json"), {"kept_epoch": kept_epoch})


def is_finished(path: Path) -> bool:
    """The record and the weights both there. Weights deleted by hand (to save disk) leave a
    record behind: such a model counts as unfinished, to be trained again."""
    return path.with_suffix(".json").is_file() and path.is_file()


def drop(trial_dir: Path) -> None:
    """Remove a trial's fold weights (the records first: a half-dropped fold is unfinished)."""
    for record in trial_dir.glob("fold*.json"):
        record.unlink(missing_ok=True)
    for weights in trial_dir.glob("fold*.pt"):
        weights.unlink(missing_ok=True)


def keep_best(
    study: optuna.Study,
    trials_dir: Path,
    *,
    keep: int,
    number: int,
    value: float,
    log_loss: float | None = None,
) -> None:
    """Trial ``number`` has just finished with ``value`` and the out-of-fold ``log_loss``
    (not yet COMPLETE in the storage): drop the fold weights of every trial under
    ``trials_dir`` that is not among the best ``keep`` complete ones (by
    :func:`~autoclf.search.record.ranking`, as finalize ranks them), or that was pruned or
    failed."""

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    keys = {
        n: ranking(t.value, n, maximize, t.user_attrs.get(OOF_LOG_LOSS))
        for n, t in trials.items()
        if t.state == TrialState.COMPLETE
    }
    keys[number] = ranking(value, number, maximize, log_loss)
    best = set(sorted(keys, key=keys.get)[:keep])
    ended = (TrialState.PRUNED, TrialState.FAIL)
    for trial_dir in {p.parent for p in trials_dir.glob("*/fold*.pt")}:
        n = int(trial_dir.name) if trial_dir.name.isdigit() else None
        if (n in keys and n not in best) or (n in trials and trials[n].state in ended):
            drop(trial_dir)
