"""The search loop through the Python API: pruning, step layout, failures, resume checks."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal

import numpy as np
import optuna
import pytest
import sqlalchemy
from sklearn.metrics import log_loss

from autoclf.config import SearchConfig
from autoclf.errors import AutoclfError, DataError, StudyMismatchError
from autoclf.search.budget import EpochBudget
from autoclf.search.runner import SearchFailedError, prepare, run
from autoclf.study import open_study_dir
from tests.conftest import save_image

EPOCHS = 3
SPACE = f"""
params:
  backbone: test_efficientnet
  lr: {{type: categorical, choices: [0.005, 1.0e-9]}}
  batch_size: 64
  epochs: {EPOCHS}
  image_size: 16
  scheduler: constant
pruner: {{name: median, n_startup_trials: 1, n_warmup_steps: 1}}
"""


def folder_config(tmp_path, *, per_class: int, folds: int) -> SearchConfig:
    """Two classes of distinct random images under tmp_path/data, and a config to search them."""
    for c, name in enumerate(("a", "b")):
        for i in range(per_class):
            save_image(tmp_path / "data" / name / f"{i}.png", seed=10 * c + i)
    (tmp_path / "space.yaml").write_text(SPACE)
    return SearchConfig(
        data=str(tmp_path / "data"),
        study="s",
        space=str(tmp_path / "space.yaml"),
        folds=folds,
        studies_dir=str(tmp_path / "studies"),
    )


@pytest.fixture
def config(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    return SearchConfig(
        data="digits",
        study="s",
        space=str(tmp_path / "space.yaml"),
        folds=2,
        trials=2,
        studies_dir=str(tmp_path / "studies"),
    )


def test_bad_trial_is_pruned_in_first_fold_and_steps_never_collide(config):
    prepared = prepare(config)
    prepared.study.enqueue_trial({"lr": 0.005})
    prepared.study.enqueue_trial({"lr": 1e-9})  # learns nothing: chance accuracy
    study = run(prepared)
    good, bad = study.trials
    assert good.state.name == "COMPLETE"
    # One report per epoch per fold, at fold * epochs + epoch: 1..3 for fold 1, 4..6 for fold 2.
    assert sorted(good.intermediate_values) == list(range(1, 2 * EPOCHS + 1))
    assert bad.state.name == "PRUNED"
    assert max(bad.intermediate_values) <= EPOCHS  # stopped inside the first fold
    assert "fold 1" in bad.user_attrs["pruned_reason"]
    assert "oof_path" not in bad.user_attrs and "oof_path" in good.user_attrs
    assert bad.user_attrs["epochs_run"] == len(bad.intermediate_values)
    # The validation loss of every reported step, beside the score: lower for the trial that
    # learns, and about log(10) for the one at chance.
    for t in (good, bad):
        assert sorted(map(int, t.user_attrs["val_losses"])) == sorted(t.intermediate_values)
    assert max(good.user_attrs["val_losses"].values()) < min(bad.user_attrs["val_losses"].values())
    assert bad.user_attrs["val_losses"]["1"] == pytest.approx(np.log(10), rel=0.1)
    # Each trial's own log, where its log_path attribute (shown by the dashboard) says.
    good_log = (prepared.study_dir / good.user_attrs["log_path"]).read_text()
    assert good.user_attrs["log_path"] == "trials/0/log.txt"
    assert len(re.findall(r"fold [12]/2 epoch \d/3: accuracy .* val loss", good_log)) == 2 * EPOCHS
    assert "fold 2/2: accuracy" in good_log
    assert good_log.rstrip().endswith(
        f"complete: accuracy {good.value:.4f} ± {good.user_attrs['cv_std']:.4f}"
    )
    bad_log = (prepared.study_dir / bad.user_attrs["log_path"]).read_text()
    assert "'lr': 1e-09" in bad_log and f"pruned: {bad.user_attrs['pruned_reason']}" in bad_log


def test_failing_trials_record_reason_and_stop_the_search(config, monkeypatch):
    def broken_fit(*args, **kwargs):
        raise RuntimeError("boom in the trainer")

    monkeypatch.setattr("autoclf.search.objective.fit", broken_fit)
    prepared = prepare(config)
    with pytest.raises(SearchFailedError, match="3 trials in a row failed.*RuntimeError: boom"):
        run(prepared)
    trials = prepared.study.trials
    assert [t.state.name for t in trials] == ["FAIL"] * 3
    assert all(t.user_attrs["fail_reason"] == "RuntimeError: boom in the trainer" for t in trials)
    log = (prepared.study_dir / trials[0].user_attrs["log_path"]).read_text()
    assert "failed: RuntimeError: boom in the trainer" in log
    assert "Traceback (most recent call last)" in log and "in broken_fit" in log


def test_ctrl_c_in_the_storages_code_waits_for_the_write_then_fails_and_requeues(config):
    # In the caller's process (a notebook, say), Python's own handler raised inside
    # SQLAlchemy's write: the attribute being written was lost, and an SQLite transaction could
    # be left open. run() takes Ctrl-C as a worker does, then gives Python's handler back. The
    # signal comes in the write of the first fold's score, so training is where it then lands.
    prepared = prepare(config)
    sent = []

    def ctrl_c_in_the_write(conn, cursor, statement, parameters, *args):
        if not sent and "fold_scores" in parameters:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs inside SQLAlchemy

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", ctrl_c_in_the_write)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(prepared)
    finally:
        sqlalchemy.event.remove(
            sqlalchemy.engine.Engine, "before_cursor_execute", ctrl_c_in_the_write
        )
    assert sent and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    failed, queued = prepared.study.trials
    assert failed.state.name == "FAIL" and queued.state.name == "WAITING"
    assert failed.user_attrs["fail_reason"] == "interrupted (SIGINT)"
    assert queued.params == failed.params
    assert len(failed.user_attrs["fold_scores"]) == 1  # the write the Ctrl-C came in was finished


def test_only_the_best_complete_trials_keep_their_fold_weights(config, tmp_path):
    no_pruner = re.sub(r"pruner: .*", "pruner: {name: none}", SPACE)
    (tmp_path / "space.yaml").write_text(no_pruner)
    prepared = prepare(dataclasses.replace(config, trials=4, keep_weights=2))
    for lr in (0.005, 1e-9, 0.005, 0.005):  # the second learns nothing
        prepared.study.enqueue_trial({"lr": lr})
    study = run(prepared)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    labels = open_study_dir(config.studies_dir, "s").index.label_array
    for trial in study.trials:  # the tie-breaker of equal CV scores, from the trial's own OOF
        oof = np.load(prepared.study_dir / trial.user_attrs["oof_path"])
        assert trial.user_attrs["oof_log_loss"] == pytest.approx(log_loss(labels, oof))
    best = sorted(study.trials, key=lambda t: (-t.value, t.user_attrs["oof_log_loss"]))[:2]
    trials_dir = prepared.study_dir / "trials"
    kept = sorted(int(p.parent.name) for p in trials_dir.glob("*/fold0.pt"))
    assert kept == sorted(t.number for t in best)
    for trial in best:  # every fold, each with the epoch it kept
        for fold in (0, 1):
            assert (trials_dir / str(trial.number) / f"fold{fold}.pt").is_file()
            record = json.loads((trials_dir / str(trial.number) / f"fold{fold}.json").read_text())
            assert record == {"kept_epoch": trial.user_attrs["fold_kept_epochs"][fold]}
    assert 1 not in kept  # at chance
    # Resumed with --keep-weights 0: the next trial to complete drops every kept fold.
    run(prepare(dataclasses.replace(config, trials=5, keep_weights=0)))
    assert not list(trials_dir.glob("*/fold*"))


def test_a_trial_whose_probabilities_are_nan_completes_without_a_log_loss(config, monkeypatch):
    from autoclf import trainer

    def nan_views(model, images, *, indices, **kwargs):  # a model that predicts NaN
        return [np.full((len(indices), 10), np.nan, dtype=np.float32)]

    monkeypatch.setattr(trainer, "predict_views", nan_views)
    study = run(prepare(dataclasses.replace(config, trials=1)))
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE" and "oof_log_loss" not in trial.user_attrs


def test_a_trial_that_fails_after_a_fold_leaves_no_weights(config, monkeypatch):
    from autoclf.search import objective

    real_fit, calls = objective.fit, []

    def fit_then_fail(*args, **kwargs):  # every trial's first fold trains, its second fails
        calls.append(1)
        if len(calls) % 2 == 0:
            raise RuntimeError("boom in fold 2")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(objective, "fit", fit_then_fail)
    prepared = prepare(config)
    with pytest.raises(SearchFailedError, match="3 trials in a row failed"):
        run(prepared)
    assert len(calls) == 6
    for number in (0, 1, 2):
        trial_dir = prepared.study_dir / "trials" / str(number)
        assert (trial_dir / "log.txt").is_file() and not list(trial_dir.glob("fold*"))


def test_changed_space_is_refused_with_a_diff_unless_allowed(config, tmp_path):
    prepare(config)
    (tmp_path / "space.yaml").write_text(SPACE.replace("batch_size: 64", "batch_size: 32"))
    with pytest.raises(StudyMismatchError, match=r"(?s)-  batch_size: 64.*\+  batch_size: 32"):
        prepare(config)
    assert prepare(config, allow_space_change=True).resumed


def test_a_reworded_space_resumes_without_the_flag(config, tmp_path):
    """Comments, layout and the description do not change what a trial samples."""
    prepare(config)
    reworded = "description: the same search, explained\n" + SPACE.replace(
        "  batch_size: 64", "  # the largest that fits\n  batch_size:   64"
    )
    (tmp_path / "space.yaml").write_text(reworded)
    prepared = prepare(config)
    assert prepared.resumed
    assert (prepared.study_dir / "space.yaml").read_text() == reworded


def test_a_resume_keeps_the_class_order_the_study_was_made_with(config):
    # As if an older version (or, before cc3ccf9, another process) had ordered the classes
    # otherwise: the saved order names the models' outputs, so a resume keeps it.
    study_dir = prepare(config).study_dir
    saved = study_dir / "index.csv"
    lines = saved.read_text().splitlines()
    swapped = [lines[0]] + [
        line.rsplit(",", 1)[0] + "," + str(9 - int(line.rsplit(",", 1)[1])) for line in lines[1:]
    ]
    saved.write_text("\n".join(swapped) + "\n")
    resumed = prepare(config)
    assert resumed.resumed
    assert resumed.index.classes == tuple("9876543210")
    assert resumed.study.user_attrs["classes"] == list("9876543210")
    assert saved.read_text() == "\n".join(swapped) + "\n"


def test_a_study_saved_with_a_key_given_twice_opens_as_it_was_searched(config, tmp_path):
    # Before 3f08b38 a key given twice was not refused: PyYAML kept the last one, and the
    # study's trials were sampled from that. Its saved copy must still open.
    saved = prepare(config).study_dir / "space.yaml"
    saved.write_text(saved.read_text().replace("  epochs: 3\n", "  epochs: 5\n  epochs: 3\n"))
    with pytest.raises(AutoclfError, match="'epochs' is given twice"):
        prepare(dataclasses.replace(config, space=str(saved)))  # a space file: refused
    assert open_study_dir(tmp_path / "studies", "s").space.max_epochs == 3


def test_a_resumed_run_draws_new_random_parameters(config, tmp_path):
    """The sampler is seeded by --seed; a resumed run must not start the sequence over and
    train the first trials' parameters again."""
    (tmp_path / "space.yaml").write_text(
        SPACE.replace("params:", "sampler: {name: random}\nparams:").replace(
            "batch_size: 64", "batch_size: {type: int, low: 8, high: 4096}"
        )
    )

    def draw(prepared) -> int:  # sample one trial's parameters and leave it finished
        trial = prepared.study.ask()
        prepared.space.suggest(trial)
        prepared.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return trial.params["batch_size"]

    first = prepare(config)
    drawn = [draw(first), draw(first)]
    again = prepare(config)
    assert again.resumed
    assert draw(again) not in drawn
    # A new study with the same seed still draws the same sequence: runs stay reproducible.
    fresh = prepare(dataclasses.replace(config, study="t"))
    assert [draw(fresh), draw(fresh)] == drawn


def test_changed_data_is_refused(tmp_path):
    config = folder_config(tmp_path, per_class=4, folds=2)
    prepare(config)
    save_image(tmp_path / "data" / "a" / "new.png", seed=99)
    with pytest.raises(StudyMismatchError, match="1 image\\(s\\) added"):
        prepare(config)


def test_bad_images_stop_before_any_trial(tmp_path):
    config = folder_config(tmp_path, per_class=3, folds=2)
    (tmp_path / "data" / "b" / "broken.jpg").write_text("not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        prepare(config)
    assert not (
        tmp_path / "studies" / "s" / "study.db"
    ).exists() or not optuna.get_all_study_summaries(
        f"sqlite:///{tmp_path / 'studies' / 's' / 'study.db'}"
    )


def test_a_first_run_stopped_by_bad_input_binds_nothing(tmp_path):
    config = folder_config(tmp_path, per_class=3, folds=3)
    bad = tmp_path / "data" / "b" / "broken.png"
    bad.write_text("not a png")
    with pytest.raises(DataError):
        prepare(config)
    bad.unlink()
    # Fixed data, other folds: a fresh start, not a "changed settings" refusal.
    fixed = SearchConfig(**{**config.to_dict(), "folds": 2})
    prepared = prepare(fixed)
    assert not prepared.resumed and int(prepared.folds.max()) + 1 == 2


def test_timeout_stops_starting_trials(config):
    timed = SearchConfig(**{**config.to_dict(), "trials": 50, "timeout": 0.1})
    study = run(prepare(timed))
    assert len(study.trials) == 1  # the first trial finishes; no second one starts


def test_epoch_budget_is_never_exceeded_and_ends_the_search(config):
    budgeted = SearchConfig(**{**config.to_dict(), "trials": 50, "epoch_budget": 15})
    prepared = prepare(budgeted)
    study = run(prepared)
    spent = sum(t.user_attrs["epochs_run"] for t in study.trials)
    whole_trial = 2 * EPOCHS  # 2 folds
    # It stopped because no whole trial fitted any more, not before, and never went over.
    assert spent <= 15 < spent + whole_trial
    assert len(study.trials) >= 2 and prepared.done()
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)


def test_epoch_budget_below_one_trial_is_refused_before_anything(config, tmp_path):
    small = SearchConfig(**{**config.to_dict(), "epoch_budget": 5})
    with pytest.raises(AutoclfError, match=r"--epoch-budget 5 .* 2 folds × 3 epochs = 6"):
        prepare(small)
    assert not (tmp_path / "studies" / "s").exists()


def test_epoch_budget_counts_every_trial_and_holds_a_whole_trial_per_running_one():
    study = optuna.create_study()
    for state, epochs in (("COMPLETE", 6), ("PRUNED", 2), ("FAIL", 1)):
        trial = study.ask()
        trial.set_user_attr("epochs_run", epochs)
        state = optuna.trial.TrialState[state]
        study.tell(trial, 0.5 if state.name == "COMPLETE" else None, state=state)
    study.ask().set_user_attr("epochs_run", 1)  # running, one epoch in
    trials = study.get_trials(deepcopy=False)
    assert EpochBudget(total=21, per_trial=6).committed(trials) == 6 + 2 + 1 + 6
    assert EpochBudget(total=21, per_trial=6).room(trials)  # 15 + 6 fits exactly
    assert not EpochBudget(total=20, per_trial=6).room(trials)
    assert EpochBudget(total=32, per_trial=6).trials_left(trials) == 2  # 17 left: two whole
    assert EpochBudget(total=20, per_trial=6).trials_left(trials) == 0
    assert EpochBudget(total=10, per_trial=6).trials_left(trials) == 0  # overspent: none, not -1


@pytest.mark.parametrize("name", ["../outside", "a/b", ".hidden", "", "with space"])
def test_a_study_name_that_is_not_one_folder_name_is_refused(config, tmp_path, name):
    from autoclf.study import open_study_dir

    with pytest.raises(AutoclfError, match="study name"):
        prepare(dataclasses.replace(config, study=name, studies_dir=str(tmp_path / "studies")))
    with pytest.raises(AutoclfError, match="study name"):
        open_study_dir(tmp_path / "studies", name)
    assert not (tmp_path / "outside").exists() and not (tmp_path / "studies").exists()


def test_log_loss_study_minimises(config):
    prepared = prepare(SearchConfig(**{**config.to_dict(), "metric": "log_loss", "trials": 1}))
    study = run(prepared)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert 0 < study.trials[0].value < 3  # a log loss, not an accuracy


def test_unavailable_device_fails_before_anything(config):
    with pytest.raises(AutoclfError, match="--device 'cuda:7'"):
        prepare(SearchConfig(**{**config.to_dict(), "device": "cuda:7"}))


def break_two_images(data):
    """A truncated JPEG and a text file named .jpg among good images."""
    truncated = save_image(data / "a" / "truncated.jpg", size=(64, 48), seed=99)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (data / "b" / "notes.jpg").write_text("not an image")
    return truncated, data / "b" / "notes.jpg"


def test_bad_images_stop_the_search_before_anything_is_bound(tmp_path):
    config = folder_config(tmp_path, per_class=4, folds=2)
    truncated, text = break_two_images(tmp_path / "data")
    with pytest.raises(DataError) as info:
        prepare(config)
    message = str(info.value)
    assert "2 image(s) could not be decoded" in message and "--skip-bad-images" in message
    assert str(truncated) in message and str(text) in message
    study_dir = tmp_path / "studies" / "s"
    assert not (study_dir / "index.csv").exists() and not (study_dir / "study.db").exists()
    assert not list((study_dir / "cache").glob("*.npy"))  # no cache with blank rows either


def test_skip_bad_images_leaves_them_out_lists_them_and_resumes(tmp_path):
    config = folder_config(tmp_path, per_class=4, folds=2)
    config = SearchConfig(**{**config.to_dict(), "skip_bad_images": True, "trials": 1})
    truncated, text = break_two_images(tmp_path / "data")
    prepared = prepare(config)
    assert set(prepared.excluded) == {str(truncated), str(text)}
    assert len(prepared.index) == 8 and str(truncated) not in prepared.index.paths
    assert prepared.cache.images.shape[0] == 8  # cache rows follow the index
    excluded = (prepared.study_dir / "excluded.csv").read_text()
    assert "truncated.jpg" in excluded and "notes.jpg" in excluded
    assert len(list((prepared.study_dir / "cache").glob("*.npy"))) == 1
    run(prepared)
    assert prepared.finished() == 1

    # Resuming (the flag is not needed again): same images, same folds, nothing decoded anew.
    again = prepare(SearchConfig(**{**config.to_dict(), "skip_bad_images": False}))
    assert again.index == prepared.index and (again.folds == prepared.folds).all()
    assert again.resumed and again.excluded == prepared.excluded


def test_a_class_whose_every_image_is_bad_is_named_with_skip_bad_images(tmp_path):
    config = folder_config(tmp_path, per_class=4, folds=2)
    config = SearchConfig(**{**config.to_dict(), "skip_bad_images": True})
    (tmp_path / "data" / "broken").mkdir()
    for i in range(3):
        (tmp_path / "data" / "broken" / f"{i}.png").write_bytes(b"not an image")
    # Every trial failed on it before, with scikit-learn's "needs at least two labels".
    with pytest.raises(DataError, match=r"class\(es\) \['broken'\] have no image that decodes"):
        prepare(config)
    assert not (tmp_path / "studies" / "s" / "index.csv").exists()


def test_balance_is_part_of_the_study(config):
    run(prepare(config))
    changed = SearchConfig(**{**config.to_dict(), "balance": "weights"})
    with pytest.raises(StudyMismatchError, match=r"balance: None → 'weights'"):
        prepare(changed)


def test_a_one_image_class_is_named_before_anything_is_bound(tmp_path):
    config = folder_config(tmp_path, per_class=4, folds=2)
    save_image(tmp_path / "data" / "lonely" / "only.png", seed=77)
    with pytest.raises(DataError, match=r"at least folds=2 images .*'lonely' has 1"):
        prepare(config)
    assert not (tmp_path / "studies" / "s" / "index.csv").exists()


def test_metric_auto_scores_imbalanced_data_by_macro_f1_and_keeps_it_on_resume(tmp_path):
    config = folder_config(tmp_path, per_class=3, folds=3)
    for i in range(9):  # class a: 12 images, class b: 3 → 4:1
        save_image(tmp_path / "data" / "a" / f"more{i}.png", seed=200 + i)
    prepared = prepare(config)
    assert config.metric == "auto" and prepared.config.metric == "f1_macro"
    assert prepared.metric.name == "f1_macro" and prepared.study.user_attrs["metric"] == "f1_macro"
    assert '"metric": "f1_macro"' in (prepared.study_dir / "config.json").read_text()

    assert prepare(config).config.metric == "f1_macro"  # auto on resume: the study's own
    with pytest.raises(StudyMismatchError, match=r"metric: 'f1_macro' → 'accuracy'"):
        prepare(SearchConfig(**{**config.to_dict(), "metric": "accuracy"}))


def test_metric_auto_scores_balanced_data_by_accuracy(tmp_path):
    prepared = prepare(folder_config(tmp_path, per_class=3, folds=3))
    assert prepared.config.metric == "accuracy"
    assert prepared.study.user_attrs["metric"] == "accuracy"


def test_csv_groups_stay_within_one_fold_through_prepare(tmp_path):
    rows = ["path,label,group"]
    for i in range(24):
        save_image(tmp_path / "imgs" / f"{i}.png", seed=i)
        rows.append(f"imgs/{i}.png,{'ab'[i % 2]},source{i // 4}")  # 6 sources of 4 images
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "space.yaml").write_text(SPACE)
    config = SearchConfig(
        data=str(tmp_path / "data.csv"),
        study="s",
        space=str(tmp_path / "space.yaml"),
        folds=3,
        studies_dir=str(tmp_path / "studies"),
    )
    prepared = prepare(config)
    folds_of = {}
    for group, fold in zip(prepared.index.groups, prepared.folds, strict=True):
        folds_of.setdefault(group, set()).add(int(fold))
    assert len(folds_of) == 6 and all(len(f) == 1 for f in folds_of.values())
    assert sorted(set(prepared.folds.tolist())) == [0, 1, 2]


def test_tidy_if_unbound_keeps_what_holds_something_and_every_bound_study(tmp_path):
    from autoclf.search.runner import tidy_if_unbound

    def make(study_dir, *, log: str, cached: bool, bound: bool):
        (study_dir / "logs").mkdir(parents=True)
        (study_dir / "cache").mkdir()
        (study_dir / "logs" / "cpu0.log").write_text(log)
        if cached:
            (study_dir / "cache" / "images.npy").write_bytes(b"x")
        if bound:
            (study_dir / "index.csv").write_text("path,label,group,fold\n")

    cases = {
        "empty": dict(log="", cached=False, bound=False),
        "told": dict(log="worker: cannot import timm\n", cached=False, bound=False),
        "cached": dict(log="", cached=True, bound=False),
        "bound": dict(log="", cached=False, bound=True),
    }
    for name, case in cases.items():
        make(tmp_path / name, **case)
        with pytest.raises(RuntimeError), tidy_if_unbound(tmp_path / name):
            raise RuntimeError("stopped")
    assert not (tmp_path / "empty").exists()
    assert (tmp_path / "told" / "logs" / "cpu0.log").read_text().startswith("worker")
    assert not (tmp_path / "told" / "cache").exists()
    assert (tmp_path / "cached" / "cache" / "images.npy").exists()
    assert not (tmp_path / "cached" / "logs").exists()
    assert (tmp_path / "bound" / "logs" / "cpu0.log").exists()


def test_a_resumed_study_stays_in_the_storage_it_was_created_in(config, tmp_path):
    custom = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    first = prepare(dataclasses.replace(config, storage=custom))
    first.study.enqueue_trial({"lr": 0.005})  # something in it that a second study would lack
    # Without --storage: the saved one, not a second study in studies/s/study.db.
    again = prepare(config)
    assert again.storage_url == custom and len(again.study.trials) == 1
    assert not (again.study_dir / "study.db").exists()
    assert json.loads((again.study_dir / "config.json").read_text())["storage"] == custom
    with pytest.raises(StudyMismatchError, match=r"stored in sqlite:///.*elsewhere\.db"):
        prepare(dataclasses.replace(config, storage=f"sqlite:///{tmp_path / 'other.db'}"))


def test_a_refused_first_run_removes_only_a_folder_it_made(tmp_path):
    from autoclf.errors import DataError
    from autoclf.search.runner import tidy_if_unbound

    made = tmp_path / "studies" / "new"
    with pytest.raises(DataError), tidy_if_unbound(made):
        (made / "cache").mkdir(parents=True)
        (made / "cache" / "images.npy").write_bytes(b"decoded")
        raise DataError("a class is too small")
    assert not made.exists()
    # --studies-dir . --study photos: a folder of the user's, never autoclf's to delete.
    theirs = tmp_path / "photos"
    (theirs / "ants").mkdir(parents=True)
    (theirs / "ants" / "1.jpg").write_bytes(b"a photo")
    with pytest.raises(DataError), tidy_if_unbound(theirs):
        raise DataError("a class is too small")
    assert (theirs / "ants" / "1.jpg").read_bytes() == b"a photo"


def test_start_over_deletes_the_study_folder_only_when_all_of_it_is_autoclfs(tmp_path):
    from autoclf.search.runner import start_over

    config = SearchConfig(data="digits", study="s", space="tiny", studies_dir=str(tmp_path))
    (tmp_path / "s" / "cache").mkdir(parents=True)
    (tmp_path / "s" / "index.csv").write_text("path,label,group,fold\n")
    assert start_over(config) == f"rm -r {tmp_path / 's'}"
    pg = dataclasses.replace(config, storage="postgresql://u:secret@h/db?password=x&sslmode=a")
    # Runnable as printed: the "&" of the query and the "***" are quoted for the shell.
    assert start_over(pg) == (
        "optuna delete-study --storage 'postgresql://u:***@h/db?password=***&sslmode=a' "
        f"--study-name s && rm -r {tmp_path / 's'}"
    )
    (tmp_path / "s" / "notes.txt").write_text("mine")
    assert "rm -r" not in start_over(config) and "'notes.txt' there is not" in start_over(config)
