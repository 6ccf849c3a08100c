"""What a running search tells its caller (the CLI draws these; the library never prints).

``worker`` names the worker process an event comes from (``cpu0``, ``gpu1``…); it is empty
when trials run in the caller's own process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the CLI reads events without loading torch or optuna
    import optuna

    from autoclf.trainer import EpochReport


@dataclass(frozen=True)
class TrialStarted:
    number: int
    params: dict[str, Any]
    worker: str = ""
    trial_id: int = -1


@dataclass(frozen=True)
class EpochDone:
    number: int
    fold: int  # 0-based
    folds: int
    report: EpochReport
    worker: str = ""


@dataclass(frozen=True)
class TrialFinished:
    trial: optuna.trial.FrozenTrial
    best: optuna.trial.FrozenTrial | None  # best COMPLETE trial so far
    worker: str = ""


@dataclass(frozen=True)
class WorkerNote:
    """Something happened to a worker process: it stopped, died, was restarted."""

    worker: str
    message: str
    problem: bool = False


Event = TrialStarted | EpochDone | TrialFinished | WorkerNote
EventFn = Callable[[Event], None]


def ignore(_: Event) -> None:
    pass
