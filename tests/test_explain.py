"""Exact TreeSHAP explanations: they match shap's own implementation and add up to the margin."""

from __future__ import annotations

import math
import warnings

import lightgbm as lgb
import numpy as np
import pytest
import shap

from scoring.explain import (
    check_consistency,
    consistency_gap,
    explain_row,
    explain_rows,
    measure_cost,
    raw_margin,
    top_k,
)

NAMES = ["amount", "card_velocity_1h", "card_velocity_24h", "merchant_risk", "hour"]


@pytest.fixture(scope="module")
def data() -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1500, len(NAMES)))
    logit = 1.5 * x[:, 0] + x[:, 1] * x[:, 2] - 2.0
    y = (rng.random(1500) < 1 / (1 + np.exp(-logit))).astype(int)
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values take the trees' default branches
    params = {"objective": "binary", "num_leaves": 7, "verbose": -1, "num_threads": 1, "seed": 7}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=NAMES), num_boost_round=25)
    return booster, x[:300]


def test_matches_shaps_own_tree_shap(data: tuple[lgb.Booster, np.ndarray]) -> None:
    booster, x = data
    explainer = shap.TreeExplainer(booster)
    # For a LightGBM booster shap would just call LightGBM's pred_contrib; "internal" makes it run
    # its own C++ TreeSHAP over its own parse of the trees, so the comparison is independent.
    explainer.model.model_type = "internal"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(explainer.shap_values(x, check_additivity=False))
    base = float(np.ravel(explainer.expected_value)[0])
    ours = explain_rows(booster, x, NAMES)
    assert expected.shape == (len(x), len(NAMES))
    for i, explanation in enumerate(ours):
        by_name = {name: c for name, _, c in explanation.contributions}
        for j, name in enumerate(NAMES):
            assert by_name[name] == pytest.approx(expected[i, j], abs=1e-6)
        assert explanation.base_value == pytest.approx(base, abs=1e-6)


def test_contributions_add_up_to_the_raw_margin(data: tuple[lgb.Booster, np.ndarray]) -> None:
    booster, x = data
    margins = raw_margin(booster, x)
    for explanation, margin in zip(explain_rows(booster, x, NAMES), margins, strict=True):
        contribs = [c for _, _, c in explanation.contributions]
        assert check_consistency(contribs, explanation.base_value, float(margin))
        assert explanation.margin == pytest.approx(float(margin), abs=1e-9)


def test_an_explanation_of_another_row_or_a_nudged_one_is_inconsistent(
        data: tuple[lgb.Booster, np.ndarray]) -> None:
    booster, x = data
    margins = raw_margin(booster, x[:2])
    assert margins[0] != pytest.approx(margins[1], abs=1e-3)
    first = explain_rows(booster, x[:1], NAMES)[0]
    contribs = [c for _, _, c in first.contributions]
    assert not check_consistency(contribs, first.base_value, float(margins[1]))
    nudged = [contribs[0] + 1e-3, *contribs[1:]]
    assert not check_consistency(nudged, first.base_value, float(margins[0]))
    assert not check_consistency([math.nan, *contribs[1:]], first.base_value, float(margins[0]))
    assert consistency_gap(nudged, first.base_value, float(margins[0])) == pytest.approx(1e-3)


def test_values_are_the_rows_and_order_is_by_magnitude(
        data: tuple[lgb.Booster, np.ndarray]) -> None:
    booster, x = data
    explanation = explain_row(booster, list(x[3]), NAMES)
    assert explanation == explain_rows(booster, x[3:4], NAMES)[0]
    seen = {name: value for name, value, _ in explanation.contributions}
    for j, name in enumerate(NAMES):
        assert seen[name] == pytest.approx(x[3, j], nan_ok=True)
    magnitudes = [abs(c) for _, _, c in explanation.contributions]
    assert magnitudes == sorted(magnitudes, reverse=True)
    shuffled = list(reversed(explanation.contributions))
    assert top_k(shuffled, 2) == explanation.top(2)
    assert len(explanation.top(2)) == 2


def test_a_row_of_the_wrong_width_is_refused(data: tuple[lgb.Booster, np.ndarray]) -> None:
    booster, x = data
    with pytest.raises(ValueError, match="columns"):
        explain_rows(booster, x[:, :3], NAMES[:4])


def test_cost_measurement_reports_every_figure(data: tuple[lgb.Booster, np.ndarray]) -> None:
    booster, x = data
    report = measure_cost(booster, x[:50], repeats=5)
    assert report.rows == 50
    for figure in (report.raw_single_us, report.contrib_single_us, report.raw_batch_us,
                   report.contrib_batch_us):
        assert math.isfinite(figure) and figure > 0
