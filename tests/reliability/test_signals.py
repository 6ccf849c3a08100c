"""Ctrl-C and SIGTERM mid-trial: the running trial is failed and queued again, nothing is
left RUNNING, no child process survives, the exit code says why, and the same command
resumes."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from tests.conftest import save_image
from tests.reliability.helpers import (
    FINISHED,
    SPACE,
    alive,
    descendants,
    finished_snapshot,
    run_search,
    running_trial,
    storage_url,
    trials,
    wait_for,
)

pytestmark = pytest.mark.slow  # starts autoclf processes; `-m "not slow"` skips it

# Longer trials than the other reliability tests: the trial caught running must still be
# running when the signal lands, not finished in between (a 4-epoch trial on a fast CPU was).
LONGER = SPACE.replace("epochs: 2", "epochs: 6")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_trial_requeues_it_and_the_same_command_resumes(tmp_path, start, signum):
    assert LONGER != SPACE
    url = storage_url(tmp_path)
    args = ("--trials", "3", "--gpus", "cpu", "--workers", "2")
    search = start(*args, space=LONGER)
    victim = wait_for("a running trial", lambda: running_trial(url))
    children = descendants(search.pid)
    assert children  # the two workers at least
    search.send_signal(signum)
    out, err = search.communicate(timeout=120)

    assert search.returncode == 128 + signum, err + out
    assert f"stopped by {signum.name}" in err and "run the same command to resume" in err
    assert "\nnext:\n" in out and "report --study" in out  # what to do now, as after a finish
    assert not [pid for pid in children if alive(pid)]  # no worker or loader survives
    ts = trials(url)
    assert not [t.number for t in ts if t.state == TrialState.RUNNING]
    stopped = ts[victim.number]
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["fail_reason"] == f"interrupted ({signum.name})"
    (queued,) = [t for t in ts if t.user_attrs.get("retry_of") == victim.number]
    assert queued.state == TrialState.WAITING and queued.params == victim.params
    if signum == signal.SIGTERM:
        return  # resuming is the same after either signal; once is enough

    before = finished_snapshot(url)
    again = run_search(tmp_path, *args, space=LONGER)
    assert again.returncode == 0, again.stderr + again.stdout
    ts = trials(url)
    assert sum(t.state in FINISHED for t in ts) == 3
    assert not [t.number for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert ts[queued.number].state in FINISHED  # the interrupted parameters ran again
    after = finished_snapshot(url)
    assert {n: after[n] for n in before} == before


# `autoclf search`, held once its images are decoded into the cache's temporary file, until the
# test stops it: the signal lands where a large dataset spends its first minutes.
HELD_IN_DECODING = """
import pathlib, sys, time
import autoclf.data.cache as cache

decode = cache._decode_into

def held(tmp, *args):
    bad = decode(tmp, *args)
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(120)
    return bad

cache._decode_into = held
from autoclf.cli import main

sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_while_a_first_search_decodes_leaves_nothing_behind(tmp_path, signum):
    for c, name in enumerate(("a", "b")):
        for i in range(6):
            save_image(tmp_path / "data" / name / f"{i}.png", seed=10 * c + i)
    marker = tmp_path / "decoded"
    command = [sys.executable, "-c", HELD_IN_DECODING, str(marker)]
    search = subprocess.Popen(
        [*command, "search", "data", "--study", "s", "--space", "tiny", "--folds", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for("the images decoded", marker.exists, timeout=120)
    assert list((tmp_path / "studies" / "s" / "cache").glob(".images-*"))  # half-written
    children = descendants(search.pid)
    search.send_signal(signum)
    out, err = search.communicate(timeout=60)
    # Stopped as Ctrl-C stops it: every `finally` ran (it was killed outright before, with
    # the temporary cache file left behind; on a large dataset, gigabytes).
    assert search.returncode == 128 + signum, err + out
    assert f"interrupted ({signum.name})" in err
    assert not (tmp_path / "studies" / "s").exists()
    assert not [pid for pid in children if alive(pid)]
