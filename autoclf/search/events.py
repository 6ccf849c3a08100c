"""What a running search tells its caller (the CLI draws these; the library never prints)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from autoclf.trainer import EpochReport


@dataclass(frozen=True)
class TrialStarted:
    number: int
    params: dict[str, Any]


@dataclass(frozen=True)
class EpochDone:
    number: int
    fold: int  # 0-based
    folds: int
    report: EpochReport


@dataclass(frozen=True)
class TrialFinished:
    trial: optuna.trial.FrozenTrial
    best: optuna.trial.FrozenTrial | None  # best COMPLETE trial so far


Event = TrialStarted | EpochDone | TrialFinished
EventFn = Callable[[Event], None]


def ignore(_: Event) -> None:
    pass
