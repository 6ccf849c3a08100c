"""What a worker process tells its parent: one JSON object a line on its stdout.

``started`` and ``epoch`` carry the events of :mod:`autoclf.search.events`; ``finished``
names the trial (the parent reads it back from the storage); ``stopped`` says why the worker
stops pulling trials.
"""

from __future__ import annotations

from dataclasses import asdict

from autoclf.search.events import EpochDone, Event, TrialStarted


def to_wire(event: Event) -> dict:
    if isinstance(event, TrialStarted):
        return {
            "type": "started",
            "number": event.number,
            "params": event.params,
            "trial_id": event.trial_id,
        }
    if isinstance(event, EpochDone):
        return {
            "type": "epoch",
            "number": event.number,
            "fold": event.fold,
            "folds": event.folds,
            "report": asdict(event.report),
        }
    raise TypeError(f"{type(event).__name__} is not sent by workers")


def from_wire(message: dict, worker: str) -> TrialStarted | EpochDone:
    """The event a ``started`` or ``epoch`` message carries, from ``worker``."""
    from autoclf.trainer import EpochReport  # the parent process has torch loaded already

    if message["type"] == "started":
        return TrialStarted(message["number"], message["params"], worker, message["trial_id"])
    if message["type"] == "epoch":
        report = EpochReport(**message["report"])
        return EpochDone(message["number"], message["fold"], message["folds"], report, worker)
    raise ValueError(f"a {message['type']!r} message carries no event")


def finished(trial_id: int) -> dict:
    return {"type": "finished", "trial_id": trial_id}


def stopped(why: str, ran: int, reason: str) -> dict:
    return {"type": "stopped", "why": why, "ran": ran, "reason": reason}
