"""`autoclf status` on a search that is running: a real `autoclf search` process tree writes
the study while this process reads it, the way a user's second terminal would."""

from __future__ import annotations

import re
import signal

import pytest

from autoclf.status import study_status
from autoclf.study import load_study, open_study_dir
from tests.conftest import autoclf
from tests.reliability.helpers import (
    STUDY,
    alive,
    descendants,
    running_trial,
    storage_url,
    trials,
    wait_for,
)

pytestmark = pytest.mark.slow  # starts autoclf processes; `-m "not slow"` skips it


def test_status_of_a_running_search(tmp_path, start):
    url = storage_url(tmp_path)
    # More trials than the test can watch finish (a trial takes seconds): the search is still
    # running when `autoclf status` starts below, however slow the machine; it is stopped at
    # the end.
    search = start("--trials", "100", "--gpus", "cpu", "--workers", "1")
    wait_for(
        "a finished trial and a running one",
        lambda: running_trial(url) and any(t.state.is_finished() for t in trials(url)),
    )
    files = open_study_dir(tmp_path / "studies", STUDY)
    study = load_study(files)

    def snapshot():
        # The status as the user sees it once a finished trial and a running one that has
        # reported an epoch are both in the same read (one trial may end between two reads).
        status = study_status(files, study)
        if status.finished and [r for r in status.running if r.epoch]:
            return status
        return None

    status = wait_for("a status with a running trial mid-way", snapshot, timeout=60)
    children = descendants(search.pid)

    assert (status.study, status.direction, status.target) == (STUDY, "maximize", 100)
    assert status.counts["COMPLETE"] + status.counts["PRUNED"] == status.finished >= 1
    assert status.counts["RUNNING"] == len(status.running) == 1  # one worker
    (running,) = status.running
    worker = re.fullmatch(r"cpu0 \(pid (\d+)\)", running.worker or "")
    assert worker and int(worker[1]) in children  # the worker process of this search
    assert (running.folds, running.epochs) == (2, 2)  # --folds 2, epochs: 2 in the space
    assert 1 <= running.fold <= 2 and 1 <= running.epoch <= 2
    assert 0 < running.progress <= 1
    assert 0 <= running.best_so_far <= 1  # an accuracy
    assert running.elapsed_s > 0 and "lr" in running.params
    assert status.mean_trial_s > 0
    assert status.eta_s > 0 and status.eta_basis.startswith("1 running + ")
    values = [t.value for t in status.leaderboard]
    assert values == sorted(values, reverse=True)
    assert len(values) == status.counts["COMPLETE"]

    # The same, as the user types it in a second terminal while the search runs. A trial
    # takes about a second here: the command may land between two, so it may be asked again.
    row = re.compile(r"^ *\d+ +cpu0 \(pid \d+\) +[12]/2 +[0-2]/2 +\d+% ", re.M)

    def shown_running():
        shown = autoclf("status", "--study", STUDY, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        return shown if row.search(shown.stdout) else None

    shown = wait_for("`autoclf status` with a running trial", shown_running, timeout=60)
    assert re.search(r"study r: \d+ of 100 trials finished", shown.stdout)
    assert re.search(r"time left: about \d+ (s|min|h)", shown.stdout), shown.stdout

    search.send_signal(signal.SIGINT)
    out, err = search.communicate(timeout=120)
    assert search.returncode == 128 + signal.SIGINT, err + out
    assert not [pid for pid in children if alive(pid)]
