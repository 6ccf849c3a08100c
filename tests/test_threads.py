"""Compute threads: a process of autoclf's uses at most the cores it was given, and fewer while
other processes take them (autoclf/threads.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from autoclf.threads import CoreShare
from autoclf.trainer import CachedImages

CORES = len(os.sched_getaffinity(0))
needs_two_cores = pytest.mark.skipif(CORES < 2, reason="needs 2 or more cores")
# Whether a core is busy is the thing measured: beside pytest-xdist's other workers it always is.
needs_idle_cores = pytest.mark.skipif(
    int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1,
    reason="measures idle cores: run without pytest -n",
)


def _settle(share: CoreShare, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
        share()


@needs_two_cores
@needs_idle_cores
def test_core_share_gives_a_busy_core_back_and_takes_it_again(monkeypatch):
    monkeypatch.delenv("AUTOCLF_THREADS", raising=False)
    import torch

    before = torch.get_num_threads()
    try:
        share = CoreShare(CORES, interval=0.5)
        _settle(share, 1.2)
        assert share.current == CORES  # nothing else runs
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            _settle(share, 1.6)
            assert share.current == CORES - 1
            assert torch.get_num_threads() == CORES - 1
        finally:
            busy.kill()
            busy.wait()
        _settle(share, 1.6)
        assert share.current == CORES and torch.get_num_threads() == CORES
    finally:
        torch.set_num_threads(before)


@needs_two_cores
def test_fixed_threads_stay_fixed(monkeypatch):
    monkeypatch.setenv("AUTOCLF_THREADS", "fixed")
    import torch

    before = torch.get_num_threads()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        share = CoreShare(CORES, interval=0.3)
        _settle(share, 1.0)
        assert share.current == CORES and torch.get_num_threads() == CORES
    finally:
        busy.kill()
        busy.wait()
        torch.set_num_threads(before)


TRAIN_ONE_THREAD = """
import json, os, time
import numpy as np, torch, cv2
from autoclf.threads import limit_threads
limit_threads({threads})
from autoclf.config import TrainParams
from autoclf.metrics import get_metric
from autoclf.trainer import fit
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
labels = np.arange(96) % 3
params = TrainParams(backbone="test_resnet", image_size=32, epochs=3, batch_size=16,
                     aug_strength=0.5)
wall, cpu = time.perf_counter(), sum(os.times()[:2])
fit(params, images=images, labels=labels, train_idx=np.arange(72), val_idx=np.arange(72, 96),
    num_classes=3, metric=get_metric("accuracy"), device=torch.device("cpu"), seed=0,
    loader_workers=0)
wall, cpu = time.perf_counter() - wall, sum(os.times()[:2]) - cpu
print(json.dumps({{"cores_used": cpu / wall, "intra": torch.get_num_threads(),
    "inter": torch.get_num_interop_threads(), "cv2": cv2.getNumThreads()}}))
"""


@needs_two_cores
def test_a_process_given_one_thread_trains_on_one_core():
    """Intra-op, inter-op and OpenCV threads all follow the count given: a fold trained with
    one thread keeps one core busy, not all of them."""
    out = subprocess.run(
        [sys.executable, "-c", TRAIN_ONE_THREAD.format(threads=1)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "AUTOCLF_THREADS": "fixed"},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["intra"], result["inter"], result["cv2"]) == (1, 1, 1)
    assert result["cores_used"] < 1.25, result


class _OpenCVThreads(CachedImages):
    """Each item is the OpenCV thread count of the process that loaded it."""

    def __getitem__(self, i: int) -> int:
        import cv2

        return cv2.getNumThreads()


def test_loader_workers_run_opencv_on_one_thread():
    import torch

    from autoclf.augment import train_transform
    from autoclf.trainer import _reseed_worker

    transform = train_transform(strength=0.0, size=8, hflip=False, seed=0)
    dataset = _OpenCVThreads(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4), np.arange(4), transform)
    # Spawned, not forked: a fork here would hang if an earlier test had started OpenCV's
    # thread pool in this process (fit gives it up before forking; this bare loader cannot).
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=2,
        num_workers=1,
        worker_init_fn=_reseed_worker,
        multiprocessing_context="spawn",
    )
    assert [int(v) for batch in loader for v in batch] == [1, 1, 1, 1]


FORK_AFTER_OPENCV = """
import numpy as np, cv2, torch
from autoclf.config import TrainParams
from autoclf.metrics import get_metric
from autoclf.trainer import fit

from autoclf.data.cache import resize_square

rng = np.random.default_rng(0)
# Small images enlarged into a cache (cubic): OpenCV starts its thread pool in this process.
for _ in range(3):
    resize_square(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8), 1000)
images = rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
labels = np.arange(32) % 2
params = TrainParams(backbone="test_resnet", image_size=16, epochs=1, batch_size=8)
result = fit(params, images=images, labels=labels, train_idx=np.arange(24),
             val_idx=np.arange(24, 32), num_classes=2, metric=get_metric("accuracy"), seed=0,
             device=torch.device("cpu"), loader_workers=1)
print("epochs", result.epochs_run)
"""


@pytest.mark.slow
def test_loader_workers_start_after_opencv_has_run_in_the_parent():
    """A loader process forked while the parent had OpenCV's thread pool hung for ever at its
    first OpenCV call: on a GPU (loader workers), finalize after enlarging small test images
    into their cache (a 32 px data set at 224 px, say). Without the fix this times out."""
    done = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_OPENCV], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "epochs 1" in done.stdout
