"""``autoclf report`` on a real searched and finalized study, opened in a real browser."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import optuna
import pytest

from autoclf.config import FinalizeConfig, SearchConfig
from autoclf.data.index import load_index, save_index
from autoclf.finalize import finalize
from autoclf.search.runner import prepare, run
from tests.browser import render, screenshot
from tests.conftest import autoclf

SPACE = """
params:
  backbone: {type: categorical, choices: [test_efficientnet, test_resnet]}
  lr: {type: categorical, choices: [0.01, 0.005]}
  batch_size: 64
  epochs: 2
  image_size: 16
pruner: {name: none}
"""
SECTIONS = (
    "Study",
    "Leaderboard",
    "Optimisation history",
    "Parameter importances",
    "Parallel coordinates",
    "Intermediate values",
    "Per-fold scores",
    "Failed and pruned trials",
    "Ensemble against its best single member",
    "Confusion matrix",
    "Per-class scores",
    "Worst mistakes",
)


@pytest.fixture(scope="module")
def finalized(tmp_path_factory) -> Path:
    """A 3-trial, 2-fold digits search with one failed and one pruned trial, finalized."""
    root = tmp_path_factory.mktemp("report")
    (root / "space.yaml").write_text(SPACE)
    config = SearchConfig(
        data="digits",
        study="s",
        space=str(root / "space.yaml"),
        folds=2,
        trials=3,
        studies_dir=str(root / "studies"),
    )
    prepared = prepare(config)
    for backbone, lr in (("test_efficientnet", 0.01), ("test_resnet", 0.01)):
        prepared.study.enqueue_trial({"backbone": backbone, "lr": lr})
    run(prepared)
    # What the search records when a trial fails or is pruned (see the objective).
    failed = prepared.study.ask()
    failed.set_user_attr("fail_reason", "RuntimeError: boom in fold 2")
    prepared.study.tell(failed, state=optuna.trial.TrialState.FAIL)
    pruned = prepared.study.ask()
    pruned.report(0.11, step=1)
    pruned.set_user_attr("pruned_reason", "fold 1 epoch 1: below the median")
    prepared.study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    finalize(FinalizeConfig(study="s", studies_dir=str(root / "studies"), top_k=2, tta="off"))
    return root / "studies"


def test_report_shows_every_section_with_real_content_and_renders_offline(finalized, tmp_path):
    out = autoclf("report", "--study", "s", "--studies-dir", str(finalized), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    path = finalized / "s" / "report.html"
    assert f"report: {path}" in out.stdout
    html = path.read_text()

    headings = re.findall(r"<h2>([^<]+)</h2>", html)
    for section in SECTIONS:
        assert any(h.startswith(section) for h in headings), f"no section {section!r}"
    assert "Needs" not in html and "Run <code>autoclf finalize" not in html  # all had content
    for number in (0, 1, 2):
        assert f"<td>#{number}</td>" in html  # leaderboard rows
    assert "RuntimeError: boom in fold 2" in html and "below the median" in html
    per_class = html.split("<h2>Per-class scores")[1].split("<h2>")[0]
    assert per_class.count("<tr>") == 1 + 10  # header + the ten digits
    mistakes = html.split("<h2>Worst mistakes")[1]
    shown = int(re.search(r"The (\d+) most confident wrong predictions", mistakes).group(1))
    assert shown > 0 and mistakes.count("data:image/jpeg;base64,") == 2 * shown
    assert mistakes.count(">Grad-CAM<") == shown
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=['\"]?(https?:)?//", html)

    seen = render(path, tmp_path)
    assert seen["errors"] == [] and seen["resources"] == []
    figures = html.count('class="plotly-graph-div"')
    assert figures == 7  # history, importances, parallel, intermediate, folds, ensemble, matrix
    assert seen["plots"] == seen["drawn"] == figures  # every one drawn by plotly.js
    assert all(n > 0 for n in seen["traces"]), seen["traces"]  # plotly built every trace…
    assert all(n > 0 for n in seen["marks"]), seen["marks"]  # …and drew it
    assert seen["images"] == html.count("data:image/jpeg;base64,")
    keep = Path(os.environ.get("AUTOCLF_ARTIFACTS", tmp_path))
    assert screenshot(path, keep / "report.png", tmp_path).stat().st_size > 50_000


def test_report_before_finalize_says_how_to_get_the_rest(finalized, tmp_path):
    studies = tmp_path / "studies"
    shutil.copytree(finalized, studies)
    shutil.rmtree(studies / "s" / "final")
    out = autoclf("report", "--study", "s", "--studies-dir", str(studies), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    html = (studies / "s" / "report.html").read_text()
    assert "<h2>Leaderboard</h2>" in html and "Run <code>autoclf finalize --study s" in html
    assert "Confusion matrix" not in html


def test_report_after_the_images_moved_says_so_instead_of_crashing(finalized, tmp_path):
    """The data folder moved (or was deleted) after the search: the report still renders every
    section, and the galleries say which files they cannot read."""
    studies = tmp_path / "studies"
    shutil.copytree(finalized, studies)
    csv_path = studies / "s" / "index.csv"
    index, folds = load_index(csv_path)
    gone = tmp_path / "moved-away"
    moved = tuple(str(gone / Path(p).name) for p in index.paths)
    save_index(dataclasses.replace(index, paths=moved), folds, csv_path)
    n = len(moved)

    out = autoclf("report", "--study", "s", "--studies-dir", str(studies), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    html = (studies / "s" / "report.html").read_text()
    headings = re.findall(r"<h2>([^<]+)</h2>", html)
    for section in SECTIONS:
        assert any(h.startswith(section) for h in headings), f"no section {section!r}"
    mistakes = html.split("<h2>Worst mistakes")[1]
    shown = int(re.search(r"The (\d+) most confident wrong predictions", mistakes).group(1))
    assert shown > 0 and mistakes.count("cannot read ") == 2 * shown  # alt text and caption
    assert ">Grad-CAM<" not in mistakes
    assert f"No Grad-CAM: {n} of the {n} training images are no longer" in html
    assert str(gone) in html  # the first missing file, named


def test_report_with_a_training_image_that_no_longer_decodes_skips_grad_cam(finalized, tmp_path):
    """An image overwritten since the search: Grad-CAM (which decodes every training image
    again) is left out with the file named, not the whole report refused with a hint to pass
    --skip-bad-images, which `report` does not take."""
    studies = tmp_path / "studies"
    shutil.copytree(finalized, studies)
    csv_path = studies / "s" / "index.csv"
    index, folds = load_index(csv_path)
    copies = tmp_path / "data"
    copies.mkdir()
    paths = [
        str(shutil.copy(p, copies / f"{i}{Path(p).suffix}")) for i, p in enumerate(index.paths)
    ]
    Path(paths[0]).write_bytes(b"overwritten <not> an image")
    save_index(dataclasses.replace(index, paths=tuple(paths)), folds, csv_path)

    out = autoclf("report", "--study", "s", "--studies-dir", str(studies), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    mistakes = (studies / "s" / "report.html").read_text().split("<h2>Worst mistakes")[1]
    assert ">Grad-CAM<" not in mistakes
    assert "No Grad-CAM: 1 training image(s) no longer decode (" in mistakes
    assert paths[0] in mistakes


def test_a_stale_label_list_is_named_with_its_path_escaped(tmp_path):
    """A studies folder may be named anything: its path goes into the page as text."""
    import time
    from types import SimpleNamespace

    from autoclf.reports.study import _label_issues

    final = tmp_path / "st <b>&'\"x" / "s" / "final"
    final.mkdir(parents=True)
    (final / "label_issues.csv").write_text("path,given,suggested,score\n")
    time.sleep(0.01)
    (final / "oof.npy").write_bytes(b"")  # newer: the list is from an earlier final model
    files = SimpleNamespace(dir=final.parent, config=SimpleNamespace(study="s"))
    html = _label_issues(files)
    assert "is from an earlier" in html and "<b>" not in html and "st &lt;b&gt;&amp;" in html
