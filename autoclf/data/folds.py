"""Fold assignment: stratified K-fold, group-aware when images share a source."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from autoclf.errors import DataError

if TYPE_CHECKING:
    from autoclf.config import SearchConfig
    from autoclf.data.index import DataIndex


def assign_folds(
    labels: np.ndarray,
    *,
    n_splits: int,
    seed: int,
    groups: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Return one fold id (0..n_splits-1) per sample, deterministic for a given ``seed``.

    With ``groups``, every image of a group lands in the same fold, so no source sits on both
    sides of a split.
    """
    labels = np.asarray(labels)
    check_splittable(labels, n_splits=n_splits, classes=classes, groups=groups)
    x = np.zeros(len(labels))
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(x, labels)
    else:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(x, labels, groups=np.asarray(groups))
    folds = np.full(len(labels), -1, dtype=np.int64)
    for fold, (_, val_idx) in enumerate(splits):
        folds[val_idx] = fold
    empty = [f for f in range(n_splits) if not np.any(folds == f)]
    if empty:
        raise DataError(f"fold(s) {empty} came out empty; lower --folds")
    return folds


def check_splittable(
    labels: np.ndarray,
    *,
    n_splits: int,
    classes: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
) -> None:
    """Refuse data that stratified K-fold cannot split, naming the class: one class (nothing to
    tell apart), a class with fewer images than folds, fewer groups than folds. It needs no
    decoded image, so a search runs it before it creates anything."""
    if n_splits < 2:
        raise DataError(f"--folds must be at least 2, got folds={n_splits}")
    # minlength: a class with no image at all (the last ones would be missing) is named too.
    counts = np.bincount(labels, minlength=len(classes) if classes is not None else 0)
    names = list(classes) if classes is not None else [str(i) for i in range(len(counts))]
    if len(counts) < 2:
        only = f" ({names[0]!r}, {_images(counts[0])})" if len(counts) else ""
        raise DataError(
            f"the data has one class{only}: a classifier needs at least two; give DATA one "
            "sub-folder per class (DATA/<class>/<image>), or a CSV with two labels or more"
        )
    small = [(names[c], int(n)) for c, n in enumerate(counts) if n < n_splits]
    if small:
        listed = ", ".join(f"{name!r} has {_images(n)}" for name, n in small)
        raise DataError(
            f"every class needs at least folds={n_splits} images for stratified K-fold: {listed}; "
            "add images or lower --folds"
        )
    if groups is not None and len(set(groups)) < n_splits:
        raise DataError(
            f"folds={n_splits} needs at least that many groups, got {len(set(groups))}; "
            "lower --folds"
        )


def _images(n: int) -> str:
    return f"{n} image" + ("" if n == 1 else "s")


def describe_cv(n_splits: int, *, by_group: bool, by_duplicates: bool) -> str:
    """How a study's folds were made, for its messages and report."""
    kept = [w for w, on in (("its groups", by_group), ("near-duplicates", by_duplicates)) if on]
    return f"{n_splits}-fold stratified CV" + (
        f", {' and '.join(kept)} kept within one fold" if kept else ""
    )


def describe_study_cv(study_dir: Path, config: SearchConfig, index: DataIndex) -> str:
    """:func:`describe_cv` for a study, from its CSV's groups and the duplicates it grouped."""
    return describe_cv(
        config.folds,
        by_group=index.groups is not None,
        by_duplicates=config.duplicates == "group" and (study_dir / "duplicates.csv").is_file(),
    )
