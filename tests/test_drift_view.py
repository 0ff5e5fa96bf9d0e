"""Drift where people see it: the API's read model compares the features the verdicts logged with
the scoring model's training distributions (scoring.registry.drift_baselines)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from scoring.drift import SCORE
from scoring.registry import distribution, drift_baselines
from streams.api.readmodel import ReadModel
from tests.test_codec import RECORDS


def verdict(i: int, amount: float, score: float) -> dict[str, Any]:
    v: dict[str, Any] = RECORDS["verdict"]()
    v.update(verdict_id=f"v-{i}", transaction_id=f"tx-{i}", model_version="2.0.0",
             is_override=False, score=score, features={"TX_AMOUNT": amount, "TX_NIGHT": 0.0})
    return v


def test_a_shifted_feature_is_flagged_and_a_stable_one_is_not() -> None:
    rng = np.random.default_rng(3)
    meta = {"feature_baselines": {"TX_AMOUNT": distribution(rng.lognormal(3.0, 0.5, 5000)),
                                  "TX_NIGHT": distribution(np.zeros(5000))},
            "score_baseline": distribution(rng.uniform(0, 1, 5000))}
    baselines = drift_baselines(meta)
    assert set(baselines) == {"TX_AMOUNT", "TX_NIGHT", SCORE}
    model = ReadModel(baselines=lambda version: baselines if version == "2.0.0" else None)
    r = random.Random(4)
    for i in range(1500):  # amounts three times what the model was trained on
        model.apply("verdict", verdict(i, 3 * r.lognormvariate(3.0, 0.5), r.random()))
    report = model.drift()
    assert report is not None and report["model_version"] == "2.0.0"
    by_name = {f["name"]: f for f in report["features"]}
    assert by_name["TX_AMOUNT"]["status"] == "act" and by_name["TX_AMOUNT"]["psi"] > 0.25
    assert by_name["TX_NIGHT"]["status"] == "stable"
    assert by_name[SCORE]["status"] == "stable"
    assert report["features"][0]["name"] == "TX_AMOUNT"  # worst first
    assert model.models()["drift"] == report
