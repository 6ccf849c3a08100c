"""End to end through the installed ``autoclf`` command, as a user runs it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest

from autoclf.search.space import load_space
from tests.conftest import autoclf, save_image

pytestmark = pytest.mark.slow  # starts autoclf processes; `-m "not slow"` skips it

STUDY = "e2e"


def search_digits(
    cwd: Path, *, trials: int, folds: int, extra: tuple[str, ...] = (), env: dict | None = None
) -> subprocess.CompletedProcess:
    return autoclf(
        "search",
        "digits",
        "--study",
        STUDY,
        "--space",
        "tiny",
        "--trials",
        str(trials),
        "--folds",
        str(folds),
        *extra,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """``autoclf search digits --space tiny --trials 3 --folds 2``, run once for the module, its
    output redirected (not a terminal) as under nohup, with a progress line every epoch."""
    cwd = tmp_path_factory.mktemp("user")
    started = time.time()
    out = search_digits(cwd, trials=3, folds=2, env={"AUTOCLF_PROGRESS_EVERY": "0"})
    assert out.returncode == 0, out.stderr + out.stdout
    study_dir = cwd / "studies" / STUDY
    url = f"sqlite:///{study_dir / 'study.db'}"
    (cwd / "started").write_text(repr(started))
    return cwd, study_dir, url, out.stdout


def test_search_leaves_study_oof_and_attributes(searched):
    cwd, study_dir, url, stdout = searched
    assert f"optuna-dashboard {url}" in stdout
    study = optuna.load_study(study_name=STUDY, storage=url)
    ours = [t for t in study.trials if t.number < 3]  # other tests resume the study
    finished = [t for t in ours if t.state.is_finished() and t.state.name != "FAIL"]
    assert len(finished) == 3 and len(ours) == 3
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    assert complete, "at least the first trials cannot be pruned"
    folds = np.loadtxt(study_dir / "index.csv", delimiter=",", skiprows=1, usecols=3, dtype=int)
    assert set(folds.tolist()) == {0, 1}
    for t in complete:
        attrs = t.user_attrs
        assert len(attrs["fold_scores"]) == 2
        assert t.value == pytest.approx(np.mean(attrs["fold_scores"]))
        assert attrs["device"] == "cpu" and attrs["duration_s"] > 0 and attrs["epochs_run"] >= 2
        oof = np.load(study_dir / attrs["oof_path"])
        assert oof.shape == (len(folds), 10) and not np.isnan(oof).any()
        assert np.allclose(oof.sum(axis=1), 1.0, atol=1e-4)
        # The OOF rows really are each image's held-out prediction: they reproduce the score.
        labels = np.loadtxt(
            study_dir / "index.csv", delimiter=",", skiprows=1, usecols=1, dtype=int
        )
        per_fold = [np.mean(oof[folds == f].argmax(1) == labels[folds == f]) for f in (0, 1)]
        assert per_fold == pytest.approx(attrs["fold_scores"])
    assert study.user_attrs["metric"] == "accuracy" and study.user_attrs["space"] == "tiny"


def test_a_redirected_search_prints_progress_within_a_minute(searched):
    cwd, _, _, stdout = searched
    started = float((cwd / "started").read_text())
    progress = re.compile(
        r"^(\d\d):(\d\d):(\d\d) (\S+ +)?trial 0: fold 1/2  epoch 1/\d+  accuracy [\d.]+ .*"
        r"s/epoch  \d+ s into the trial$",
        re.MULTILINE,
    )
    first = progress.search(stdout)
    assert first, stdout
    h, m, sec = (int(first.group(i)) for i in (1, 2, 3))
    clock = time.localtime(started)
    after = h * 3600 + m * 60 + sec - (clock.tm_hour * 3600 + clock.tm_min * 60 + clock.tm_sec)
    assert after % 86400 < 60, f"the first progress line came {after % 86400} s after the start"
    # It came while the trial ran, before its result.
    assert stdout.index(first.group(0)) < stdout.index("#0 ")


def test_the_search_ends_with_the_next_commands_runnable_as_printed(searched):
    from autoclf.cli import build_parser

    cwd, _, url, stdout = searched
    steps = stdout[stdout.index("\nnext:\n") :].splitlines()[2:6]
    commands = [shlex.split(line.split("   # ")[0]) for line in steps]
    assert [c[1] for c in commands] == ["finalize", "report", url, "trials"]
    for command in commands:  # this venv's, whether or not it is on PATH
        assert shutil.which(command[0]), command
    finalize, report, dashboard, trials = commands
    assert finalize[2:] == ["--study", STUDY, "--test", "digits-test"]
    assert build_parser().parse_args(finalize[1:]).run.__name__ == "cmd_finalize"
    out = subprocess.run(report, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "report.html" in out.stdout, out.stderr
    out = subprocess.run(trials, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"number: {2}" in out.stdout
    # One attribute a line: no 1,600-character table rows from the attributes autoclf stores.
    assert max(len(line) for line in out.stdout.splitlines()) < 200


def test_optuna_cli_lists_the_same_trials(searched):
    cwd, _, url, _ = searched
    optuna_cli = shutil.which("optuna", path=str(Path(sys.executable).parent)) or "optuna"
    out = subprocess.run(
        [optuna_cli, "trials", "--study-name", STUDY, "--storage", url, "-f", "json"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    study = optuna.load_study(study_name=STUDY, storage=url)
    assert sorted(t["number"] for t in listed) == [t.number for t in study.trials]


def test_dashboard_serves_the_study(searched):
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if dashboard is None:
        pytest.fail("optuna-dashboard should be installed with autoclf")
    _, _, url, _ = searched
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [dashboard, url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == [STUDY]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_changed_folds_are_refused_on_resume(searched):
    cwd, _, _, _ = searched
    out = search_digits(cwd, trials=4, folds=3)
    assert out.returncode == 2
    assert "folds: 2 → 3" in out.stderr


def test_resume_counts_finished_trials_and_keeps_folds(searched):
    cwd, study_dir, url, _ = searched
    index_before = (study_dir / "index.csv").read_bytes()
    before = {t.number: t.value for t in optuna.load_study(study_name=STUDY, storage=url).trials}
    n = len(before)  # 3, or more where another test resumed the study first
    out = search_digits(cwd, trials=n + 1, folds=2, extra=("--verbose",))
    assert out.returncode == 0, out.stderr
    assert f"resumed with {n} finished trial(s)" in out.stdout
    assert "2-fold stratified CV" in out.stdout
    # --verbose: every epoch of the new trial stays on the screen (the tiny space's pruner
    # checks nothing before a trial's n_warmup_steps-th epoch).
    tiny = load_space("tiny")
    epochs, warmup = tiny.max_epochs, tiny.pruner["n_warmup_steps"]
    assert warmup >= 2 and out.stdout.count(f"trial {n}: fold ") >= warmup
    assert f"trial {n}: fold 1/2  epoch 1/{epochs}" in out.stdout
    # Each epoch's line shows the training and the validation loss side by side, on one line.
    line = out.stdout[out.stdout.index(f"trial {n}: fold 1/2  epoch 1/") :].splitlines()[0]
    losses = re.search(r"loss\s+train\s+(\d+\.\d+)\s+val\s+(\d+\.\d+)", line)
    assert losses, line
    train_loss, val_loss = losses.groups()
    assert 0 < float(train_loss) < 10 and 0 < float(val_loss) < 10
    study = optuna.load_study(study_name=STUDY, storage=url)
    assert len(study.trials) == n + 1
    assert {t.number: t.value for t in study.trials if t.number in before} == before
    assert (study_dir / "index.csv").read_bytes() == index_before
    again = search_digits(cwd, trials=n + 1, folds=2)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    quiet = search_digits(cwd, trials=n + 1, folds=2, extra=("--quiet",))
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert len(optuna.load_study(study_name=STUDY, storage=url).trials) == n + 1


def test_epoch_budget_runs_what_fits_through_the_workers_then_nothing(searched):
    cwd, _, url, _ = searched
    before = optuna.load_study(study_name=STUDY, storage=url).trials
    spent = sum(t.user_attrs["epochs_run"] for t in before)
    whole_trial = 2 * load_space("tiny").max_epochs  # 2 folds
    budget = spent + whole_trial  # room for one more trial; after it, none
    out = search_digits(cwd, trials=100, folds=2, extra=("--epoch-budget", str(budget)))
    assert out.returncode == 0, out.stderr + out.stdout
    after = optuna.load_study(study_name=STUDY, storage=url).trials
    assert len(after) == len(before) + 1
    now = sum(t.user_attrs["epochs_run"] for t in after)
    assert spent < now <= budget
    assert f"{now} of --epoch-budget {budget} epochs trained" in out.stdout
    again = search_digits(cwd, trials=100, folds=2, extra=("--epoch-budget", str(budget)))
    assert again.returncode == 0 and "nothing to run" in again.stdout
    status = autoclf("status", "--study", STUDY, cwd=cwd)
    assert status.returncode == 0, status.stderr
    assert f"epochs trained: {now} of --epoch-budget {budget}" in status.stdout
    assert "time left: none (no trial running and none left to start)" in status.stdout
    assert len(optuna.load_study(study_name=STUDY, storage=url).trials) == len(after)


def test_a_first_run_stopped_by_a_bad_image_leaves_no_study_behind(tmp_path):
    _classes(tmp_path / "data", {"a": 5, "b": 5})
    (tmp_path / "data" / "a" / "broken.png").write_bytes(b"not an image")
    out = autoclf("search", "data", "--study", "typo", "--space", "tiny", cwd=tmp_path)
    assert out.returncode == 2
    assert "broken.png" in out.stderr and "--skip-bad-images" in out.stderr
    # The worker's (empty) log and the empty cache folder went with it: no half-made study.
    assert not (tmp_path / "studies" / "typo").exists()


_FIRST = ("search", "data", "--study", "first", "--space", "tiny")


def _classes(root: Path, counts: dict[str, int]) -> Path:
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            save_image(root / name / f"{i}.png", seed=100 * c + i)
    return root


@pytest.mark.parametrize(
    ("counts", "says"),
    [
        ({"ants": 8}, ["one class", "'ants', 8 images", "at least two"]),
        ({"ants": 6, "bees": 3}, ["'bees' has 3 images", "folds=5", "lower --folds"]),
    ],
    ids=["one-class", "too-few-images"],
)
def test_data_that_cannot_be_split_is_refused_before_anything_is_made(tmp_path, counts, says):
    _classes(tmp_path / "data", counts)
    started = time.perf_counter()
    out = autoclf(*_FIRST, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    for words in says:
        assert words in out.stderr
    assert "Traceback" not in out.stderr
    # Refused before a worker started (no log) or the study's folder was made.
    assert not (tmp_path / "studies").exists()
    assert time.perf_counter() - started < 30  # no worker was waited for


def test_a_class_emptied_by_skipped_images_leaves_no_cache_behind(tmp_path):
    """Only decoding finds this one: the cache was written, and goes with the refused run."""
    data = _classes(tmp_path / "data", {"a": 5, "b": 5})
    (data / "b" / "0.png").write_bytes(b"not an image")
    out = autoclf(*_FIRST, "--skip-bad-images", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "'b' has 4 images" in out.stderr
    assert not (tmp_path / "studies" / "first").exists()
    # Fixed, the same command makes the study from scratch: nothing of the refused run is in
    # the way ("the data changed since study … was created").
    save_image(data / "b" / "0.png", seed=7)
    again = autoclf(*_FIRST, "--trials", "1", "--folds", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "studies" / "first" / "index.csv").is_file()
