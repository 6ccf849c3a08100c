"""`autoclf status` behind the table: a study's counts, leaderboard, running trials and ETA,
read from a real study folder and a real SQLite storage, trials written the way Optuna does."""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autoclf.config import SearchConfig
from autoclf.search import storage
from autoclf.search.runner import prepare
from autoclf.status import study_status
from autoclf.study import load_study, open_study_dir
from tests.conftest import save_image

# epochs is sampled, so the step stride (the space's largest epochs) is 4 and a 2-epoch
# trial reports fold 2 at steps 5..6.
SPACE = """
params:
  backbone: test_efficientnet
  epochs: {type: categorical, choices: [2, 4]}
  batch_size: 8
  image_size: 16
"""
EPOCHS = CategoricalDistribution([2, 4])


def make_study(tmp_path, name: str, **options):
    """A real study folder (index, folds, config.json, space.yaml) and its storage, as
    `autoclf search` leaves them before its first trial; read back as `autoclf status` does."""
    data = tmp_path / "data"
    for c, label in enumerate(("a", "b")):
        for i in range(4):
            save_image(data / label / f"{i}.png", seed=10 * c + i)
    (tmp_path / "space.yaml").write_text(SPACE)
    config = SearchConfig(
        data=str(data),
        study=name,
        space=str(tmp_path / "space.yaml"),
        folds=2,
        device="cpu",
        gpus="cpu",
        studies_dir=str(tmp_path / "studies"),
        **options,
    )
    prepare(config)
    files = open_study_dir(tmp_path / "studies", name)
    # The trials are written through a plain Optuna handle (no heartbeat: nothing here runs
    # Study.optimize) and read through the one `autoclf status` opens.
    writer = optuna.load_study(study_name=name, storage=files.storage_url())
    return files, writer, load_study(files)


def add_finished(study, state, *, start, seconds, value=None, **attrs):
    trial = optuna.trial.create_trial(
        state=state,
        value=value,
        params={"epochs": 4},
        distributions={"epochs": EPOCHS},
        user_attrs=attrs,
    )
    trial.datetime_start = start
    trial.datetime_complete = start + timedelta(seconds=seconds)
    study.add_trial(trial)


def start_running(study, *, epochs, steps, folds_done=0, worker=None):
    """A RUNNING trial as a worker leaves it mid-way: config and worker set at its start,
    one report per epoch at step fold * 4 + epoch, fold_scores growing as folds end."""
    study.enqueue_trial({"epochs": epochs})
    trial = study.ask()
    assert trial.suggest_categorical("epochs", [2, 4]) == epochs
    trial.set_user_attr("config", {"backbone": "test_efficientnet", "epochs": epochs})
    if worker:
        trial.set_user_attr("worker", worker)
    for step, value in steps.items():
        trial.report(value, step)
    if folds_done:
        trial.set_user_attr("fold_scores", [0.5] * folds_done)
    return trial.number


def started_at(study, number: int) -> datetime:
    return study.trials[number].datetime_start


@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_counts_leaderboard_running_trials_and_eta(tmp_path, metric):
    files, writer, reader = make_study(tmp_path, "s", metric=metric, trials=9, workers=4,
                                       timeout=3600)  # fmt: skip
    t0 = datetime.now() - timedelta(hours=1)
    add_finished(writer, TrialState.COMPLETE, start=t0, seconds=90, value=0.7)  # 0
    add_finished(writer, TrialState.COMPLETE, start=t0, seconds=60, value=0.9)  # 1
    add_finished(writer, TrialState.COMPLETE, start=t0, seconds=70, value=0.8)  # 2
    add_finished(writer, TrialState.PRUNED, start=t0, seconds=20)  # 3
    add_finished(writer, TrialState.FAIL, start=t0, seconds=5, fail_reason="RuntimeError: boom")
    add_finished(writer, TrialState.FAIL, start=t0, seconds=5)  # 5: no reason recorded
    # 6: a 4-epoch trial through fold 1 and 2 epochs into fold 2: 6 of 8 epochs.
    a = start_running(writer, epochs=4, folds_done=1, worker="cpu0 (pid 11)",
                      steps={1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8, 5: 0.55, 6: 0.65})  # fmt: skip
    # 7: a 2-epoch trial, 1 epoch into fold 2 (step 5, after the stride's gap): 3 of 4.
    b = start_running(writer, epochs=2, folds_done=1, worker="cpu1 (pid 12)",
                      steps={1: 0.4, 2: 0.45, 5: 0.3})  # fmt: skip
    # 8: fold 1 stopped early (patience) after 2 of 4 epochs and fold 2 has not reported yet:
    # by position that is half the trial, though only 2 of 8 epochs were reported.
    c = start_running(writer, epochs=4, folds_done=1, worker="cpu2 (pid 13)",
                      steps={1: 0.2, 2: 0.3})  # fmt: skip
    writer.enqueue_trial({"epochs": 2})  # 9: WAITING (a retry queued)
    now = started_at(reader, c) + timedelta(seconds=60)

    status = study_status(files, reader, now=now, top=10)

    maximize = metric == "accuracy"
    assert (status.study, status.metric) == ("s", metric)
    assert status.direction == ("maximize" if maximize else "minimize")
    assert status.counts == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 1}
    assert (status.target, status.finished) == (9, 4)
    assert [t.number for t in status.leaderboard] == ([1, 2, 0] if maximize else [0, 2, 1])
    assert [t.number for t in study_status(files, reader, now=now, top=1).leaderboard] == (
        [1] if maximize else [0]
    )
    assert status.failures == [(5, "unknown (no reason recorded)"), (4, "RuntimeError: boom")]
    assert status.mean_trial_s == pytest.approx(60)  # (90 + 60 + 70 + 20) / 4; FAILs left out
    assert (status.epochs_trained, status.epoch_budget) == (0, None)  # none recorded any

    ra, rb, rc = status.running
    assert [r.number for r in status.running] == [a, b, c]
    assert (ra.worker, rb.worker, rc.worker) == ("cpu0 (pid 11)", "cpu1 (pid 12)", "cpu2 (pid 13)")
    assert (ra.fold, ra.folds, ra.epoch, ra.epochs, ra.progress) == (2, 2, 2, 4, 0.75)
    assert (rb.fold, rb.folds, rb.epoch, rb.epochs, rb.progress) == (2, 2, 1, 2, 0.75)
    assert (rc.fold, rc.folds, rc.epoch, rc.epochs, rc.progress) == (1, 2, 2, 4, 0.5)
    assert ra.best_so_far == (0.8 if maximize else 0.5)
    assert ra.params == {"epochs": 4} and rb.params == {"epochs": 2}
    assert ra.started == started_at(reader, a)
    for r in status.running:
        assert r.elapsed_s == pytest.approx(60, abs=1)  # the three started within a second

    # Running trials need elapsed × (1 − p) / p more: 20 s, 20 s and 60 s. Two trials are
    # left to start (9 − 4 finished − 3 running), 60 s each, on 4 workers: one starts on the
    # idle worker now (ends at 60 s), the other when trial 6 or 7 ends (20 s → 80 s).
    assert status.eta_s == pytest.approx(80, abs=1)
    assert status.eta_basis == "3 running + 2 trials left × 60 s / 4 workers"

    # --timeout: no trial starts at or after the deadline; those running finish.
    config_json = files.dir / "config.json"

    def deadline_in(seconds: float) -> None:
        run_start = now - timedelta(seconds=3600) + timedelta(seconds=seconds)
        os.utime(config_json, (run_start.timestamp(), run_start.timestamp()))

    deadline_in(10)  # the idle worker starts one now; at 20 s it is too late for the other
    status = study_status(files, reader, now=now)
    assert status.eta_s == pytest.approx(60, abs=1)
    assert status.eta_basis.endswith("; timeout in 10 s: only 1 of them start")
    deadline_in(-30)  # passed: only the running trials are left, trial 8 the longest
    status = study_status(files, reader, now=now)
    assert status.eta_s == pytest.approx(60, abs=1)
    assert status.eta_basis.endswith("; timeout passed 30 s ago: none of them start")
    deadline_in(1000)  # far enough not to matter
    assert study_status(files, reader, now=now).eta_s == pytest.approx(80, abs=1)

    # Without --timeout the same; and a target already covered by the running trials leaves
    # only them to wait for.
    no_timeout = dataclasses.replace(files, config=dataclasses.replace(files.config, timeout=None))
    assert study_status(files, reader, now=now).eta_s == pytest.approx(80, abs=1)
    assert study_status(no_timeout, reader, now=now).eta_s == pytest.approx(80, abs=1)
    covered = dataclasses.replace(files, config=dataclasses.replace(files.config, trials=6))
    status = study_status(covered, reader, now=now)
    assert status.eta_s == pytest.approx(60, abs=1)
    assert status.eta_basis == "3 running"

    # --epoch-budget: only whole trials that still fit start. The three running trials hold
    # 2 folds × 4 epochs = 8 each and the finished ones recorded no epochs: 24 + 8 leaves room
    # for one trial (it ends at 60 s on the idle worker), 31 for none.

    def budget(epochs: int):
        return dataclasses.replace(
            no_timeout, config=dataclasses.replace(no_timeout.config, epoch_budget=epochs)
        )

    assert study_status(budget(32), reader, now=now).eta_basis == (
        "3 running + 1 trial left × 60 s / 4 workers"
    )
    assert study_status(budget(31), reader, now=now).eta_basis == "3 running"
    assert study_status(budget(1000), reader, now=now).eta_s == pytest.approx(80, abs=1)


def test_epochs_trained_count_every_trial_against_the_budget(tmp_path):
    files, writer, reader = make_study(tmp_path, "s", trials=9, epoch_budget=40)
    t0 = datetime.now() - timedelta(hours=1)
    add_finished(writer, TrialState.COMPLETE, start=t0, seconds=9, value=0.7, epochs_run=8)
    add_finished(writer, TrialState.PRUNED, start=t0, seconds=3, epochs_run=3)
    add_finished(writer, TrialState.FAIL, start=t0, seconds=1, epochs_run=1)
    number = start_running(writer, epochs=4, steps={1: 0.5, 2: 0.6})
    storage.set_trial_user_attr(writer, storage.trial_id(writer.trials[number]), "epochs_run", 2)
    status = study_status(files, reader)
    assert (status.epochs_trained, status.epoch_budget) == (8 + 3 + 1 + 2, 40)


def test_before_any_trial_finished_the_eta_comes_from_progress_or_is_none(tmp_path):
    files, writer, reader = make_study(tmp_path, "fresh", metric="accuracy", trials=3)
    status = study_status(files, reader)
    assert status.counts == dict.fromkeys(["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"], 0)
    assert (status.running, status.leaderboard, status.failures) == ([], [], [])
    assert status.mean_trial_s is None
    assert (
        status.eta_s is None
        and status.eta_basis == "no trial has finished or reported an epoch yet"
    )

    # Just started: no worker written yet, no epoch reported.
    first = start_running(writer, epochs=4, steps={})
    now = started_at(reader, first) + timedelta(seconds=10)
    status = study_status(files, reader, now=now)
    (r,) = status.running
    assert (r.worker, r.fold, r.epoch, r.progress, r.best_so_far) == (None, 1, 0, 0.0, None)
    assert status.eta_s is None and "no trial has finished" in status.eta_basis

    # One epoch of 8 in 10 s: the trial is projected at 80 s, so it needs 70 s more; the two
    # trials left (3 − 0 − 1) run one after the other on the single worker: 70 + 80 + 80.
    writer.tell(first, state=TrialState.FAIL)
    second = start_running(writer, epochs=4, steps={1: 0.5}, worker="cpu0 (pid 7)")
    now = started_at(reader, second) + timedelta(seconds=10)
    status = study_status(files, reader, now=now)
    assert [r.number for r in status.running] == [second]
    assert status.running[0].progress == 1 / 8
    assert status.failures == [(first, "unknown (no reason recorded)")]
    assert status.eta_s == pytest.approx(230, abs=1)
    assert "2 trials left × 80 s (projected from the running trials) / 1 worker" in (
        status.eta_basis
    )

    # An aware `now` means the same moment as the naive local time Optuna stores.
    aware = study_status(files, reader, now=now.astimezone())
    assert aware.eta_s == pytest.approx(status.eta_s, abs=1e-6)


@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_status_leaderboard_report_and_finalize_rank_the_trials_alike(tmp_path, metric):
    """Tied values rank by trial number everywhere, so the trials `autoclf status` and the
    report show first are the ones finalize's --top-k retrains."""
    from rich.console import Console

    from autoclf.cli import leaderboard
    from autoclf.finalize import _complete_trials
    from autoclf.reports.study import _leaderboard

    files, writer, reader = make_study(tmp_path, "ties", metric=metric)
    t0 = datetime.now() - timedelta(hours=1)
    for number, value in enumerate([0.8, 0.9, 0.8, 0.9, 0.7]):
        oof = f"trials/{number}/oof.npz"
        (files.dir / oof).parent.mkdir(parents=True, exist_ok=True)
        (files.dir / oof).write_bytes(b"")  # finalize ranks the trials whose OOF file exists
        add_finished(writer, TrialState.COMPLETE, start=t0, seconds=9, value=value, oof_path=oof)
    add_finished(writer, TrialState.PRUNED, start=t0, seconds=3, value=None)
    expected = [1, 3, 0, 2, 4] if metric == "accuracy" else [4, 0, 2, 1, 3]

    assert [t.number for t in study_status(files, reader, top=10).leaderboard] == expected
    assert [t.number for t in _complete_trials(reader, files)] == expected
    html = _leaderboard(files, reader.get_trials())
    assert sorted(expected, key=lambda n: html.index(f"#{n}<")) == expected
    console = Console(width=200, record=True)
    console.print(leaderboard(reader, metric))
    rows = [line.split()[0] for line in console.export_text().splitlines() if "±0." in line]
    assert [int(r) for r in rows] == expected


def test_a_huge_timeout_is_a_deadline_far_away_not_a_crash(tmp_path):
    """--timeout 1e12 is past the year 9999, where a datetime overflowed."""
    from datetime import datetime
    from types import SimpleNamespace

    from autoclf.status import _deadline_in

    (tmp_path / "config.json").write_text("{}")
    files = SimpleNamespace(config=SimpleNamespace(timeout=1e12), dir=tmp_path)
    assert _deadline_in(files, datetime.now()) == pytest.approx(1e12, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["status", "report"])
def test_a_storage_that_cannot_be_opened_is_a_clear_error_with_the_password_masked(
    finalized_digits, tmp_path, command
):
    """As search says it: exit 2 and the URL masked, not a SQLAlchemy traceback."""
    from tests.conftest import autoclf

    url = "postgresql://u:s3cret@127.0.0.1:1/db"  # nothing listens on port 1
    done = autoclf(
        command, "--study", "s", "--studies-dir", str(finalized_digits), "--storage", url,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "cannot open storage postgresql://u:***@127.0.0.1:1/db" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr and "Traceback" not in done.stderr
