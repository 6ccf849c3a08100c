from __future__ import annotations

import math

import numpy as np
import pytest

from autoclf.metrics import choose_metric, get_metric, imbalance_ratio

LABELS = np.array([0, 1, 2, 2])
PERFECT = np.eye(3)[LABELS]


def test_accuracy_and_f1_on_known_predictions():
    wrong_last = PERFECT.copy()
    wrong_last[3] = [1, 0, 0]
    assert get_metric("accuracy")(LABELS, PERFECT) == 1.0
    assert get_metric("accuracy")(LABELS, wrong_last) == 0.75
    # class 0: P=1/2 R=1 F1=2/3; class 1: 1; class 2: P=1 R=1/2 F1=2/3
    assert get_metric("f1_macro")(LABELS, wrong_last) == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)


def test_log_loss_of_uniform_is_log_classes_and_lower_is_better():
    metric = get_metric("log_loss")
    assert metric(LABELS, np.full((4, 3), 1 / 3)) == pytest.approx(math.log(3))
    assert metric.direction == "minimize"
    assert metric.better(0.1, 0.2) and not get_metric("accuracy").better(0.1, 0.2)


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        get_metric("auc")


def test_auto_metric_turns_to_macro_f1_from_three_to_one():
    assert choose_metric([100, 34]) == "accuracy"
    assert choose_metric([100, 33]) == "f1_macro"
    assert choose_metric([5, 50, 10]) == "f1_macro"
    assert imbalance_ratio([0, 7]) == 7.0  # an emptied class does not divide by zero


def test_f1_macro_counts_the_classes_present_or_predicted():
    """A test set of digits 0 and 1 only, all right: 1.0, not 0.2 for the eight absent ones."""
    labels = np.array([0, 1, 0, 1])
    assert get_metric("f1_macro")(labels, np.eye(10)[labels]) == 1.0
    # A class predicted but absent still counts, at 0: one 1 taken for a 2.
    wrong = np.eye(10)[[0, 1, 0, 2]]
    assert get_metric("f1_macro")(labels, wrong) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_nan_probabilities_have_an_infinite_log_loss_not_an_error():
    probs = np.full((4, 3), 1 / 3)
    probs[1] = np.nan
    assert get_metric("log_loss")(LABELS, probs) == math.inf
