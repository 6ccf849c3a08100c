"""Scoring functions and their optimisation direction."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

# sklearn is imported where a score is computed: ``autoclf --help`` needs only the names.


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # "maximize" or "minimize"
    fn: Callable[[np.ndarray, np.ndarray], float]  # (labels, probabilities) → score

    def __call__(self, labels: np.ndarray, probs: np.ndarray) -> float:
        return float(self.fn(labels, probs))

    def better(self, a: float, b: float) -> bool:
        """True when score ``a`` is strictly better than ``b``."""
        return a > b if self.direction == "maximize" else a < b


def _accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return accuracy_score(labels, probs.argmax(axis=1))


def _f1_macro(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    predicted = probs.argmax(axis=1)
    # Over the classes present or predicted, as scikit-learn's default: a test set (or a fold)
    # without some class would otherwise count it as an F1 of 0.
    classes = np.union1d(labels, predicted)
    return f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)


def _log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    if not np.isfinite(probs).all():  # a diverged model's NaN: no probability for any class
        return math.inf
    probs = np.clip(probs, 1e-7, 1.0)
    return log_loss(
        labels, probs / probs.sum(axis=1, keepdims=True), labels=np.arange(probs.shape[1])
    )


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", "maximize", _accuracy),
        Metric("f1_macro", "maximize", _f1_macro),
        Metric("log_loss", "minimize", _log_loss),
    )
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose one of {sorted(METRICS)}") from None


AUTO = "auto"  # accuracy on balanced classes, f1_macro on imbalanced ones
IMBALANCED = 3.0  # largest class / smallest class from which accuracy misleads


def imbalance_ratio(class_counts: Iterable[int]) -> float:
    """Largest class over smallest (an empty class counts as one image)."""
    counts = list(class_counts)
    return max(counts) / max(1, min(counts))


def choose_metric(class_counts: Iterable[int]) -> str:
    """What ``--metric auto`` means for data with these class sizes: accuracy rewards
    predicting the common classes, so imbalanced data is scored by macro F1."""
    return "f1_macro" if imbalance_ratio(class_counts) >= IMBALANCED else "accuracy"
