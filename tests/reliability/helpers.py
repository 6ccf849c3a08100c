"""Run ``autoclf search`` as users do (a real process tree), and look at its study."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

STUDY = "r"
# Trials of a few seconds on a CPU: long enough to be caught mid-trial, short enough for CI.
SPACE = """
params:
  backbone: test_efficientnet
  lr: {type: float, low: 0.002, high: 0.01, log: true}
  batch_size: 64
  epochs: 2
  image_size: 16
  scheduler: constant
"""
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def search_command(cwd: Path, *args: str, space: str = SPACE) -> list[str]:
    (cwd / "space.yaml").write_text(space)
    exe = shutil.which("autoclf", path=str(Path(sys.executable).parent)) or "autoclf"
    return [exe, "search", "digits", "--study", STUDY, "--space", "space.yaml", "--folds", "2",
            *args]  # fmt: skip


def start_search(cwd: Path, *args: str, space: str = SPACE) -> subprocess.Popen:
    return subprocess.Popen(
        search_command(cwd, *args, space=space),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_search(
    cwd: Path, *args: str, space: str = SPACE, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        search_command(cwd, *args, space=space),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def storage_url(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'studies' / STUDY / 'study.db'}"


def trials(url: str) -> list[FrozenTrial]:
    """The study's trials as a separate reader (like the dashboard) sees them. SQLite is
    opened read-only: a reader must not race the search to create the tables."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            return []
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
    try:
        return optuna.load_study(study_name=STUDY, storage=url).trials
    except (KeyError, sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        return []  # the study or its tables are still being created


def wait_for(what: str, check: Callable[[], object], *, timeout: float = 120) -> object:
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def running_trial(url: str, *, min_epochs: int = 1) -> FrozenTrial | None:
    """A trial that is RUNNING and has trained at least ``min_epochs`` epochs."""
    for t in trials(url):
        if t.state == TrialState.RUNNING and t.user_attrs.get("epochs_run", 0) >= min_epochs:
            return t
    return None


def worker_pid(trial: FrozenTrial) -> int:
    """The worker process a trial runs in, from its ``worker`` attribute: "cpu0 (pid 123)"."""
    return int(trial.user_attrs["worker"].split("pid ")[1].rstrip(")"))


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (workers and their DataLoader processes), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def finished_snapshot(url: str) -> dict[int, tuple]:
    """number → (state, value, params, fold scores) of every finished trial."""
    return {
        t.number: (t.state, t.value, t.params, t.user_attrs.get("fold_scores"))
        for t in trials(url)
        if t.state in FINISHED
    }
