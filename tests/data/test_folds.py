from __future__ import annotations

import numpy as np
import pytest

from autoclf.data.folds import assign_folds, describe_cv
from autoclf.errors import DataError

LABELS = np.repeat([0, 1, 2], [40, 30, 20])


def test_same_seed_same_folds_other_seed_other_folds():
    a = assign_folds(LABELS, n_splits=5, seed=3)
    assert np.array_equal(a, assign_folds(LABELS, n_splits=5, seed=3))
    assert not np.array_equal(a, assign_folds(LABELS, n_splits=5, seed=4))


def test_every_fold_is_stratified():
    folds = assign_folds(LABELS, n_splits=5, seed=0)
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    for f in range(5):
        counts = np.bincount(LABELS[folds == f], minlength=3)
        assert counts.tolist() == [8, 6, 4]


def test_groups_never_span_two_folds():
    rng = np.random.default_rng(0)
    groups = [f"g{i // 3}" for i in range(len(LABELS))]  # three images per source
    labels = rng.permutation(LABELS)  # so that groups mix classes
    folds = assign_folds(labels, n_splits=4, seed=0, groups=groups)
    for g in set(groups):
        assert len({folds[i] for i, x in enumerate(groups) if x == g}) == 1


def test_class_smaller_than_folds_is_named():
    labels = np.array([0] * 10 + [1] * 2)
    with pytest.raises(DataError, match="'bee' has 2"):
        assign_folds(labels, n_splits=3, seed=0, classes=["ant", "bee"])


def test_a_class_with_no_image_at_all_is_named_too():
    labels = np.array([0] * 10)  # the last class has none, so bincount alone would not see it
    with pytest.raises(DataError, match="'bee' has 0"):
        assign_folds(labels, n_splits=2, seed=0, classes=["ant", "bee"])


def test_too_few_folds():
    with pytest.raises(DataError, match="folds=1"):
        assign_folds(LABELS, n_splits=1, seed=0)


def test_describe_cv_says_what_the_folds_keep_together():
    assert describe_cv(5, by_group=False, by_duplicates=False) == "5-fold stratified CV"
    grouped = describe_cv(3, by_group=True, by_duplicates=False)
    assert grouped == "3-fold stratified CV, its groups kept within one fold"
    both = describe_cv(3, by_group=True, by_duplicates=True)
    assert "its groups and near-duplicates kept within one fold" in both
