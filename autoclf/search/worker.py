"""One worker: pull trials from the shared study until it holds ``target`` finished trials
(or its epoch budget is spent).

The same loop runs in the caller's process (:func:`autoclf.search.run`) and in every worker
process that ``autoclf search`` starts (:func:`main`, see ``pool.py``).
Workers never talk to each other: the study's storage is the only thing they share, so
workers on other machines join by pointing at the same PostgreSQL URL.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import gc
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from autoclf.search import record, storage, wire
from autoclf.search.budget import EpochBudget
from autoclf.search.storage import ClaimLock, fail_stale_trials, fail_trial, retry_trial
from autoclf.threads import limit_threads
from autoclf.trainer import release_memory

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 3
POLL_S = 0.5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PARENT_PID_ENV = "AUTOCLF_PARENT_PID"
EXIT_FAILED = 3  # a worker process gave up after MAX_CONSECUTIVE_FAILURES failed trials

log = logging.getLogger("autoclf.worker")


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP. A KeyboardInterrupt, so Optuna fails the running trial."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP in a worker process; one only (the clean-up it starts, fail
    and re-queue, must not be cut short).

    In the objective (training), the signal raises :class:`Interrupted`: the objective writes
    why it stopped, Optuna fails the trial, and the worker queues it again. In Optuna's own
    steps around the objective (creating the trial, writing its result) the signal waits
    until the step is done, so no trial's record is cut in half; the worker then stops before
    its next trial. Anywhere else it raises at once.

    Python runs a handler between any two bytecodes, so a raise can land where it must not:
    - in the storage's code (SQLAlchemy, its driver): a raise there can leave a transaction
      open that locks an SQLite study for every process, so the trial's failure cannot be
      written ("database is locked" a minute later, and the worker died with exit code 1);
    - in a finalizer (``__del__``, a weakref callback): Python drops what it raises
      ("Exception ignored in"), and the trial would train on.
    There the handler runs again a moment later (``_handle_again``), until it can raise."""

    def __init__(self) -> None:
        self.deferred = False  # in Optuna's steps around the objective
        self.pending: int | None = None  # a signal that came while deferred
        self.taken: int | None = None  # the signal this worker stops for; later ones are ignored
        self.again = False  # the handler runs again for it: it could not raise where it ran
        self._timer: threading.Timer | None = None  # what runs it again

    def install(self, signums: tuple[int, ...] = STOP_SIGNALS) -> None:
        for signum in signums:
            signal.signal(signum, self._handle)
        if sys.unraisablehook != self._unraisable:  # installed once, not chained to itself
            self._previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable

    @contextlib.contextmanager
    def ctrl_c(self) -> Iterator[None]:
        """Ctrl-C, for the length of the block, as a worker takes it; for a search in the
        caller's process (:func:`autoclf.search.runner.run`), where Python's own handler would
        raise inside the storage's code too. Then Python's handler is back, and a Ctrl-C that
        waited for Optuna's bookkeeping is raised. Only in the main thread, and only in place
        of Python's default handler: a caller's own handler is left alone."""
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield
            return
        hook = sys.unraisablehook
        self.__init__()
        self.install((signal.SIGINT,))
        try:
            yield
            if self.taken is not None:  # it waited, and the search ended meanwhile
                raise Interrupted(self.taken)
        finally:
            if self._timer is not None:  # not to run again under Python's own handler
                self._timer.cancel()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.unraisablehook = hook
            self.__init__()

    def _unraisable(self, unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, Interrupted):  # raised in a finalizer, and dropped
            self._handle_again(unraisable.exc_value.signum)
        else:
            self._previous_hook(unraisable)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.again:
            self.again, signum = False, self.taken
        elif self.taken is not None:
            return
        self.taken = signum
        if self.deferred:
            self.pending = signum
            return
        if _unsafe_to_raise(frame):
            self._handle_again(signum)
            return
        raise Interrupted(signum)

    def _handle_again(self, signum: int) -> None:
        """Run the handler again, in the main thread, a moment from now (from another thread:
        called in the main one, ``interrupt_main`` runs the handler before it returns)."""
        self.again = True
        self._timer = threading.Timer(0.001, _thread.interrupt_main, (signum,))
        self._timer.daemon = True
        self._timer.start()

    def raise_pending(self) -> None:
        if self.pending is not None:
            raise Interrupted(self.pending)


# Where a raise could leave the study's database locked: see StopSignals.
_STORAGE_MODULES = ("sqlalchemy.", "optuna.storages.", "sqlite3", "psycopg", "pymysql", "MySQLdb")


def _unsafe_to_raise(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs in the storage's code or in the worker's unraisable hook."""
    while frame is not None:
        if frame.f_code is StopSignals._unraisable.__code__:
            return True
        if frame.f_globals.get("__name__", "").startswith(_STORAGE_MODULES):
            return True
        frame = frame.f_back
    return False


STOPPING = StopSignals()  # the worker process's; installed by main()


@dataclass
class WorkResult:
    why: str  # "done" (the study holds target finished trials), "budget", "timeout" or "failed"
    ran: int = 0  # trials this worker ran
    failures: list[FrozenTrial] = field(default_factory=list)  # the last consecutive FAILs


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    target: int,
    claim: ClaimLock,
    deadline: float | None = None,
    budget: EpochBudget | None = None,
    on_finished: Callable[[FrozenTrial], None] | None = None,
    device: torch.device | None = None,
) -> WorkResult:
    """Run trials until the study holds ``target`` finished (COMPLETE or PRUNED) trials, or
    ``budget`` has no room for another trial, or ``deadline`` (a ``time.time()``) passes, or
    trials keep failing.

    A worker starts a trial only while finished + running trials are fewer than ``target``
    (and the budget has room), and it decides that under ``claim``, so any number of workers
    finish exactly ``target``.
    """
    result = WorkResult("done")
    while True:
        if deadline is not None and time.time() >= deadline:
            result.why = "timeout"
            return result
        claim.acquire()
        try:
            fail_stale_trials(study)  # a dead worker's trial is failed and queued again
            trials = study.get_trials(deepcopy=False)
        except BaseException:
            claim.release()
            raise
        counts = Counter(t.state for t in trials)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        if finished >= target:
            claim.release()
            return result
        full = finished + counts[TrialState.RUNNING] >= target
        if budget is not None and not budget.room(trials):
            if not counts[TrialState.RUNNING]:
                claim.release()
                result.why = "budget"
                return result
            full = True  # a running trial may be pruned and leave room for one more
        if full:
            claim.release()
            time.sleep(POLL_S)  # a running trial may still fail and leave room for one more
            continue

        try:
            trial = _run_one(study, objective, claim)
        finally:
            claim.release()  # in case the trial never started
            release_memory(device or torch.device("cpu"))
        result.ran += 1
        if on_finished is not None:
            on_finished(trial)
        STOPPING.raise_pending()  # a signal during Optuna's bookkeeping: stop now
        result.failures = [*result.failures, trial] if trial.state == TrialState.FAIL else []
        if len(result.failures) >= MAX_CONSECUTIVE_FAILURES:
            result.why = "failed"
            return result


def failure_message(failures: list[FrozenTrial]) -> str:
    """Why a worker (or an in-process search) stopped: its last trials all failed."""
    reason = failures[-1].user_attrs.get(record.FAIL_REASON, "unknown error")
    return (
        f"{len(failures)} trials in a row failed (trials {[t.number for t in failures]}); "
        f"the last one with: {reason}"
    )


def _run_one(
    study: optuna.Study, objective: Callable[[optuna.Trial], float], claim: ClaimLock
) -> FrozenTrial:
    """One trial through Optuna's own loop (heartbeat, states, reasons), releasing ``claim``
    as soon as the trial exists. A stop signal lands in the objective, never in Optuna's
    bookkeeping around it (see :class:`StopSignals`)."""
    current: list[int] = []
    done: list[FrozenTrial] = []

    def claimed(trial: optuna.Trial) -> float:
        current.append(storage.trial_id(trial))
        claim.release()  # the trial is RUNNING now, so every other worker counts it
        STOPPING.deferred = False
        try:
            if STOPPING.pending is not None:  # it came while Optuna created the trial
                name = signal.Signals(STOPPING.pending).name
                trial.set_user_attr(record.FAIL_REASON, f"interrupted ({name})")
                STOPPING.raise_pending()
            return objective(trial)
        finally:
            STOPPING.deferred = True

    STOPPING.deferred = True
    try:
        study.optimize(
            claimed,
            n_trials=1,
            catch=(Exception,),
            callbacks=[lambda _, trial: done.append(trial)],
        )
    except KeyboardInterrupt as exc:
        if current:
            _requeue_interrupted(study, current[0], exc)
        raise
    finally:
        STOPPING.deferred = False
    return done[0]


def _requeue_interrupted(study: optuna.Study, trial_id: int, exc: KeyboardInterrupt) -> None:
    """Optuna has failed the trial already (the objective wrote why); make sure of it, even if
    the interrupt came between the objective and Optuna's bookkeeping, and queue it again."""
    fail_trial(study, trial_id, f"interrupted ({exc or 'SIGINT'})", retry=False)
    trial = storage.get_trial(study, trial_id)
    if trial.state == TrialState.FAIL:
        retry_trial(study, trial)


def sampler_seed(seed: int, *salt: int) -> int:
    """A sampler seed per (study seed, worker, start): two workers, or a worker restarted
    on a resumed study, must not draw the same "random" parameters again."""
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


# --- the worker process -----------------------------------------------------------------------


def main() -> int:
    """Entry point of one worker process. It starts while the parent still prepares the
    study, and imports what it needs meanwhile; then the parent writes a JSON spec on stdin:
    where the study is, which device, the target, and the descriptor to write events to."""
    die_with_parent(int(os.environ[PARENT_PID_ENV]))
    from autoclf.search.attach import attach  # torch, timm, albumentations: seconds

    STOPPING.install()
    try:
        raw = sys.stdin.read()
        if not raw.strip():
            return 0  # the parent stopped before it had a study to give
        return _serve(json.loads(raw), attach)
    except Interrupted as exc:
        log.info("stopped by %s", exc)
        return 128 + exc.signum


def _serve(spec: dict, attach: Callable) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {spec['worker']} %(message)s",
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # failures, with tracebacks
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    events = os.fdopen(spec["events_fd"], "w", buffering=1)
    # Its share of the cores, less one for each DataLoader process (each runs one thread), and
    # fewer while other processes take cores (autoclf/threads.py).
    limit_threads(max(1, spec["threads"] - spec["loader_workers"]))

    def emit(message: dict) -> None:
        try:
            events.write(json.dumps(message) + "\n")
        except BrokenPipeError:  # the parent is gone: stop like on Ctrl-C
            raise Interrupted(signal.SIGPIPE) from None

    attached = attach(
        Path(spec["study_dir"]),
        storage_url=spec["storage_url"],
        cache_path=spec["cache"],
        device=spec["device"],
        heartbeat=spec["heartbeat"],
        loader_workers=spec["loader_workers"],
        sampler_seed=spec["sampler_seed"],
        worker=spec["worker"],
        on_event=lambda event: emit(wire.to_wire(event)),
    )
    # Everything imported so far (torch, timm, …) lives as long as the process: keep it out
    # of the garbage collector's scans, or the collection after each trial takes ~0.5 s.
    gc.freeze()
    objective: Callable[[optuna.Trial], float] = attached.objective
    if spec.get("objective"):  # benchmarks and tests swap in their own trial body
        module, name = spec["objective"].split(":")
        objective = getattr(importlib.import_module(module), name)(attached.objective)

    def finished(trial: FrozenTrial) -> None:
        log.info(
            "trial %d %s value=%s params=%s",
            trial.number,
            trial.state.name,
            trial.value,
            trial.params,
        )
        if attached.device.type == "cuda":  # freed after every trial: this must not grow
            mb = torch.cuda.memory_allocated(attached.device) / 2**20
            log.info("GPU memory still allocated after trial %d: %.1f MiB", trial.number, mb)
        emit(wire.finished(storage.trial_id(trial)))

    log.info("started on %s (pid %d)", spec["device"], os.getpid())
    result = work(
        attached.study,
        objective,
        target=spec["target"],
        claim=attached.claim,
        deadline=spec["deadline"],
        budget=EpochBudget(**spec["budget"]) if spec["budget"] else None,
        on_finished=finished,
        device=attached.device,
    )
    reason = failure_message(result.failures) if result.why == "failed" else ""
    emit(wire.stopped(result.why, result.ran, reason))
    log.info("stopping: %s after %d trial(s) %s", result.why, result.ran, reason)
    return EXIT_FAILED if result.why == "failed" else 0


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM if the parent dies, however it dies (Linux)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the line above took effect
        raise SystemExit(128 + signal.SIGTERM)
