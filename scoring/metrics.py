"""The three fraud metrics, computed exactly as the handbook computes them.

Written with numpy rather than imported from scikit-learn so the definitions sit in the
repository where they can be read: AUC ROC with tied scores counted half (scikit-learn's
roc_auc_score), Average Precision as the step-wise sum over score thresholds (scikit-learn's
average_precision_score), and Card Precision@k with the handbook's day loop (its
``card_precision_top_k``): a card detected on one test day is left out of the later days,
because an investigator has already blocked it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

ArrayLike = Sequence[float] | npt.NDArray[np.generic]
Keys = Sequence[Any] | npt.NDArray[Any]  # days or cards: any comparable values


def _as_arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[npt.NDArray[np.float64],
                                                            npt.NDArray[np.float64]]:
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be equal-length vectors")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def auc_roc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Probability that a random fraud outscores a random genuine transaction (ties count 1/2)."""
    y, s = _as_arrays(labels, scores)
    positives = float(y.sum())
    negatives = float(len(y) - positives)
    if positives == 0 or negatives == 0:
        raise ValueError("AUC ROC needs both classes")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    # average rank (1-based) of each run of equal scores
    ranks = np.empty(len(s), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for lo, hi in zip(starts, ends, strict=True):
        ranks[order[lo:hi]] = (lo + 1 + hi) / 2.0
    rank_sum = float(ranks[y == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Sum over distinct score thresholds (high to low) of (recall gain) x (precision there)."""
    y, s = _as_arrays(labels, scores)
    if y.sum() == 0:
        raise ValueError("Average Precision needs at least one fraud")
    order = np.argsort(-s, kind="mergesort")
    y_sorted = y[order]
    s_sorted = s[order]
    last_of_run = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), len(s) - 1]
    true_pos = np.cumsum(y_sorted)[last_of_run]
    predicted = last_of_run + 1.0
    precision = true_pos / predicted
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def card_precision_at_k(days: Keys, cards: Keys, labels: ArrayLike, scores: ArrayLike,
                        k: int = 100) -> tuple[float, list[float]]:
    """Mean over test days of the share of compromised cards among the day's k riskiest cards.

    Per day (in increasing order): drop cards detected on earlier days; take each card's max score
    and max label over the day; rank cards by score (ties by card id); the day's value is the
    number of fraudulent cards among the top k divided by k (k, not the cards available). Those
    fraudulent top-k cards join the detected set. Cards known compromised before the test period
    are the caller's to remove (the handbook does it when it builds the test set; see
    ``scoring.train.handbook_split``). Returns (mean, per-day values).
    """
    if k <= 0:
        raise ValueError("k must be positive")
    d = np.asarray(days)
    c = np.asarray(cards)
    y, s = _as_arrays(labels, scores)
    if d.shape != y.shape or c.shape != y.shape:
        raise ValueError("days, cards, labels and scores must have equal lengths")
    detected: set[object] = set()
    per_day: list[float] = []
    for day in np.unique(d):
        in_day = d == day
        day_cards = c[in_day]
        keep = ~np.isin(day_cards, np.fromiter(detected, dtype=c.dtype, count=len(detected)))
        day_cards, day_y, day_s = day_cards[keep], y[in_day][keep], s[in_day][keep]
        unique_cards, inverse = np.unique(day_cards, return_inverse=True)
        card_score = np.full(len(unique_cards), -np.inf)
        card_label = np.zeros(len(unique_cards))
        np.maximum.at(card_score, inverse, day_s)
        np.maximum.at(card_label, inverse, day_y)
        top = np.argsort(-card_score, kind="mergesort")[:k]
        hits = unique_cards[top][card_label[top] == 1]
        per_day.append(len(hits) / k)
        detected.update(hits.tolist())
    return (float(np.mean(per_day)) if per_day else float("nan")), per_day
