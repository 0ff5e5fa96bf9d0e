"""PSI against a stored baseline, its thresholds, and rolling AUC / AP on labelled feedback."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from scoring.drift import (
    ACT,
    WATCH,
    Baseline,
    RollingMetrics,
    average_precision,
    drift_report,
    psi,
    roc_auc,
    status,
)

RNG_SEED = 21


def normal(n: int, shift: float = 0.0, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=shift, size=n)


def test_baseline_shape_is_edges_plus_one_shares_and_a_missing_share() -> None:
    values = list(normal(2000))
    values[:100] = [math.nan] * 100
    base = Baseline.from_values("amount", values, bins=10)
    assert len(base.proportions) == len(base.edges) + 1 == 10
    assert base.missing == pytest.approx(100 / 2000)
    assert math.fsum([*base.proportions, base.missing]) == pytest.approx(1.0)
    assert list(base.edges) == sorted(set(base.edges))


def test_a_count_feature_with_ties_gets_fewer_bins_and_no_empty_top_bin() -> None:
    values = [0.0] * 700 + [1.0] * 200 + [2.0] * 100
    base = Baseline.from_values("velocity", values)
    assert len(base.edges) < 9
    assert all(p > 0 for p in base.proportions)


def test_psi_of_the_training_sample_itself_is_zero() -> None:
    values = normal(3000)
    assert psi(Baseline.from_values("f", values), values) == pytest.approx(0.0, abs=1e-12)


def test_psi_grows_with_the_shift_and_the_status_reads_it() -> None:
    base = Baseline.from_values("f", normal(20_000))
    same = psi(base, normal(5000, seed=99))
    mild = psi(base, normal(5000, shift=0.4, seed=99))
    large = psi(base, normal(5000, shift=1.0, seed=99))
    assert same < mild < large
    assert status(same) == "stable"
    assert status(mild) == "watch"
    assert status(large) == "act"


def test_status_thresholds_are_inclusive_from_below() -> None:
    assert status(math.nextafter(WATCH, 0)) == "stable"
    assert status(WATCH) == "watch"
    assert status(math.nextafter(ACT, 0)) == "watch"
    assert status(ACT) == "act"
    assert status(0.05, watch=0.01, act=0.04) == "act"


def test_a_feature_going_missing_is_drift() -> None:
    values = normal(4000)
    base = Baseline.from_values("f", values)
    gone = values.copy()
    gone[:1200] = math.nan
    assert psi(base, gone) > ACT


def test_baseline_survives_json_and_refuses_bad_shapes() -> None:
    base = Baseline.from_values("f", normal(500))
    assert Baseline.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    with pytest.raises(ValueError, match="one more"):
        Baseline("f", (0.0, 1.0), (0.5, 0.5))
    with pytest.raises(ValueError, match="increasing"):
        Baseline("f", (1.0, 0.0), (0.2, 0.3, 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        Baseline("f", (0.0,), (0.5, 0.6))


def test_drift_report_covers_names_with_a_baseline_and_a_sample() -> None:
    baselines = {"a": Baseline.from_values("a", normal(5000)),
                 "b": Baseline.from_values("b", normal(5000, seed=5))}
    report = drift_report(baselines, {"a": list(normal(2000, shift=1.5, seed=8)),
                                      "c": [1.0, 2.0]})
    assert set(report) == {"a"}
    assert report["a"].status == "act" and report["a"].n == 2000


scores_and_labels = st.lists(
    st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0]), st.booleans()),
    min_size=2, max_size=60)


@given(scores_and_labels)
def test_auc_and_ap_match_scikit_learn(pairs: list[tuple[float, bool]]) -> None:
    scores = [s for s, _ in pairs]
    labels = [y for _, y in pairs]
    auc, ap = roc_auc(scores, labels), average_precision(scores, labels)
    if all(labels) or not any(labels):
        assert auc is None
    else:
        assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    if not any(labels):
        assert ap is None
    else:
        assert ap == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_rolling_metrics_forget_what_left_the_window() -> None:
    metrics = RollingMetrics(window=100)
    for i in range(100):  # an old regime where the score is exactly wrong
        metrics.add(0.9 if i % 2 else 0.1, i % 2 == 0)
    assert metrics.auc() == pytest.approx(0.0)
    rng = np.random.default_rng(2)
    fresh = [(float(rng.random()), bool(rng.random() < 0.3)) for _ in range(100)]
    for score, label in fresh:
        metrics.add(score, label)
    assert len(metrics) == 100
    assert metrics.positives == sum(y for _, y in fresh)
    assert metrics.auc() == pytest.approx(roc_auc_score([y for _, y in fresh],
                                                        [s for s, _ in fresh]))
    assert metrics.average_precision() == pytest.approx(
        average_precision_score([y for _, y in fresh], [s for s, _ in fresh]))
