"""The three metrics on examples small enough to compute by hand, and against scikit-learn's
definitions (which the handbook used) on random data."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.metrics import auc_roc, average_precision, card_precision_at_k


def test_auc_counts_pairs_and_ties_count_half() -> None:
    # pairs (fraud, genuine): (0.35, 0.1) won, (0.35, 0.4) lost, (0.8, *) both won -> 3 of 4
    assert auc_roc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc_roc([0, 1], [0.5, 0.5]) == 0.5
    assert auc_roc([1, 0, 0], [0.9, 0.9, 0.1]) == 0.75  # one tie (1/2) and one win, of 2 pairs
    with pytest.raises(ValueError):
        auc_roc([1, 1], [0.2, 0.3])


def test_average_precision_steps_through_thresholds() -> None:
    # thresholds 0.9 (P=1, R=1/2), 0.8 (P=1/2, R=1/2), 0.7 (P=2/3, R=1): 1/2*1 + 1/2*2/3
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    # tied scores form one threshold: both rows at 0.5 enter together (P=1/2, R=1)
    assert average_precision([1, 0], [0.5, 0.5]) == 0.5
    assert average_precision([0, 1, 1], [0.1, 0.9, 0.8]) == 1.0


def test_metrics_agree_with_scikit_learn() -> None:
    import sklearn.metrics as sklearn_metrics  # installed with river and shap (extra ml)
    rng = np.random.default_rng(7)
    for _ in range(20):
        y = rng.integers(0, 2, 300)
        s = np.round(rng.random(300), 2)  # rounding makes plenty of ties
        assert auc_roc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(
            sklearn_metrics.average_precision_score(y, s), abs=1e-12)


def test_card_precision_takes_each_cards_max_and_drops_detected_cards() -> None:
    days = [1, 1, 1, 1, 2, 2, 2]
    cards = ["A", "A", "B", "C", "A", "C", "D"]
    labels = [0, 1, 0, 1, 1, 1, 0]
    scores = [0.95, 0.2, 0.8, 0.1, 0.99, 0.7, 0.6]
    mean, per_day = card_precision_at_k(days, cards, labels, scores, k=2)
    # day 1: A (max score 0.95, max label 1) and B are the top 2 -> 1/2; A is detected.
    # day 2: A is gone, so C and D are the top 2 -> 1/2 (without the exclusion it would be 2/2)
    assert per_day == [0.5, 0.5]
    assert mean == 0.5


def test_card_precision_divides_by_k_even_when_fewer_cards() -> None:
    mean, per_day = card_precision_at_k([0, 0], ["A", "B"], [1, 1], [0.3, 0.2], k=100)
    assert per_day == [0.02]
    assert mean == 0.02


def test_undetected_fraud_cards_stay_in_later_days() -> None:
    # C is fraudulent on day 1 but outside the top 1, so it is not excluded on day 2
    mean, per_day = card_precision_at_k([1, 1, 2], ["B", "C", "C"], [0, 1, 1], [0.9, 0.1, 0.5],
                                        k=1)
    assert per_day == [0.0, 1.0]
    assert mean == 0.5
