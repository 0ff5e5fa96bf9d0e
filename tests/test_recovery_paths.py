"""The founding design's recovery paths, through the worker's own lane (streams.worker.local):
an explanation time budget that gives simplified (flagged) reasons, drift measured against a
historical baseline when the registry's baselines are missing or fail, and verdicts the evaluator
failed on queued for offline evaluation while the verdict still goes out, flagged."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from prometheus_client import REGISTRY

from agents.fraud.evaluator import Evaluator
from agents.fraud.pipeline import DecisionPipeline
from agents.fraud.risk_scorer import BoosterScorer
from scoring import features as F
from scoring.drift import SCORE, Baseline
from scoring.rules import RuleEngine
from streams.config import Settings
from streams.topics import Topic
from streams.worker.local import LocalLane
from tests.test_stages import _run, _traffic


def _scorer() -> BoosterScorer:
    """A model that flags most of the simulated traffic, so nearly every verdict is explained."""
    names = F.feature_names("gateway")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, len(names)))
    y = (x[:, 0] > -1.5).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(x, y, feature_name=names), num_boost_round=8)
    return BoosterScorer(booster, "7.7.7", names)


def _pipeline(**kwargs: Any) -> DecisionPipeline:
    return DecisionPipeline(RuleEngine.from_file(), _scorer(), **kwargs)


def _flagged(verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in verdicts if v["decision"] in ("REVIEW", "DECLINE")]


# --- explanation time budget -----------------------------------------------------------------


def test_within_the_budget_reasons_are_exact_treeshap() -> None:
    verdicts = _flagged(_run(LocalLane(Settings(), _pipeline()), _traffic(40), set()))
    assert len(verdicts) >= 20
    for v in verdicts:
        assert "explanation_simplified" not in v["fallbacks"]
        assert v["reasons"]
        assert "explanation_inconsistent" not in v["fallbacks"]


def test_a_spent_budget_gives_simplified_flagged_reasons() -> None:
    pipeline = _pipeline(explain_budget_ms=1e-6)
    verdicts = _flagged(_run(LocalLane(Settings(), pipeline), _traffic(40), set()))
    assert len(verdicts) >= 20
    # The first explanation is exact (nothing measured yet); every later one would cost more
    # than the budget, so it is the simplified one, flagged, with reasons still present.
    simplified = [v for v in verdicts if "explanation_simplified" in v["fallbacks"]]
    assert len(simplified) >= len(verdicts) - 1
    shares = pipeline._models["CHAMPION"].importance()  # type: ignore[union-attr]
    top = max(shares, key=lambda n: shares[n])
    for v in simplified:
        assert v["reasons"] and v["reasons"][0]["feature"] == top
        assert v["reasons"][0]["value"] == pytest.approx(v["features"][top])
        # not checked against the margin, so not called inconsistent, and decided as scored
        assert "explanation_inconsistent" not in v["fallbacks"]
        assert "explanation_missing" not in v["fallbacks"]


# --- drift detector unavailable: the historical baseline -------------------------------------


def _corrupt(name: str) -> Baseline:
    """A registry baseline as a damaged registration could load it: one share too few, so PSI
    raises on it (the constructor's check is skipped, as a hand-edited file would skip it)."""
    broken = object.__new__(Baseline)
    for attr, value in (("name", name), ("edges", (0.5,)), ("proportions", (1.0,)),
                        ("missing", 0.0)):
        object.__setattr__(broken, attr, value)
    return broken


def test_drift_falls_back_to_the_historical_baseline() -> None:
    evaluator = Evaluator({SCORE: _corrupt(SCORE)}, drift_every=50, sample_size=50)
    rng = np.random.default_rng(1)
    for _ in range(50):
        assert evaluator.observe(float(rng.uniform(0.0, 0.3)), {"a": float(rng.normal())}) \
            is None  # the registry's failed, and the historical one is this sample
    assert evaluator.historical and evaluator.drift_fallbacks == 0
    for _ in range(50):  # the population moves
        report = evaluator.observe(float(rng.uniform(0.6, 1.0)), {"a": float(rng.normal())})
    assert report is not None and evaluator.latest_drift is report
    assert evaluator.drift_source == "historical" and evaluator.drift_fallbacks == 1
    assert report[SCORE].status == "act"


def test_without_registry_baselines_drift_is_still_watched() -> None:
    evaluator = Evaluator(None, drift_every=20, sample_size=20)
    assert evaluator.drift_source == "none"
    for i in range(40):
        evaluator.observe(0.1, {"a": float(i % 7)})
    assert evaluator.drift_source == "historical" and evaluator.latest_drift is not None
    assert set(evaluator.latest_drift) == {SCORE, "a"}


def test_registry_baselines_stay_first_when_they_work() -> None:
    good = Baseline.from_values(SCORE, np.linspace(0.0, 1.0, 100))
    evaluator = Evaluator({SCORE: good}, drift_every=20, sample_size=20)
    for _ in range(40):
        evaluator.observe(0.5, {})
    assert evaluator.drift_source == "registry" and evaluator.drift_fallbacks == 0


def test_the_worker_reports_drift_against_the_historical_baseline() -> None:
    names = F.feature_names("gateway")
    evaluator = Evaluator({SCORE: _corrupt(SCORE), names[0]: _corrupt(names[0])},
                          drift_every=10, sample_size=10)
    pipeline = _pipeline(evaluator=evaluator)
    local = LocalLane(Settings(), pipeline)
    verdicts = _run(local, _traffic(30), set())
    assert all("evaluator_error" not in v["fallbacks"] for v in verdicts)  # no verdict failed
    evaluator = local.lane.terminal_stage.learn.of(0).evaluator  # the partition's, like it
    assert evaluator.drift_source == "historical" and evaluator.drift_fallbacks == 2
    assert REGISTRY.get_sample_value("rakshit_drift_historical") == 1.0
    assert REGISTRY.get_sample_value("rakshit_drift_fallbacks") == 2.0
    assert REGISTRY.get_sample_value("rakshit_drift_psi", {"feature": SCORE}) is not None


# --- evaluation failing: the evaluation queue ------------------------------------------------


class FailingEvaluator(Evaluator):
    """An evaluator whose explanation check breaks (as a bug or a bad tolerance would)."""

    def check_explanation(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("evaluator down")


def _decide(local: LocalLane, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Transactions one batch each through the lane: the verdicts and the evaluation queue."""
    codec = local.codec
    verdicts, queued = [], []
    for tx in _traffic(n):
        value = codec.encode("transaction", tx, topic=local.topic(Topic.TRANSACTIONS))
        outputs = local.feed(Topic.TRANSACTIONS, [(tx["card_token"].encode(), value)])
        ((_, raw),) = outputs[local.topic(Topic.DECISIONS)]
        verdicts.append(codec.decode(raw, topic=local.topic(Topic.DECISIONS),
                                     expect="verdict").record)
        for key, raw in outputs.get(local.topic(Topic.EVALUATION_QUEUE), []):
            assert key == tx["transaction_id"].encode()
            queued.append(codec.decode(raw, topic=local.topic(Topic.EVALUATION_QUEUE),
                                       expect="evaluation_request").record)
    return verdicts, queued


def test_verdicts_the_evaluator_failed_on_go_out_flagged_and_queued() -> None:
    verdicts, queued = _decide(LocalLane(Settings(), _pipeline(evaluator=FailingEvaluator())),
                               20)
    assert len(verdicts) == 20  # every transaction still has its verdict
    assert all("evaluation_failed" in v["fallbacks"] for v in verdicts)
    assert all(v["model_version"] == "7.7.7" for v in verdicts)  # the model still decided
    assert [q["transaction_id"] for q in queued] == [v["transaction_id"] for v in verdicts]
    for q, v in zip(queued, verdicts, strict=True):
        assert q["verdict_id"] == v["verdict_id"] and q["score"] == v["score"]
        assert q["model_version"] == v["model_version"] and q["decision"] == v["decision"]
        assert q["features"] == v["features"] and q["failures"] == ["evaluation_failed"]


def test_nothing_is_queued_while_the_evaluator_works() -> None:
    verdicts, queued = _decide(LocalLane(Settings(), _pipeline()), 20)
    assert len(verdicts) == 20 and queued == []
