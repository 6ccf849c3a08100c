"""What the commands print: progress where stdout is not a terminal (nohup, CI, a log file),
the leaderboard, counts."""

from __future__ import annotations

import re

import optuna
import pytest

from autoclf import cli
from autoclf.errors import AutoclfError
from autoclf.search import record
from autoclf.search.events import EpochDone, TrialStarted
from autoclf.trainer import EpochReport


def _epoch(epoch: int, worker: str = "cpu0") -> EpochDone:
    report = EpochReport(
        epoch=epoch, epochs=9, train_loss=0.5, score=0.8, best_score=0.8, lr=1e-3, seconds=4.0
    )
    return EpochDone(number=3, fold=1, folds=5, report=report, worker=worker)


def test_plain_progress_is_one_line_per_worker_every_interval(monkeypatch, capsys):
    clock = [1000.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: clock[0])
    monkeypatch.setenv("AUTOCLF_PROGRESS_EVERY", "30")
    assert not cli.console.is_terminal  # as under nohup
    view = cli._LiveWorkers("accuracy")
    view.handle(TrialStarted(number=3, params={"backbone": "test_resnet"}, worker="cpu0"))
    view.handle(TrialStarted(number=4, params={"backbone": "test_resnet"}, worker="cpu1"))
    for at, epoch in ((10, 1), (20, 2), (31, 3), (45, 4), (62, 5)):
        clock[0] = 1000.0 + at
        view.handle(_epoch(epoch))
    clock[0] = 1040.0
    view.handle(_epoch(1, worker="cpu1"))
    out = capsys.readouterr().out
    stamp = r"\d\d:\d\d:\d\d "
    assert re.search(rf"^{stamp}cpu0  trial 3: starting  backbone=test_resnet$", out, re.M)
    printed = re.findall(
        rf"^{stamp}(cpu\d)  trial \d: fold 2/5  epoch (\d)/9 .* (\d+) s into", out, re.M
    )
    # cpu0: 31 s after its start, then 31 s after that line; cpu1 on its own clock.
    assert printed == [("cpu0", "3", "31"), ("cpu0", "5", "62"), ("cpu1", "1", "40")]


def test_a_bad_progress_interval_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("AUTOCLF_PROGRESS_EVERY", "soon")
    with pytest.raises(AutoclfError, match=r"\$AUTOCLF_PROGRESS_EVERY must be a number"):
        cli._LiveWorkers("accuracy")


def test_a_study_with_no_complete_trial_gets_a_line_not_an_empty_table(capsys):
    study = optuna.create_study(study_name="s", direction="maximize")
    assert str(cli.leaderboard(study, "accuracy")) == "study s: no trials; none completed yet"
    study.enqueue_trial({})
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # as a Ctrl-C leaves the running one
    assert str(cli.leaderboard(study, "accuracy")) == "study s: 1 fail; none completed yet"
    study.tell(study.ask(), 0.5)
    cli.console.print(cli.leaderboard(study, "accuracy"))
    assert "study s: 1 complete, 1 fail" in capsys.readouterr().out


def test_the_leaderboard_shows_what_the_space_searches_not_what_it_fixes(capsys):
    """A `cpu`-like space: image size and head multiplier searched, optimiser and batch fixed.
    The columns are the searched settings, the model first; a start line names them all."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna.create_study(study_name="s", direction="maximize")
    dists = {
        "lr": FloatDistribution(1e-5, 1e-4, log=True),
        "image_size": CategoricalDistribution([160, 224]),
        "head_lr_mult": FloatDistribution(20.0, 200.0, log=True),
    }
    fixed = {"backbone": "tf_efficientnet_lite0", "optimizer": "adamw", "batch_size": 32}
    for number, (lr, size, mult) in enumerate(((2.3e-5, 160, 149.19), (1.5e-5, 224, 48.69))):
        params = {"lr": lr, "image_size": size, "head_lr_mult": mult}
        attrs = {record.CONFIG: {**fixed, **params}, record.CV_STD: 0.01}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=dists, value=0.9 + number / 100, user_attrs=attrs
            )
        )
    cli.console.print(cli.leaderboard(study, "accuracy"))
    header, best, second = capsys.readouterr().out.splitlines()[1:4]
    assert header.split() == ["#", "accuracy", "±sd", "backbone", "px", "lr", "head", "lr×"] + [
        "epochs",
        "time",
    ]
    assert best.split()[:5] == ["1", "0.9100±0.010", "tf_efficientnet_lite0", "224", "1.5e-5"]
    assert best.split()[5] == "48.7" and second.split()[5] == "149"
    assert cli._fmt_params({"lr": 2.3e-5, "image_size": 160, "finetune.dropout": 0.1}) == (
        "image_size=160 lr=2.3e-5 dropout=0.10"
    )


def test_a_narrow_terminal_leaves_out_the_last_settings_whole(monkeypatch, capsys):
    """`tiny` searches nine settings: at 80 columns the last ones go, named below the table,
    and no value is cut short; at 200 every one is shown."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from rich.console import Console

    study = optuna.create_study(study_name="s", direction="maximize")
    params = {
        "backbone": "test_efficientnet",
        "optimizer": "adamw",
        "lr": 3.8e-3,
        "weight_decay": 1.5e-3,
        "batch_size": 32,
        "dropout": 0.004,
        "aug_strength": 0.18,
        "hflip": False,
        "scheduler": "onecycle",
    }
    dists = {
        k: FloatDistribution(1e-3, 1.0) if isinstance(v, float) else CategoricalDistribution([v])
        for k, v in params.items()
    }
    attrs = {record.CONFIG: params, record.CV_STD: 0.004}
    study.add_trial(
        optuna.trial.create_trial(params=params, distributions=dists, value=0.99, user_attrs=attrs)
    )
    for width, left_out in ((80, ["aug_strength", "hflip", "scheduler"]), (200, [])):
        monkeypatch.setattr(cli, "console", Console(width=width))
        cli.console.print(cli.leaderboard(study, "accuracy"))
        out = capsys.readouterr().out
        assert "…" not in out and max(map(len, out.splitlines())) <= width
        header = out.splitlines()[1].split()
        assert ("aug" in header, "hflip" in header, "sched" in header) == (not left_out,) * 3
        assert ("wd" in header, "drop" in header) == (True, True)
        if left_out:
            assert f"left out for the width: {', '.join(left_out)}" in out


@pytest.mark.parametrize(
    ("n", "noun", "words"),
    [
        (1, "class", "1 class"),
        (2, "class", "2 classes"),
        (1, "image", "1 image"),
        (0, "image", "0 images"),
    ],
)
def test_counts_agree_with_their_noun(n, noun, words):
    assert cli._count(n, noun) == words
