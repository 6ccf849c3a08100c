"""Compute threads: how a process of autoclf's shares the CPU cores with whatever else runs.

torch's CPU kernels run on an OpenMP thread pool (GNU libgomp in the pip wheels). Between two
parallel regions its idle threads spin on their core for a while before they sleep. Alone on
the machine that is what makes small kernels fast; next to any other busy process it is a
disaster: a thread spins at a barrier for a partner that the scheduler has taken off its core.
Two torch processes on two cores together did 0.3-0.45x the training steps of one alone, and
one next to a busy loop 0.26-0.34x (``benchmarks/threads.py``). A passive wait policy
(``OMP_WAIT_POLICY=PASSIVE``) helps under load, but a wake-up per parallel region makes the
32 px models 2.3-2.6x slower alone.

So autoclf keeps torch's fast default and uses fewer threads when the cores are taken:
``CoreShare``, called at every training and inference step, looks every ``INTERVAL_S``
seconds at how much CPU the rest of the machine used (``/proc/stat`` for this process's cores,
less this process's own time) and sets torch's thread count to the cores left free, between 1
and the threads this process was given. With one thread there is no barrier to spin at. Two
searches on two cores settle at one thread each (together 1.07-1.45x one alone); alone, a
worker goes back to all of its cores within seconds. A run whose thread count changed sums
some numbers in another order, so it is not bit-for-bit the run alone.

``AUTOCLF_THREADS=fixed`` turns this off (the thread count stays at what was given): for
bit-for-bit repeat runs, or where ``/proc/stat`` does not describe the cores this process may
use (a container limited by a CPU quota rather than by its cores).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

log = logging.getLogger(__name__)

INTERVAL_S = 2.0  # how often the free cores are measured: a step is 10 ms to 1 s
ENV_SWITCH = "AUTOCLF_THREADS"


def _cpu_ticks(cpus: set[int]) -> int | None:
    """Busy clock ticks (everything but idle and iowait) of ``cpus`` since boot."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if int(name[3:]) in cpus:
            values = [int(v) for v in fields]
            busy += sum(values) - values[3] - values[4]  # less idle and iowait
            busy -= sum(values[8:])  # guest time is counted in user already
    return busy


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class CoreShare:
    """Keeps torch's intra-op threads at the cores the rest of the machine leaves free, at
    most ``threads`` and at least one. Call it often (every step): it only looks at the
    clock until ``INTERVAL_S`` has passed."""

    def __init__(self, threads: int, *, interval: float = INTERVAL_S):
        import torch

        self.torch = torch
        self.max_threads = max(1, threads)
        self.interval = interval
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.enabled = os.environ.get(ENV_SWITCH, "") != "fixed" and self.max_threads > 1
        self.current = self.max_threads
        torch.set_num_threads(self.current)
        self._mark()

    def _mark(self) -> None:
        self.t0 = time.monotonic()
        self.ticks0 = _cpu_ticks(self.cpus) if self.enabled else None
        self.own0 = _own_seconds()
        if self.ticks0 is None:
            self.enabled = False  # no /proc/stat: keep the threads given

    def others_cores(self) -> float:
        """Cores' worth of CPU that other processes used since the last look."""
        wall = time.monotonic() - self.t0
        ticks = _cpu_ticks(self.cpus)
        if ticks is None or wall <= 0:
            return 0.0
        used = (ticks - self.ticks0) / self.hz / wall
        own = (_own_seconds() - self.own0) / wall
        return max(0.0, used - own)

    def __call__(self) -> None:
        if not self.enabled or time.monotonic() - self.t0 < self.interval:
            return
        others = self.others_cores()
        want = max(1, min(self.max_threads, round(len(self.cpus) - others)))
        if want != self.current:
            log.info(
                "compute threads %d -> %d (other processes took %.1f of %d cores)",
                self.current,
                want,
                others,
                len(self.cpus),
            )
            self.torch.set_num_threads(want)
            self.current = want
        self._mark()


_share: CoreShare | None = None


def limit_threads(threads: int | None = None) -> None:
    """At most ``threads`` compute threads in this process (default: as many as torch chose,
    from ``OMP_NUM_THREADS`` or the cores), fewer while other processes take cores (see
    ``follow_free_cores``): torch's intra-op pool, its inter-op pool, and OpenCV's
    (albumentations and the cache's resizes run on it)."""
    global _share
    import cv2
    import torch

    if threads is None:
        threads = torch.get_num_threads()

    # Possible only before the first inter-op work; later, the pool is already sized.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    cv2.setNumThreads(threads)
    _share = CoreShare(threads)


def follow_free_cores() -> None:
    """Adjust torch's threads to the free cores, if ``limit_threads`` was called in this
    process (a library user's own thread settings are left alone)."""
    if _share is not None:
        _share()
