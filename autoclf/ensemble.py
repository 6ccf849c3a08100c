"""Ensembles on out-of-fold probabilities: member selection, soft and hard voting.

Everything here is plain numpy on (images, classes) probability arrays, so each choice
finalize makes (members, weights, vote, TTA) is made and scored on OOF predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoclf.metrics import Metric, get_metric


@dataclass(frozen=True)
class Selection:
    members: tuple[int, ...]  # indices into the candidate list, best first
    weights: tuple[float, ...]  # sum to 1, aligned with members
    history: tuple[float, ...]  # ensemble OOF score after each greedy round


def soft_vote(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of the members' probabilities."""
    stacked = np.stack(probs)
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), stacked, axes=1).astype(np.float32)


def hard_vote(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted share of members voting for each class; ties go to the soft vote's choice.

    The result is a per-class vote share (rows sum to 1), so it can be scored and written like
    probabilities; its argmax is the majority class.
    """
    stacked = np.stack(probs)
    n_classes = stacked.shape[2]
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    votes = np.zeros(stacked.shape[1:], dtype=np.float64)
    for member_probs, member_weight in zip(stacked, w, strict=True):
        votes += member_weight * np.eye(n_classes)[member_probs.argmax(axis=1)]
    # A tiny share of the soft vote decides ties without changing any clear majority.
    votes += 1e-6 * soft_vote(probs, w)
    return (votes / votes.sum(axis=1, keepdims=True)).astype(np.float32)


def vote(
    kind: str, probs: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> np.ndarray:
    if kind == "soft":
        return soft_vote(probs, weights)
    if kind == "hard":
        return hard_vote(probs, weights)
    raise ValueError(f"vote must be 'soft' or 'hard', got vote={kind!r}")


def rank_key(metric: Metric, labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Sort key, higher is better: the metric, then log loss to break its ties (accuracy
    moves in steps of one image; log loss sees every change of confidence)."""
    score = metric(labels, probs)
    oriented = score if metric.direction == "maximize" else -score
    return oriented, -get_metric("log_loss")(labels, probs)


def select_top_k(
    candidates: Sequence[np.ndarray], labels: np.ndarray, *, metric: Metric, k: int
) -> Selection:
    """The first ``k`` candidates, equally weighted. Candidates come best first: finalize
    passes a study's trials in :func:`~autoclf.search.record.ranking` order, the order in which
    the search kept their fold models."""
    members = tuple(range(min(k, len(candidates))))
    score = metric(labels, soft_vote([candidates[i] for i in members]))
    return Selection(members, tuple([1.0 / len(members)] * len(members)), (score,))


def select_greedy(
    candidates: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    metric: Metric,
    max_members: int,
    rounds: int = 25,
) -> Selection:
    """Caruana et al. (2004) ensemble selection with replacement on the soft vote.

    Starts from the best single candidate and, each round, adds the candidate (again, if it
    is already in) that most improves the ensemble; stops when no addition improves it. So a
    weaker but different model earns its place only by making the ensemble better, and the
    result is never worse than the best single candidate.
    """
    if not candidates:
        raise ValueError("no candidates to select from")
    best_single = max(range(len(candidates)), key=lambda i: rank_key(metric, labels, candidates[i]))
    counts = {best_single: 1}
    total = candidates[best_single].astype(np.float64)
    current = rank_key(metric, labels, candidates[best_single])
    history = [metric(labels, candidates[best_single])]
    for _ in range(rounds):
        allowed = range(len(candidates)) if len(counts) < max_members else list(counts)
        n = sum(counts.values())
        trials = {
            i: rank_key(metric, labels, ((total + candidates[i]) / (n + 1)).astype(np.float32))
            for i in allowed
        }
        pick = max(trials, key=trials.get)
        if trials[pick] <= current:
            break
        counts[pick] = counts.get(pick, 0) + 1
        total += candidates[pick]
        current = trials[pick]
        history.append(metric(labels, (total / (n + 1)).astype(np.float32)))
    members = tuple(sorted(counts, key=lambda i: (-counts[i], i)))
    n = sum(counts.values())
    return Selection(members, tuple(counts[i] / n for i in members), tuple(history))
