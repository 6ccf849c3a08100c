"""``--epoch-budget``: at most so many epochs over every fold of every trial of a study."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from autoclf.search import record

if TYPE_CHECKING:
    from autoclf.search.space import SearchSpace


@dataclass(frozen=True)
class EpochBudget:
    """At most ``total`` epochs over the study's trials, where one trial trains at most
    ``per_trial`` (folds × the space's epochs). A trial starts only while the epochs trained
    so far, with ``per_trial`` held for every running trial, leave room for one more whole
    trial: so the study never trains more than ``total``, with any number of workers."""

    total: int
    per_trial: int

    @classmethod
    def of(cls, total: int, n_folds: int, space: SearchSpace) -> EpochBudget:
        """``--epoch-budget total`` for a study of ``n_folds`` folds in ``space``."""
        return cls(total, per_trial=n_folds * space.max_epochs)

    def committed(self, trials: list[FrozenTrial]) -> int:
        """Epochs trained by every trial that is not running (pruned and failed ones too:
        they were compute spent), plus ``per_trial`` for each running one."""
        running = [t for t in trials if t.state == TrialState.RUNNING]
        done = [t for t in trials if t.state != TrialState.RUNNING]
        return epochs_trained(done) + self.per_trial * len(running)

    def trials_left(self, trials: list[FrozenTrial]) -> int:
        """How many more whole trials fit beside what ``trials`` trained or hold."""
        return max(0, (self.total - self.committed(trials)) // self.per_trial)

    def room(self, trials: list[FrozenTrial]) -> bool:
        return self.trials_left(trials) >= 1


def epochs_trained(trials: list[FrozenTrial]) -> int:
    """Every epoch the trials trained so far, pruned and failed ones included."""
    return sum(int(t.user_attrs.get(record.EPOCHS_RUN, 0)) for t in trials)
