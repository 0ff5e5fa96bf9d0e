"""The evaluator agent (agents/fraud/evaluator.py): explanations required for flagged verdicts,
periodic drift against baselines, and the false-positive rate from analysts' feedback."""

from __future__ import annotations

import numpy as np
import pytest

from agents.fraud.evaluator import SCORE, Evaluator
from scoring.drift import Baseline


def test_explanations_are_required_for_flagged_model_verdicts_only() -> None:
    ev = Evaluator()
    assert not ev.check_explanation("REVIEW", True, None, None, 0.3).ok
    assert ev.check_explanation("APPROVE", True, None, None, 0.3).ok
    assert ev.check_explanation("DECLINE", False, None, None, None).ok
    good = ev.check_explanation("DECLINE", True, [0.5, 0.25], -1.0, -0.25)
    assert good.ok and good.consistent
    bad = ev.check_explanation("DECLINE", True, [0.5, 0.25], -1.0, 0.0)
    assert not bad.ok and bad.present and bad.gap == pytest.approx(0.25)


def test_drift_is_computed_periodically_against_baselines() -> None:
    rng = np.random.default_rng(4)
    baselines = {"amount": Baseline.from_values("amount", rng.normal(100, 10, 5000)),
                 "merchant_risk": Baseline.from_values("merchant_risk", rng.random(5000)),
                 SCORE: Baseline.from_values(SCORE, rng.random(5000) * 0.2)}
    ev = Evaluator(baselines, drift_every=500, sample_size=500)
    reports = []
    for _ in range(1000):
        features = {"amount": float(rng.normal(130, 10)), "merchant_risk": float(rng.random())}
        reports.append(ev.observe(float(rng.random()) * 0.2, features))
    due = [i for i, r in enumerate(reports) if r is not None]
    assert due == [499, 999]
    latest = ev.latest_drift
    assert latest is not None
    assert latest["amount"].status == "act"
    assert latest["merchant_risk"].status == "stable"
    assert latest[SCORE].status == "stable"


def test_false_positive_rate_needs_enough_feedback_and_counts_flagged_only() -> None:
    ev = Evaluator(min_feedback=10)
    for i in range(9):
        ev.record_feedback("REVIEW", is_fraud=i < 3)
    assert ev.false_positive_rate is None
    ev.record_feedback("APPROVE", is_fraud=False)  # not a flagged payment: ignored
    assert ev.false_positive_rate is None
    ev.record_feedback("DECLINE", is_fraud=False)
    assert ev.false_positive_rate == pytest.approx(7 / 10)
    assert ev.feedback_recorded == 10  # the worker's rakshit_evaluator_feedback gauge


def test_labels_and_findings_are_counted_beyond_the_windows() -> None:
    ev = Evaluator(metrics_window=3, feedback_window=2)
    for i in range(5):
        ev.record_label(0.1 * i, is_fraud=i % 2 == 0)
        ev.record_feedback("REVIEW", is_fraud=False)
    assert (ev.labels_recorded, ev.metrics().n) == (5, 3)
    assert ev.feedback_recorded == 5
