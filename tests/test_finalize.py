"""finalize and predict on a real (small) digits search."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoclf.config import FinalizeConfig
from autoclf.finalize import finalize
from autoclf.inference import views_for
from autoclf.metrics import get_metric
from autoclf.search import objective
from tests.studies import SPACE
from tests.studies import search_digits as _search

ACC = get_metric("accuracy")
REAL_FIT = objective.fit_fold


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A finished 3-trial, 2-fold digits search; tests copy it so each finalizes afresh."""
    root = tmp_path_factory.mktemp("search")
    _search(
        root,
        SPACE,
        [
            {"backbone": "test_efficientnet", "lr": 0.01},
            {"backbone": "test_resnet", "lr": 0.01},
            {"backbone": "test_efficientnet", "lr": 0.005},
        ],
    )
    return root / "studies"


@pytest.fixture
def studies(searched, tmp_path) -> Path:
    copy = tmp_path / "studies"
    # The default storage is found from the study's folder, so the copy is self-contained.
    shutil.copytree(searched, copy)
    return copy


def _finalize(studies: Path, **options) -> tuple:
    result = finalize(FinalizeConfig(study="s", studies_dir=str(studies), **options))
    final = studies / "s" / "final"
    return (
        result,
        json.loads((final / "summary.json").read_text()),
        json.loads((final / "manifest.json").read_text()),
    )


def _count_fits(monkeypatch, *, die_at: int | None = None) -> list[int]:
    """Record the seed of every model finalize trains (it trains through
    ``objective.fit_fold``); with ``die_at``, Ctrl-C arrives during that training run."""
    seeds: list[int] = []

    def counted(*args, **kwargs):
        seeds.append(kwargs["seed"])
        if len(seeds) == die_at:
            raise KeyboardInterrupt
        return REAL_FIT(*args, **kwargs)

    monkeypatch.setattr(objective, "fit_fold", counted)
    return seeds


def test_outputs_scores_and_test_predictions(studies):
    result, summary, manifest = _finalize(studies, top_k=2, test="digits-test")
    assert 1 <= len(manifest["members"]) <= 2
    assert manifest["classes"] == [str(d) for d in range(10)] and manifest["cache_size"] == 16
    assert summary["oof"]["ensemble"] >= summary["oof"]["best_single_member"]
    if len(result.members) > 1:  # the ensemble's score is that of the vote it chose
        assert summary["oof"]["ensemble"] == pytest.approx(summary["oof"][result.vote]["tta"])
    else:  # one member beat every vote: finalize says so, and it is the final model
        assert any("alone beat the ensemble" in note for note in result.notes)
        assert summary["oof"]["ensemble"] == pytest.approx(result.members[0].oof_tta)
    for member in summary["members"]:
        for w in next(m for m in manifest["members"] if m["trial"] == member["trial"])["weights"]:
            assert (studies / "s" / "final" / w).is_file()
    rows = list(csv.reader((studies / "s" / "final" / "predictions.csv").open()))
    assert rows[0] == ["path", "label", *(f"prob_{d}" for d in range(10))]
    assert len(rows) == 361
    probs = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert [r[1] for r in rows[1:]] == [str(int(i)) for i in probs.argmax(axis=1)]
    test = summary["test"]
    assert test["rows"] == 360 and test["accuracy"] > 0.5
    assert np.array(test["confusion_matrix"]).sum() == 360
    # Each row's true label is its folder: the reported accuracy is the CSV's accuracy.
    truth = [Path(r[0]).parent.name for r in rows[1:]]
    assert np.mean([t == r[1] for t, r in zip(truth, rows[1:], strict=True)]) == pytest.approx(
        test["accuracy"]
    )


def test_a_broken_test_image_stops_finalize_before_training_or_is_left_out(studies, tmp_path):
    from autoclf.data.cache import BadImagesError

    test_dir = tmp_path / "test"
    test_dir.mkdir()
    for i, source in enumerate(sorted((studies / "_datasets").rglob("*.png"))[:3]):
        shutil.copy(source, test_dir / f"{i}.png")
    (test_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    steps: list[str] = []
    options = dict(study="s", studies_dir=str(studies), top_k=1, tta="off", test=str(test_dir))
    with pytest.raises(BadImagesError, match="broken.png"):
        finalize(FinalizeConfig(**options), on_step=steps.append)
    assert steps == [] and not (studies / "s" / "final" / "members").exists()  # nothing trained

    result = finalize(FinalizeConfig(**options, skip_bad_images=True))
    broken = str(test_dir / "broken.png")
    assert list(result.test.skipped) == [broken] and "broken.png" in result.test.skipped[broken]
    summary = json.loads((studies / "s" / "final" / "summary.json").read_text())
    assert list(summary["test"]["skipped"]) == [broken] and summary["test"]["rows"] == 3
    rows = list(csv.reader((studies / "s" / "final" / "predictions.csv").open()))
    assert [Path(r[0]).name for r in rows[1:]] == ["0.png", "1.png", "2.png"]


def test_images_to_predict_that_are_all_left_out_are_an_error_not_a_crash(tmp_path):
    from autoclf.errors import DataError
    from autoclf.predict import load_images

    for i in range(2):
        (tmp_path / "new" / f"{i}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "new" / f"{i}.jpg").write_bytes(b"not a photo")
    # It crashed in inference with torch.cat()'s "expected a non-empty list of Tensors".
    with pytest.raises(DataError, match=r"no image in .*new decodes: .* left out all 2"):
        load_images(
            str(tmp_path / "new"),
            classes=("a", "b"),
            size=16,
            final_dir=tmp_path / "final",
            studies_dir=tmp_path,
            skip_bad=True,
        )


def test_member_oof_reproduces_the_search(studies):
    result, summary, _ = _finalize(studies, top_k=1, tta="off", select="topk")
    member = summary["members"][0]
    # Retrained with the search's own seeds, the fold models score what the trial scored.
    assert member["oof"] == pytest.approx(member["cv_value"], abs=0.01)
    assert member["views"] == ["identity"] and member["oof_tta"] == member["oof"]


def test_fold_models_the_search_kept_are_used_and_match_a_retrain(studies, monkeypatch):
    calls = _count_fits(monkeypatch)
    steps: list[str] = []
    options = FinalizeConfig(
        study="s", studies_dir=str(studies), top_k=3, select="topk", tta="2", refit="folds"
    )
    kept = finalize(options, on_step=steps.append)
    assert calls == [] and len(kept.members) == 3  # nothing trained: the search kept every fold
    assert sum("as the search trained it" in s for s in steps) == 3 * 2
    final = studies / "s" / "final"
    for member in kept.members:
        for fold in (0, 1):  # the same file, not a second copy on disk
            searched = studies / "s" / "trials" / str(member.trial) / f"fold{fold}.pt"
            used = final / "members" / str(member.trial) / f"fold{fold}.pt"
            assert used.stat().st_ino == searched.stat().st_ino
    # A search that kept none (--keep-weights 0): finalize trains every fold again, with the
    # search's seeds, into the same models on the CPU.
    shutil.rmtree(final)
    for path in (studies / "s" / "trials").glob("*/fold*"):
        path.unlink()
    retrained = finalize(options)
    assert len(calls) == 3 * 2
    for a, b in zip(kept.members, retrained.members, strict=True):
        assert (a.trial, a.oof, a.oof_tta, a.views) == (b.trial, b.oof, b.oof_tta, b.views)
    assert kept.oof_score == retrained.oof_score


def test_tta_auto_only_keeps_views_that_help(studies):
    _, summary, manifest = _finalize(studies, top_k=3, tta="auto")
    for member in summary["members"]:
        assert member["views"][0] == "identity" and len(member["views"]) in (1, 2, 4, 8)
        if len(member["views"]) > 1:
            assert member["oof_tta"] >= member["oof"]
        else:
            assert member["oof_tta"] == member["oof"]
    assert [m["views"] for m in manifest["members"]] == [m["views"] for m in summary["members"]]
    # The ensemble is the best of soft/hard, with/without TTA (or a single member beating them).
    oof = summary["oof"]
    every_option = [oof[kind][use] for kind in ("soft", "hard") for use in ("plain", "tta")]
    assert oof["ensemble"] >= max(every_option) - 1e-12


def test_fixed_tta_count_and_hard_vote(studies):
    result, summary, manifest = _finalize(studies, top_k=3, tta="2", vote="hard", refit="folds")
    assert manifest["vote"] == "hard" and summary["oof"]["vote"] == "hard"
    assert all(m["views"] == ["identity", "hflip"] for m in manifest["members"])
    assert all(
        len(m["weights"]) == 2 and m["weights"][0].endswith("fold0.pt") for m in manifest["members"]
    )


def test_auto_vote_picks_the_better_on_oof(studies):
    result, summary, _ = _finalize(studies, top_k=3, select="topk", tta="off")
    soft, hard = summary["oof"]["soft"]["tta"], summary["oof"]["hard"]["tta"]
    best = max(soft, hard)
    if len(result.members) > 1:
        assert result.vote == ("hard" if hard > soft else "soft")
        assert summary["oof"]["ensemble"] == pytest.approx(best)
    else:  # a single member beat both votes: it is the final model, with its own probabilities
        assert result.vote == "soft" and summary["oof"]["ensemble"] >= best  # ties: log loss


def test_by_default_the_fold_models_the_oof_scored_are_the_model(studies, monkeypatch):
    """--refit folds is the default: each member is the K fold models whose out-of-fold
    predictions chose and scored it, averaged; with the folds the search kept, nothing trains."""
    calls = _count_fits(monkeypatch)
    result, summary, manifest = _finalize(studies, top_k=2, select="topk", tta="off")
    assert calls == []
    assert manifest["refit"] == "folds" and summary["options"]["refit"] == "folds"
    for member in manifest["members"]:
        assert member["weights"] == [f"members/{member['trial']}/fold{k}.pt" for k in range(2)]
    assert not list((studies / "s" / "final").rglob("full.pt"))
    assert all(m.refit_epochs is None for m in result.members)


def test_interrupted_finalize_resumes_without_redoing_work(studies, monkeypatch):
    _count_fits(monkeypatch, die_at=3)  # Ctrl-C during the third training run
    for path in (studies / "s" / "trials").glob("*/fold*"):
        path.unlink()  # as a search with --keep-weights 0 leaves it: every fold is trained
    with pytest.raises(KeyboardInterrupt):
        _finalize(studies, top_k=2, select="topk", tta="off", refit="full")
    members_dir = studies / "s" / "final" / "members"
    done = sorted(members_dir.rglob("*.pt"))
    assert len(done) == 2
    stamps = {p: p.stat().st_mtime_ns for p in done}
    for record in members_dir.rglob("fold*.json"):  # as older autoclf versions wrote them
        kept = json.loads(record.read_text())["kept_epoch"]
        record.write_text(json.dumps({"best_epoch": kept}))

    calls = _count_fits(monkeypatch)
    _, summary, _ = _finalize(studies, top_k=2, select="topk", tta="off", refit="full")
    assert {p: p.stat().st_mtime_ns for p in done} == stamps  # finished work was not redone
    # 2 members x (2 folds + 1 full refit) = 6 runs in all; 2 were done before the interrupt.
    assert len(calls) == 6 - 2
    assert len(summary["members"]) == 2 and (studies / "s" / "final" / "manifest.json").is_file()


def test_model_files_deleted_by_hand_are_retrained_not_a_crash(studies):
    """To save disk, a user deleted the final models (and the search's) but kept the rest:
    predicting says how to get them back, and finalize trains them again."""
    from autoclf.errors import AutoclfError
    from autoclf.predictor import Predictor

    _finalize(studies, top_k=2, select="topk", tta="off", refit="folds")
    weights = sorted((studies / "s").rglob("*.pt"))
    final = studies / "s" / "final"
    expected = sorted(final.rglob("*.pt"))
    assert expected and all(p.with_suffix(".json").is_file() for p in expected)
    for path in weights:
        path.unlink()
    with pytest.raises(
        AutoclfError, match=r"missing, the first .*fold0\.pt: run `autoclf finalize"
    ):
        Predictor(final)
    _, summary, manifest = _finalize(studies, top_k=2, select="topk", tta="off", refit="folds")
    assert sorted(final.rglob("*.pt")) == expected
    assert Predictor(final).predict(np.zeros((2, 16, 16, 3), np.uint8)).probs.shape == (2, 10)


@pytest.mark.slow
def test_finalize_cli_predicts_unlabelled_test_images_and_can_leave_out_a_broken_one(
    studies, tmp_path
):
    test_dir = tmp_path / "new images"
    test_dir.mkdir()
    for i, source in enumerate(sorted((studies / "_datasets").rglob("*.png"))[:2]):
        shutil.copy(source, test_dir / f"{i}.png")
    (test_dir / "broken.png").write_bytes(b"not an image")
    command = [str(Path(sys.executable).parent / "autoclf"), "finalize", "--study", "s"]
    command += ["--studies-dir", str(studies), "--top-k", "1", "--tta", "off"]
    command += ["--test", str(test_dir)]
    stopped = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert stopped.returncode != 0 and "broken.png" in stopped.stderr
    assert "--skip-bad-images" in stopped.stderr
    done = subprocess.run(
        [*command, "--skip-bad-images"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr + done.stdout
    out = " ".join(done.stdout.split())  # rich wraps long lines
    assert "left out 1 image(s) that cannot be decoded" in out and "broken.png" in out
    assert "predictions: 2 images" in out and "test:" not in out  # no labels, no scores
    rows = list(csv.reader((studies / "s" / "final" / "predictions.csv").open()))
    assert [Path(r[0]).name for r in rows[1:]] == ["0.png", "1.png"]


@pytest.mark.slow
def test_predict_in_a_fresh_process_matches_finalize(studies, tmp_path):
    exe = str(Path(sys.executable).parent / "autoclf")
    done = subprocess.run(
        [
            exe,
            "finalize",
            "--study",
            "s",
            "--studies-dir",
            str(studies),
            "--top-k",
            "2",
            "--test",
            "digits-test",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "test: 360 images" in done.stdout
    # The matrix's heading is one line, not wrapped to the width of the matrix.
    assert "confusion matrix (rows: true, columns: predicted)" in done.stdout.splitlines()
    out = tmp_path / "again.csv"
    pred = subprocess.run(
        [
            exe,
            "predict",
            "digits-test",
            "--study",
            "s",
            "--studies-dir",
            str(studies),
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pred.returncode == 0, pred.stderr
    first = list(csv.reader((studies / "s" / "final" / "predictions.csv").open()))
    second = list(csv.reader(out.open()))
    assert [r[:2] for r in first] == [r[:2] for r in second]
    a = np.array([[float(v) for v in r[2:]] for r in first[1:]])
    b = np.array([[float(v) for v in r[2:]] for r in second[1:]])
    assert np.allclose(a, b, atol=1e-5)


def test_predict_unlabelled_folder_and_unknown_labels(studies, tmp_path):
    from autoclf.errors import DataError
    from autoclf.predict import predict
    from autoclf.trainer import resolve_device

    _finalize(studies, top_k=1, tta="off", refit="folds")
    flat = tmp_path / "flat"
    flat.mkdir()
    src = sorted((studies / "_datasets" / "digits" / "test" / "3").iterdir())[:4]
    for p in src:
        shutil.copy(p, flat / p.name)
    final = studies / "s" / "final"
    result = predict(final, str(flat), device=resolve_device("cpu"), studies_dir=studies)
    assert len(result.paths) == 4 and result.labels is None and result.metrics == {}
    odd = tmp_path / "odd" / "eleven"
    odd.mkdir(parents=True)
    shutil.copy(src[0], odd / "a.png")
    with pytest.raises(DataError, match=r"label\(s\) \['eleven'\]"):
        predict(final, str(tmp_path / "odd"), device=resolve_device("cpu"), studies_dir=studies)


def test_a_single_member_that_beats_the_ensemble_is_the_final_model(studies, monkeypatch):
    import autoclf.finalize as fin

    labels = np.loadtxt(
        studies / "s" / "index.csv", delimiter=",", skiprows=1, usecols=1, dtype=int
    )
    perfect = np.eye(10, dtype=np.float32)[labels][None]
    wrong = np.eye(10, dtype=np.float32)[(labels + 1) % 10][None]

    def crafted_oof(number, *args, **kwargs):
        # trial 0 is right everywhere, the rest never; no micro-batch fallback
        return (perfect if number == 0 else wrong), None

    monkeypatch.setattr(fin, "_fold_oof", crafted_oof)
    result, summary, manifest = _finalize(
        studies, top_k=3, select="topk", vote="hard", tta="off", refit="folds"
    )
    assert [m["trial"] for m in manifest["members"]] == [0]
    assert manifest["vote"] == "soft" and manifest["members"][0]["weight"] == 1.0
    assert summary["oof"]["ensemble"] == 1.0 and "alone beat the ensemble" in summary["notes"][0]


def test_a_member_that_keeps_last_epochs_and_never_flipped(tmp_path):
    """keep: last and hflip: false carry through finalize: the fold models keep their last
    epochs and score what the trial scored, the member is refit for every epoch,
    and it is shown no mirrored view."""
    space = SPACE.replace("epochs: 2", "epochs: 3\n  keep: last\n  hflip: false")
    (trial,) = _search(tmp_path, space, [{"backbone": "test_resnet", "lr": 0.01}]).trials
    assert trial.user_attrs["fold_kept_epochs"] == [3, 3]

    _, summary, _ = _finalize(tmp_path / "studies", top_k=1, tta="auto", refit="full")
    (member,) = summary["members"]
    assert member["refit_epochs"] == 3
    no_flip = [v.name for v in views_for(False)]
    assert len(no_flip) == 4 and member["views"] == no_flip[: len(member["views"])]
    studies = tmp_path / "studies" / "s"
    member_dir = studies / "final" / "members" / str(trial.number)
    oof_views = np.load(member_dir / "oof_views4.npy")  # the flipped views were never tried
    search_oof = np.load(studies / trial.user_attrs["oof_path"])
    assert np.allclose(oof_views[0], search_oof, atol=1e-5)
    for fold in (0, 1):
        assert json.loads((member_dir / f"fold{fold}.json").read_text())["kept_epoch"] == 3


def test_a_finalize_without_test_says_the_predictions_there_are_older(studies):
    final = studies / "s" / "final"
    _finalize(studies, top_k=1, tta="off", refit="folds", test="digits-test")
    written = (final / "predictions.csv").read_bytes()
    result, summary, _ = _finalize(studies, top_k=1, tta="off", refit="folds")
    stale = [n for n in result.notes if "predictions.csv is from an earlier finalize" in n]
    assert stale and stale[0] in summary["notes"]
    assert (final / "predictions.csv").read_bytes() == written  # kept, not deleted
    result, _, _ = _finalize(studies, top_k=1, tta="off", refit="folds", test="digits-test")
    assert not [n for n in result.notes if "earlier finalize" in n]


def test_a_trial_with_nan_out_of_fold_probabilities_does_not_stop_greedy_selection(studies):
    """The search completes such a trial (a model that diverged on a few images); finalize
    ranks it by its score with the worst log loss, rather than failing in scikit-learn."""
    oof_path = studies / "s" / "trials" / "2" / "oof.npy"
    oof = np.load(oof_path)
    oof[:5] = np.nan
    np.save(oof_path, oof)
    result, summary, _ = _finalize(studies, select="greedy", top_k=2, tta="off", refit="folds")
    assert np.isfinite(result.oof_score) and summary["members"]


def test_an_interrupted_finalize_leaves_no_summary_of_another_ensemble(studies, monkeypatch):
    from autoclf import finalize as finalize_module

    final = studies / "s" / "final"
    _finalize(studies, top_k=1, select="topk", tta="off", refit="folds", test="digits-test")
    assert (final / "summary.json").is_file()

    def interrupted(*args, **kwargs):  # Ctrl-C while the test set is predicted
        raise KeyboardInterrupt

    monkeypatch.setattr(finalize_module, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _finalize(studies, top_k=3, select="topk", tta="off", refit="folds", test="digits-test")
    manifest = json.loads((final / "manifest.json").read_text())
    assert len(manifest["members"]) == 3  # the new ensemble's, and no summary of the old one
    assert not (final / "summary.json").exists()
