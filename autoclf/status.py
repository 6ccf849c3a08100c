"""Where a search stands, read from its study: counts, the leaderboard, the trials running now
(which fold and epoch each is in), recent failures, and an estimate of when the search ends.

Everything here is read-only and works while ``autoclf search`` is running (in the same or
another process, on this machine or, with a shared storage, another): it reads the study's
storage and its folder, nothing else. ``autoclf status`` prints what :func:`study_status`
returns.

Clocks: Optuna stores ``datetime_start``/``datetime_complete`` as naive local times
(``datetime.now()``), so every time here is a naive local ``datetime`` too; an aware ``now``
is converted to local time first.

Estimating the end (``eta_s``)
------------------------------
The search starts trials until the study holds ``target`` finished (COMPLETE or PRUNED)
trials, at most one per worker at a time, and none after ``--timeout`` (trials running then
are finished). So:

* trials still to start = max(0, target − finished − running), and with ``--epoch-budget``
  at most the whole trials that still fit it (the workers' rule: epochs trained so far, a
  whole trial held for each running one; see ``search.budget.EpochBudget``);
* each of them takes the mean duration of the finished trials (pruned trials included: future
  trials are pruned about as often); with none finished yet, the mean projected duration of
  the running trials (``elapsed / progress``);
* a running trial needs ``elapsed × (1 − p) / p`` more, where ``p`` is its progress through
  its folds × epochs: its own pace (backbone, image size and epochs vary a lot within a
  space, so the study's mean says little about one trial, and ``mean − elapsed`` reads 0 for
  any trial slower than the mean). Before its first epoch (``p == 0``), ``mean − elapsed``
  (at least 0). This reckons that the trial is not pruned, so it errs long;
* parallelism = the number of trials running now, and at least the workers the last run
  started (``--workers`` × the GPUs named by ``--gpus``; ``auto`` counts as one device, as the
  GPUs of the machine that runs the search cannot be seen from here); at least 1;
* the trials to start are handed to whichever worker is free first (list scheduling), never
  at or after the timeout's deadline; the estimate is when the last trial ends.

The deadline is ``timeout`` seconds after the last ``autoclf search`` started its trials.
That moment is taken from the modification time of the study's ``config.json``, which every
run rewrites just before its trials start (and whose ``timeout`` is the one in force). The
earliest ``datetime_start`` among the study's trials would be wrong for a resumed study: it
belongs to the first run, and would put the deadline in the past.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoclf.search import record
from autoclf.search.budget import EpochBudget, epochs_trained
from autoclf.study import StudyFiles

STATES = (
    TrialState.COMPLETE,
    TrialState.PRUNED,
    TrialState.FAIL,
    TrialState.RUNNING,
    TrialState.WAITING,
)


@dataclass(frozen=True)
class RunningTrial:
    number: int
    worker: str | None  # e.g. "cpu0 (pid 123)"; None until the trial's worker wrote it
    started: datetime  # naive local time, like Optuna's
    elapsed_s: float
    fold: int  # 1-based fold of the last reported epoch (1 before any report)
    folds: int
    epoch: int  # 1-based epoch within that fold of the last report; 0 before any report
    epochs: int  # this trial's epochs per fold
    progress: float  # share of its folds × epochs done, 0..1
    best_so_far: float | None  # the best intermediate value reported so far (any fold)
    params: dict


@dataclass(frozen=True)
class StudyStatus:
    study: str
    metric: str
    direction: str  # "maximize" or "minimize"
    counts: dict[str, int]  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING: every key present
    target: int  # --trials of the last run (config.json)
    finished: int  # COMPLETE + PRUNED, what --trials counts
    running: list[RunningTrial]  # by trial number
    leaderboard: list[record.TrialRecord]  # the best COMPLETE trials first, at most `top`
    failures: list[tuple[int, str]]  # (number, reason) of the FAIL trials, newest first
    mean_trial_s: float | None  # mean duration of the finished trials
    eta_s: float | None  # seconds until the search ends; None when it cannot be estimated
    eta_basis: str  # how eta_s was reckoned, or why there is none
    epochs_trained: int  # every epoch of every trial so far, running, pruned and failed ones too
    epoch_budget: int | None  # --epoch-budget of the last run


def study_status(
    files: StudyFiles, study: optuna.Study, *, now: datetime | None = None, top: int = 10
) -> StudyStatus:
    """The state of ``study`` (the one ``files`` describes) at ``now`` (default: now)."""
    now = _local_naive(now or datetime.now())
    trials = study.get_trials(deepcopy=False)
    direction = study.direction.name.lower()
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    counts = {state.name: 0 for state in STATES}
    for t in trials:
        if t.state.name in counts:
            counts[t.state.name] += 1
    finished_trials = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in finished_trials
        if t.datetime_start is not None and t.datetime_complete is not None
    ]
    mean_trial_s = sum(durations) / len(durations) if durations else None

    running = [
        _running_trial(t, files, now, maximize)
        for t in sorted(trials, key=lambda t: t.number)
        if t.state == TrialState.RUNNING
    ]
    failures = [
        (t.number, _fail_reason(t))
        for t in sorted(trials, key=lambda t: t.number, reverse=True)
        if t.state == TrialState.FAIL
    ]
    target = files.config.trials
    to_start = max(0, target - len(finished_trials) - len(running))
    if files.config.epoch_budget is not None:
        budget = EpochBudget.of(files.config.epoch_budget, files.n_folds, files.space)
        to_start = min(to_start, budget.trials_left(trials))
    eta_s, eta_basis = _estimate(
        to_start=to_start,
        running=running,
        mean_trial_s=mean_trial_s,
        parallelism=max(1, len(running), files.config.workers * _devices(files.config.gpus)),
        deadline_in=_deadline_in(files, now),
    )
    return StudyStatus(
        study=files.config.study,
        metric=files.config.metric,
        direction=direction,
        counts=counts,
        target=target,
        finished=len(finished_trials),
        running=running,
        leaderboard=record.leaderboard(trials, maximize=maximize, top=max(0, top)).rows,
        failures=failures,
        mean_trial_s=mean_trial_s,
        eta_s=eta_s,
        eta_basis=eta_basis,
        epochs_trained=epochs_trained(trials),
        epoch_budget=files.config.epoch_budget,
    )


def _running_trial(
    t: FrozenTrial, files: StudyFiles, now: datetime, maximize: bool
) -> RunningTrial:
    """Where a running trial is. The objective reports epoch ``e`` (1-based) of fold ``f``
    (0-based) at step ``f * max_epochs + e``, ``max_epochs`` being the space's largest
    ``epochs`` (the same stride for every trial); a trial with fewer epochs leaves gaps."""
    stride = files.space.max_epochs
    config = t.user_attrs.get(record.CONFIG) or {}
    epochs = int(config.get("epochs") or t.params.get("epochs") or stride)
    if config.get("kind") == "head":  # one report per fold, at the stride's end
        epochs = stride
    folds = files.n_folds
    values = t.intermediate_values
    if values:
        fold_index, epoch = divmod(max(values) - 1, stride)
        epoch += 1
    else:
        fold_index, epoch = 0, 0
    # Progress by position (folds before this one, epochs into it) rather than by the number
    # of reports: a fold that stopped early (patience) still counts as done. `fold_scores`
    # grows when a fold ends, so it tells a finished fold from one still training.
    folds_done = len(t.user_attrs.get(record.FOLD_SCORES) or [])
    if folds_done > fold_index:
        position = folds_done * epochs
    else:
        position = fold_index * epochs + min(epoch, epochs)
    started = t.datetime_start or now
    best = None
    if values:
        best = max(values.values()) if maximize else min(values.values())
    return RunningTrial(
        number=t.number,
        worker=t.user_attrs.get(record.WORKER),
        started=started,
        elapsed_s=max(0.0, (now - started).total_seconds()),
        fold=fold_index + 1,
        folds=folds,
        epoch=epoch,
        epochs=epochs,
        progress=min(1.0, position / (folds * epochs)),
        best_so_far=best,
        params=dict(t.params),
    )


def _estimate(
    *,
    to_start: int,
    running: list[RunningTrial],
    mean_trial_s: float | None,
    parallelism: int,
    deadline_in: float | None,
) -> tuple[float | None, str]:
    """(eta_s, basis): see the module's docstring."""
    if not to_start and not running:
        return 0.0, "no trial running and none left to start"
    per_trial, projected = mean_trial_s, False
    if per_trial is None:
        paces = [r.elapsed_s / r.progress for r in running if r.progress > 0]
        if paces:
            per_trial, projected = sum(paces) / len(paces), True
    if per_trial is None:
        why = "no trial has finished or reported an epoch yet"
        if deadline_in is not None:
            why += f"; {_timeout_words(deadline_in)}"
        return None, why

    slots = [
        r.elapsed_s * (1 - r.progress) / r.progress
        if r.progress > 0
        else max(0.0, per_trial - r.elapsed_s)
        for r in running
    ]
    slots += [0.0] * (parallelism - len(slots))
    heapq.heapify(slots)
    started = 0
    for _ in range(to_start):
        free_at = slots[0]
        if deadline_in is not None and free_at >= deadline_in:
            break  # workers stop starting trials at the deadline
        heapq.heapreplace(slots, free_at + per_trial)
        started += 1
    eta = max(slots)

    parts = []
    if running:
        parts.append(f"{len(running)} running")
    if to_start:
        how = " (projected from the running trials)" if projected else ""
        workers = f"{parallelism} worker{'s' if parallelism != 1 else ''}"
        parts.append(f"{_trials(to_start)} left × {per_trial:.0f} s{how} / {workers}")
    basis = " + ".join(parts)
    if deadline_in is not None and started < to_start:
        cut = "none" if not started else f"only {started}"
        basis += f"; {_timeout_words(deadline_in)}: {cut} of them start"
    return eta, basis


def _trials(n: int) -> str:
    return f"{n} trial{'s' if n != 1 else ''}"


def _timeout_words(deadline_in: float) -> str:
    if deadline_in > 0:
        return f"timeout in {deadline_in:.0f} s"
    return f"timeout passed {-deadline_in:.0f} s ago"


def _deadline_in(files: StudyFiles, now: datetime) -> float | None:
    """Seconds from ``now`` until the last run stops starting trials (negative once passed);
    None without ``--timeout``. The run's start is ``config.json``'s modification time."""
    timeout = files.config.timeout
    if not timeout:
        return None
    path = files.dir / "config.json"
    # In seconds, not as a datetime (a --timeout of 1e12 s ends after the year 9999); ``now``
    # is naive local time, as Optuna's are.
    return path.stat().st_mtime + timeout - now.timestamp()


def _devices(gpus: str) -> int:
    """Devices the last run spread its workers over, as far as ``--gpus`` tells."""
    spec = gpus.strip().lower()
    if spec in ("auto", "cpu", ""):
        return 1
    return max(1, len([part for part in spec.split(",") if part.strip()]))


def _fail_reason(t: FrozenTrial) -> str:
    reason = record.TrialRecord.of(t).reason
    return str(reason) if reason else "unknown (no reason recorded)"


def _local_naive(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone().replace(tzinfo=None)


__all__ = ["RunningTrial", "StudyStatus", "study_status"]
