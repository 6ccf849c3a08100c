"""Which trials keep their fold models: the best by the CV score, then by the log loss of their
out-of-fold predictions, the order in which finalize's ``--select topk`` takes them."""

from __future__ import annotations

import optuna
import torch
from optuna.trial import create_trial

from autoclf.search.record import OOF_LOG_LOSS, best_first
from autoclf.search.weights import fold_weights, keep_best, save_weights


def _kept(trials_dir) -> list[int]:
    return sorted(int(p.parent.name) for p in trials_dir.glob("*/fold0.pt"))


def _trial_with_weights(study, trials_dir, number, value, log_loss):
    attrs = {} if log_loss is None else {OOF_LOG_LOSS: log_loss}
    study.add_trial(create_trial(value=value, user_attrs=attrs))
    assert study.trials[-1].number == number
    for fold in (0, 1):
        path = fold_weights(trials_dir / str(number), fold)
        save_weights(path, {"w": torch.full((2,), float(number))}, kept_epoch=1)


def test_a_tie_in_the_cv_score_keeps_the_trial_with_the_lower_oof_log_loss(tmp_path):
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 's.db'}")
    trials_dir = tmp_path / "trials"
    # Accuracy on a few hundred images ties often: trials 0-2 all got 0.9.
    for number, log_loss in enumerate((0.40, 0.30, None)):  # 2: from before the attribute
        _trial_with_weights(study, trials_dir, number, 0.9, log_loss)
    _trial_with_weights(study, trials_dir, 3, 0.8, 0.10)  # a lower score: its log loss is moot
    keep_best(study, trials_dir, keep=2, number=3, value=0.8, log_loss=0.10)
    assert _kept(trials_dir) == [0, 1]  # not the earliest two (0, 2): 1 has the lower log loss
    assert [t.number for t in best_first(study.trials, maximize=True)] == [1, 0, 2, 3]

    # A fifth trial ties too, with the lowest log loss of all: it is in, the worse tied one out.
    save_weights(fold_weights(trials_dir / "4", 0), {"w": torch.zeros(2)}, kept_epoch=1)
    keep_best(study, trials_dir, keep=2, number=4, value=0.9, log_loss=0.20)
    assert _kept(trials_dir) == [1, 4]
    assert not list((trials_dir / "0").glob("fold*"))  # its records go with its weights


def test_a_minimised_score_ranks_the_lowest_first_and_still_breaks_ties_on_log_loss(tmp_path):
    study = optuna.create_study(direction="minimize")
    trials_dir = tmp_path / "trials"
    for number, (value, log_loss) in enumerate(((0.5, 0.5), (0.3, 0.9), (0.3, 0.4))):
        _trial_with_weights(study, trials_dir, number, value, log_loss)
    keep_best(study, trials_dir, keep=1, number=2, value=0.3, log_loss=0.4)
    assert _kept(trials_dir) == [2]
