from __future__ import annotations

import numpy as np
import pytest

from autoclf.ensemble import hard_vote, select_greedy, select_top_k, soft_vote
from autoclf.metrics import get_metric

ACC = get_metric("accuracy")


def _model(labels: np.ndarray, wrong: np.ndarray, confidence: float = 0.8) -> np.ndarray:
    """3-class probabilities: ``confidence`` on the true class, except on ``wrong`` rows, where
    the model leans to another class without conviction (0.45 against 0.35 for the truth)."""
    n = len(labels)
    probs = np.full((n, 3), (1 - confidence) / 2, dtype=np.float32)
    probs[np.arange(n), labels] = confidence
    for i in wrong:
        probs[i] = 0.2
        probs[i, labels[i]] = 0.35
        probs[i, (labels[i] + 1) % 3] = 0.45
    return probs


def test_soft_vote_is_the_weighted_mean():
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert soft_vote([a, b], [3, 1]).tolist() == [[0.75, 0.25]]


def test_hard_vote_takes_the_majority_and_soft_breaks_ties():
    sure_a = np.array([[0.9, 0.1]])
    lean_a = np.array([[0.6, 0.4]])
    sure_b = np.array([[0.05, 0.95]])
    assert hard_vote([lean_a, lean_a, sure_b]).argmax(1).tolist() == [0]  # 2 votes beat confidence
    assert soft_vote([lean_a, lean_a, sure_b]).argmax(1).tolist() == [1]
    assert hard_vote([sure_a, sure_b]).argmax(1).tolist() == [1]  # a tie: the soft vote decides
    assert np.allclose(hard_vote([lean_a, lean_a, sure_b]).sum(1), 1.0)


def test_greedy_lets_a_weaker_but_different_model_in():
    labels = np.arange(100) % 3
    best = _model(labels, wrong=np.arange(0, 20))  # 80% right
    clone = _model(labels, wrong=np.arange(0, 21), confidence=0.7)  # 79%, the same mistakes
    different = _model(labels, wrong=np.arange(60, 85))  # 75%, other mistakes
    selection = select_greedy([best, clone, different], labels, metric=ACC, max_members=3)
    assert selection.members[0] == 0 and 2 in selection.members and 1 not in selection.members
    ensemble = soft_vote(
        [[best, clone, different][i] for i in selection.members], selection.weights
    )
    assert ACC(labels, ensemble) > ACC(labels, best)
    assert selection.history[0] == ACC(labels, best)
    assert list(selection.history) == sorted(selection.history)
    # Plain top-k takes the clone, which adds nothing.
    assert select_top_k([best, clone, different], labels, metric=ACC, k=2).members == (0, 1)
    # It takes the first k in the order given (the study's ranking), not its own re-ranking.
    assert select_top_k([different, clone, best], labels, metric=ACC, k=2).members == (0, 1)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_never_worse_than_the_best_single_candidate(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 200)
    candidates = [rng.dirichlet(np.ones(4), 200).astype(np.float32) for _ in range(6)]
    selection = select_greedy(candidates, labels, metric=ACC, max_members=3)
    ensemble = soft_vote([candidates[i] for i in selection.members], selection.weights)
    assert ACC(labels, ensemble) >= max(ACC(labels, c) for c in candidates)
    assert len(selection.members) <= 3 and sum(selection.weights) == pytest.approx(1.0)


def test_greedy_minimises_log_loss_when_that_is_the_metric():
    labels = np.arange(60) % 3
    a = _model(labels, wrong=np.arange(0, 10), confidence=0.6)
    b = _model(labels, wrong=np.arange(30, 40), confidence=0.6)
    ll = get_metric("log_loss")
    selection = select_greedy([a, b], labels, metric=ll, max_members=2)
    ensemble = soft_vote([[a, b][i] for i in selection.members], selection.weights)
    assert ll(labels, ensemble) < min(ll(labels, a), ll(labels, b))
