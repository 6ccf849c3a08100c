"""Many workers on one study: four worker processes under one search while another process
polls the storage like the dashboard does (SQLite), and two searches, as two machines would
run them, sharing one study on a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
from subprocess import PIPE

import pytest
from optuna.trial import TrialState

from tests.reliability.helpers import FINISHED, STUDY, search_command, storage_url, trials

pytestmark = pytest.mark.slow  # starts autoclf processes; `-m "not slow"` skips it

POLLER = r"""
import pathlib, sys, time, optuna
optuna.logging.set_verbosity(optuna.logging.ERROR)
url, stop = sys.argv[1], pathlib.Path(sys.argv[2])
polls, errors = 0, []
while not stop.exists():
    try:
        for summary in optuna.get_all_study_summaries(url):
            optuna.load_study(study_name=summary.study_name, storage=url).get_trials()
            polls += 1
    except Exception as exc:
        errors.append(repr(exc))
    time.sleep(0.02)
print(polls)
print("\n".join(errors))
"""


def assert_exactly(url: str, n: int) -> list:
    ts = trials(url)
    assert [t.number for t in ts] == list(range(n))  # nothing run twice, no extra trial
    assert all(t.state in FINISHED for t in ts), [(t.number, t.state.name) for t in ts]
    return ts


def test_four_workers_finish_exactly_n_trials_while_the_storage_is_polled(tmp_path):
    url = storage_url(tmp_path)
    (tmp_path / "studies" / STUDY).mkdir(parents=True)
    stop = tmp_path / "stop-polling"
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, url, str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        search = subprocess.run(
            search_command(tmp_path, "--trials", "6", "--gpus", "cpu", "--workers", "4"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop.touch()
        polled = poller.communicate(timeout=60)[0].splitlines()
    assert search.returncode == 0, search.stderr + search.stdout
    ts = assert_exactly(url, 6)
    assert len({t.user_attrs["worker"] for t in ts}) >= 2  # trials really ran side by side
    assert int(polled[0]) > 20 and not any(polled[1:])  # the reader never saw an error
    logs = "".join(p.read_text() for p in (tmp_path / "studies" / STUDY / "logs").iterdir())
    assert "database is locked" not in logs + search.stderr


def test_two_machines_share_one_study_on_postgresql(tmp_path, postgres_url):
    """Two `autoclf search` commands, each with its own studies folder as on two machines,
    join one study in PostgreSQL and finish exactly --trials between them."""
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    runs = []
    for cwd in machines:
        cwd.mkdir()
        cmd = search_command(cwd, "--trials", "4", "--gpus", "cpu", "--storage", postgres_url)
        # One core each, as if on its own machine: two searches on two cores must not
        # oversubscribe them (torch threads spin).
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        runs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=PIPE, stderr=PIPE, text=True))
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err + out
    ts = assert_exactly(postgres_url, 4)
    # Both machines ran trials, each keeping its out-of-fold predictions in its own folder.
    assert len({t.user_attrs["worker"] for t in ts}) == 2
    kept = {
        p.parent.name for cwd in machines for p in cwd.glob(f"studies/{STUDY}/trials/*/oof.npy")
    }
    assert kept == {str(t.number) for t in ts if t.state == TrialState.COMPLETE}
    # The password never reaches the terminal or the logs.
    password = postgres_url.split(":")[2].split("@")[0]
    logs = "".join(p.read_text() for cwd in machines for p in cwd.glob("studies/*/logs/*"))
    assert password not in "".join(out + err for out, err in outputs) + logs
    assert "***" in outputs[0][0]  # the storage line is shown, masked
    # config.json keeps the URL for finalize, so it is readable by its owner alone.
    for cwd in machines:
        assert (cwd / "studies" / STUDY / "config.json").stat().st_mode & 0o077 == 0
