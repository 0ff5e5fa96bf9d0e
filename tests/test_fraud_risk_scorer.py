"""The risk scorer (agents/fraud/risk_scorer.py): BoosterScorer gives LightGBM's own probability.

The booster is the tiny seeded one of tests/fraud_helpers.py (fixtures in tests/conftest.py).
"""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np
import pytest

from agents.fraud.risk_scorer import BoosterScorer
from tests.fraud_helpers import NAMES


def test_the_scorer_reproduces_lightgbms_probability(booster: lgb.Booster, scorer: BoosterScorer,
                                                     pool: list[dict[str, float]]) -> None:
    rows = np.array([[row[n] for n in NAMES] for row in pool[:50]])
    expected = booster.predict(rows)
    for row, p in zip(pool[:50], expected, strict=True):
        assert scorer.score(row).probability == pytest.approx(float(p), abs=1e-12)
    assert math.isnan(scorer.row({})[0, 0])
