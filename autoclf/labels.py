"""Likely label errors in the training data, from the final model's out-of-fold probabilities.

Confident learning (cleanlab's ``find_label_issues``): an image whose given label the final
model, never having trained on it, finds much less likely than the model's per-class
thresholds allow, and another class likely enough, is a suspect. Suspects are ranked by
self-confidence: the out-of-fold probability of the given label, lowest first.

autoclf never changes the data. It writes ``final/label_issues.csv`` (path, given label,
suggested label, score), and the report shows the suspects. Whoever owns the data decides.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoclf import atomic
from autoclf.errors import AutoclfError
from autoclf.study import StudyFiles

CSV_NAME = "label_issues.csv"
COLUMNS = ("path", "given", "suggested", "score")


@dataclass(frozen=True)
class LabelIssue:
    path: str
    given: str
    suggested: str  # the class the final model finds most likely
    score: float  # self-confidence: the out-of-fold probability of the given label


@dataclass(frozen=True)
class LabelIssues:
    issues: list[LabelIssue]  # most likely errors first
    checked: int  # training images looked at
    csv: Path
    hard_vote: bool  # the OOF are vote shares, not probabilities: coarser evidence


def find_label_issues(files: StudyFiles) -> LabelIssues:
    """Rank the likely label errors of a finalized study and write them to
    ``final/label_issues.csv`` (an empty table, not no file, when there are none)."""
    from cleanlab.filter import find_label_issues as cleanlab_find

    final = files.dir / "final"
    oof = _oof(files)
    labels = files.index.label_array
    ranked = cleanlab_find(
        labels, oof, return_indices_ranked_by="self_confidence", n_jobs=1, verbose=False
    )
    classes = files.index.classes
    issues = [
        LabelIssue(
            path=files.index.paths[i],
            given=classes[labels[i]],
            suggested=classes[int(oof[i].argmax())],
            score=float(oof[i, labels[i]]),
        )
        for i in ranked
    ]
    target = final / CSV_NAME
    write_csv(issues, target)
    return LabelIssues(issues, len(labels), target, hard_vote=_vote(final) == "hard")


def write_csv(issues: list[LabelIssue], target: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for issue in issues:
        writer.writerow([issue.path, issue.given, issue.suggested, f"{issue.score:.6f}"])
    atomic.write_text(target, buffer.getvalue())


def read_csv(path: Path) -> list[LabelIssue]:
    with path.open(newline="") as f:
        return [
            LabelIssue(row["path"], row["given"], row["suggested"], float(row["score"]))
            for row in csv.DictReader(f)
        ]


def _oof(files: StudyFiles) -> np.ndarray:
    path = files.dir / "final" / "oof.npy"
    if not path.is_file():
        raise AutoclfError(
            f"no out-of-fold predictions at {path}: run `autoclf finalize --study "
            f"{files.config.study}` first (the label check reads the final model's)"
        )
    oof = np.load(path).astype(np.float64)
    if oof.shape != (len(files.index), len(files.index.classes)):
        raise AutoclfError(
            f"{path} holds {oof.shape[0]}×{oof.shape[1]} predictions, but the study has "
            f"{len(files.index)} images of {len(files.index.classes)} classes: run "
            "`autoclf finalize` again"
        )
    return oof / oof.sum(axis=1, keepdims=True)  # float32 rounding: cleanlab checks the sums


def _vote(final: Path) -> str:
    manifest = final / "manifest.json"
    return json.loads(manifest.read_text())["vote"] if manifest.is_file() else "soft"
