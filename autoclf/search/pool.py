"""The worker processes of one search: started, watched, restarted and stopped by the parent.

``--gpus 0,1`` starts one worker process per GPU (``--workers`` per GPU), each seeing only its
own device through ``CUDA_VISIBLE_DEVICES``; ``--gpus cpu`` starts ``--workers`` processes on
the CPU. Workers pull trials from the study's storage by themselves (``worker.py``); the parent
only relays their events to the caller and deals with what goes wrong:

- a worker that dies (SIGKILL, the kernel's OOM killer, a crash): its trial is failed with the
  reason and queued again with the same parameters, and the worker is restarted;
- SIGINT, SIGTERM or SIGHUP: passed on to every worker, which fails and re-queues its running
  trial and exits; a worker still running after ``STOP_GRACE_S`` is killed and the parent does
  that for it. No trial is left RUNNING and no child outlives the parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from autoclf.errors import AutoclfError
from autoclf.search import wire
from autoclf.search.events import (
    EventFn,
    TrialFinished,
    WorkerNote,
    ignore,
)
from autoclf.search.runner import PreparedSearch, best_or_none
from autoclf.search.storage import fail_trial, get_trial
from autoclf.search.worker import EXIT_FAILED, PARENT_PID_ENV, STOP_SIGNALS, sampler_seed
from autoclf.trainer import default_loader_workers

STOP_GRACE_S = 30  # how long a worker may take to fail its trial and exit after a signal
MAX_RESTARTS = 3  # per worker slot; a worker that keeps dying is not restarted forever


@dataclass(frozen=True)
class Slot:
    """Where one worker process runs."""

    name: str  # "gpu0", "gpu1.2" (third worker on GPU 1), "cpu0"
    index: int
    device: str  # the device inside the worker: "cuda" (its one visible GPU) or "cpu"
    visible_gpu: str | None = None  # its CUDA_VISIBLE_DEVICES


def plan_slots(gpus: str, workers: int) -> list[Slot]:
    """``gpus``: "auto" (every visible GPU, else the CPU), "cpu", or indices such as "0,1"."""
    if workers < 1:
        raise AutoclfError(f"--workers must be at least 1, got {workers}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    spec = gpus.strip().lower()
    if spec == "auto":
        spec = ",".join(str(i) for i in range(count)) or "cpu"
    if spec == "cpu":
        return [Slot(f"cpu{k}", k, "cpu") for k in range(workers)]
    try:
        ids = [int(part) for part in spec.split(",")]
    except ValueError:
        raise AutoclfError(
            f"--gpus {gpus!r}: expected 'auto', 'cpu' or GPU indices such as 0,1"
        ) from None
    for i in ids:
        if ids.count(i) > 1:
            raise AutoclfError(
                f"--gpus {gpus!r} names GPU {i} twice; use --workers N for N workers per GPU"
            )
        if not 0 <= i < count:
            have = f"{count} CUDA device(s): {list(range(count))}" if count else "no CUDA device"
            raise AutoclfError(
                f"--gpus {gpus!r}: there is no GPU {i}; this machine has {have} "
                "(--gpus cpu trains on the CPU)"
            )
    # Indices count within the GPUs this process may see, as torch.cuda numbers them.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",") if visible else [str(i) for i in range(count)]
    return [
        Slot(f"gpu{i}" if workers == 1 else f"gpu{i}.{k}", n * workers + k, "cuda", physical[i])
        for n, i in enumerate(ids)
        for k in range(workers)
    ]


@dataclass
class PoolResult:
    interrupted: int | None = None  # the signal that stopped the search
    interrupted_trials: list[int] = field(default_factory=list)  # running when it came
    gave_up: dict[str, str] = field(default_factory=dict)  # worker → why it stopped early


@dataclass
class _Worker:
    slot: Slot
    proc: subprocess.Popen
    log_path: Path
    starts: int
    events_fd: int  # the worker's end of its event pipe (its descriptor number)
    trial_id: int | None = None  # the trial it is running, if any
    trial_number: int | None = None
    stopped: dict | None = None  # its last message, when it stopped by itself


class Pool:
    """Worker processes for the slots. Start them early (``start``, or ``with Pool(…)``): they
    import torch and timm while the caller prepares the study; ``run`` then gives them work."""

    def __init__(
        self,
        slots: list[Slot],
        *,
        log_dir: Path,
        on_event: EventFn = ignore,
        objective: str | None = None,
    ):
        self.slots, self.log_dir, self.on_event = slots, log_dir, on_event
        self.objective = objective  # "module:function" that wraps the trial (benchmarks)
        self.prepared: PreparedSearch | None = None
        self.deadline: float | None = None
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        # Compute threads per worker: the cores shared out, or fewer where OMP_NUM_THREADS says.
        self.threads = max(1, (cpus or 1) // len(slots))
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            self.threads = max(1, min(self.threads, int(os.environ["OMP_NUM_THREADS"])))
        self.events: queue.Queue[tuple[str, dict | None]] = queue.Queue()
        self.workers: dict[str, _Worker] = {}
        self.result = PoolResult()
        self.stop_by: float | None = None  # when stopping: the time to kill stragglers

    def __enter__(self) -> Pool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._kill_all("the search stopped")  # nothing outlives the parent

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot, starts=0)

    # -- the parent's loop ---------------------------------------------------------------------

    def run(self, prepared: PreparedSearch) -> PoolResult:
        """Run the study's trials in the workers until they all stop; then none is left."""
        self.prepared = prepared
        timeout = prepared.config.timeout
        self.deadline = time.time() + timeout if timeout else None
        previous = self._install_signal_handlers()
        try:
            if not self.workers:
                self.start()
            for w in list(self.workers.values()):
                self._send_spec(w)
            while self.workers:
                try:
                    name, message = self.events.get(timeout=0.25)
                except queue.Empty:
                    if self.stop_by is not None and time.time() > self.stop_by:
                        self._kill_all(f"did not stop within {STOP_GRACE_S}s of the signal")
                    continue
                if message is None:
                    self._exited(self.workers[name])
                else:
                    self._relay(self.workers[name], message)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._kill_all("the search stopped")  # nothing outlives the parent
        return self.result

    def _relay(self, w: _Worker, message: dict) -> None:
        kind, name = message["type"], w.slot.name
        if kind == "started":
            w.trial_id, w.trial_number = message["trial_id"], message["number"]
            self.on_event(wire.from_wire(message, name))
        elif kind == "epoch":
            self.on_event(wire.from_wire(message, name))
        elif kind == "finished":
            study = self.prepared.study
            trial = get_trial(study, message["trial_id"])
            w.trial_id = w.trial_number = None
            self.on_event(TrialFinished(trial, best_or_none(study), name))
        elif kind == "stopped":
            w.stopped = message

    def _exited(self, w: _Worker) -> None:
        code = w.proc.wait()
        name = w.slot.name
        del self.workers[name]
        _kill_group(w.proc.pid)  # its DataLoader workers, if any are left
        if code == 0:
            return
        if code == EXIT_FAILED and w.stopped:
            self.result.gave_up[name] = w.stopped.get("reason", "")
            self.on_event(WorkerNote(name, f"stopped: {w.stopped['reason']}", True))
            return
        if self.stop_by is not None:  # stopping: it failed and re-queued its trial itself
            self._fail_running(w, f"interrupted; its worker {name} exited with {_describe(code)}")
            return
        message = f"worker {name} (pid {w.proc.pid}) died with {_describe(code)}"
        retried = self._fail_running(w, f"{message} during the trial; its log: {w.log_path}")
        if retried:
            message += f" during trial #{w.trial_number}; queued again with the same parameters"
        if w.starts < MAX_RESTARTS:
            self.on_event(WorkerNote(name, f"{message}; restarting it", True))
            self._send_spec(self._spawn(w.slot, starts=w.starts + 1))
        else:
            self.result.gave_up[name] = message
            self.on_event(
                WorkerNote(name, f"{message}; not restarted again (see {w.log_path})", True)
            )

    def _fail_running(self, w: _Worker, reason: str) -> bool:
        """Fail (and queue again) the trial a dead worker left RUNNING; False if it had none."""
        return w.trial_id is not None and fail_trial(self.prepared.study, w.trial_id, reason)

    # -- starting and stopping workers -----------------------------------------------------------

    def _spawn(self, slot: Slot, *, starts: int) -> _Worker:
        read_fd, write_fd = os.pipe()
        log_path = self.log_dir / f"{slot.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), PARENT_PID_ENV: str(os.getpid())}
        env["CUDA_VISIBLE_DEVICES"] = slot.visible_gpu or ""  # a CPU worker sees no GPU
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                # Not `-m autoclf.search.worker`: that would load the module twice (as
                # __main__ and as imported by the package), with two Interrupted classes.
                [
                    sys.executable,
                    "-c",
                    "import sys; from autoclf.search.worker import main; sys.exit(main())",
                ],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(write_fd,),
                # Its own process group: a Ctrl-C in the terminal reaches the parent only, which
                # passes it on to each worker (not to their DataLoader workers) in order.
                start_new_session=True,
            )
        os.close(write_fd)  # the worker holds the only write end: its exit ends the stream
        worker = _Worker(slot, proc, log_path, starts, events_fd=write_fd)
        self.workers[slot.name] = worker
        threading.Thread(target=self._read_events, args=(slot.name, read_fd), daemon=True).start()
        return worker

    def _send_spec(self, w: _Worker) -> None:
        prepared, config, slot = self.prepared, self.prepared.config, w.slot
        loader_workers = config.loader_workers
        if loader_workers is None:  # the worker's share of the cores, not the machine's
            loader_workers = default_loader_workers(slot.device, self.threads)
        spec = {
            "worker": slot.name,
            "events_fd": w.events_fd,
            "study_dir": str(prepared.study_dir),
            "storage_url": prepared.storage_url,
            "cache": str(prepared.cache.path),
            "device": slot.device,
            "heartbeat": config.heartbeat,
            "threads": self.threads,
            "loader_workers": loader_workers,
            "sampler_seed": sampler_seed(
                config.seed, slot.index, w.starts, len(prepared.study.trials)
            ),
            "target": config.trials,
            "deadline": self.deadline,
            "budget": asdict(prepared.budget) if prepared.budget else None,
            "objective": self.objective,
        }
        # The spec goes through stdin, not argv: the storage URL may hold a password.
        try:
            w.proc.stdin.write(json.dumps(spec).encode())
            w.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died already; the end of its event stream says so

    def _read_events(self, name: str, fd: int) -> None:
        with os.fdopen(fd) as lines:
            for line in lines:
                self.events.put((name, json.loads(line)))
        self.events.put((name, None))  # end of stream: the worker exited

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stop_by is not None:  # a second Ctrl-C: stop now
            self.stop_by = 0.0
            return
        self.result.interrupted = signum
        self.result.interrupted_trials = sorted(
            w.trial_number for w in self.workers.values() if w.trial_number is not None
        )
        self.stop_by = time.time() + STOP_GRACE_S
        for w in self.workers.values():
            _signal(w.proc, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    def _kill_all(self, why: str) -> None:
        for w in list(self.workers.values()):
            if w.proc.poll() is None:
                _kill_group(w.proc.pid)
                w.proc.wait()
            self._fail_running(w, f"worker {w.slot.name} was killed: it {why}")
            _kill_group(w.proc.pid)
        self.workers.clear()


def _signal(proc: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _describe(code: int) -> str:
    if code < 0:
        return signal.Signals(-code).name
    if code > 128 and code - 128 in signal.Signals._value2member_map_:
        return f"exit code {code} ({signal.Signals(code - 128).name})"
    return f"exit code {code}"
