"""The decision chain (agents/fraud/pipeline.py): the agents chained, including every degraded path.

Each fallback the chain can take is driven here through ``DecisionPipeline.decide``; the agents
on their own are tested in tests/test_fraud_<agent>.py. Model and clock: tests/fraud_helpers.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import lightgbm as lgb
import pytest

from agents.fraud.decision import (
    CUSTOMER_MESSAGES,
    RULES_ONLY_VERSION,
    ThresholdConfig,
    Whitelisting,
)
from agents.fraud.evaluator import Evaluator
from agents.fraud.executor import CLOSED, OPEN, BreakerConfig, CircuitBreaker, Executor
from agents.fraud.guardrail import Guardrail
from agents.fraud.pipeline import WHITELIST_RULE, DecisionPipeline
from agents.fraud.planner import ExperimentSplit, Planner, bucket
from agents.fraud.risk_scorer import BoosterScorer
from schemas.codec import make_codec
from scoring.drift import Baseline
from scoring.explain import Explanation, check_consistency
from scoring.online import LogisticLearner
from scoring.rules import Rule, RuleEngine, RuleHit
from tests.fraud_helpers import (
    BASE,
    MINUTE_MS,
    NAMES,
    NOW_MS,
    VEL_1H,
    VEL_24H,
    WHEN,
    Failing,
    FakeClock,
    RaisingSanctions,
    context,
    find,
    in_band_history,
    names,
    pipeline,
    train,
    tx,
)

FLAGGED = ("REVIEW", "DECLINE")


def test_happy_path_verdict_is_complete_and_fits_the_schema(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    features = find(scorer, pool, 0.0, 0.1, card_velocity_1h=0.0, card_velocity_24h=1.0)
    parts = pipeline(scorer).decide(tx(), features, context())
    assert parts.decision == "APPROVE"
    assert (parts.model_version, parts.arm, parts.fallbacks) == ("gbm-test-1", "CHAMPION", ())
    assert names(parts) == {"protected_attributes": True, "aml_sanctions": True,
                            "aml_structuring": True, "decline_disparity": True, "card_data": True}
    assert parts.score == pytest.approx(scorer.score(features).probability)
    assert parts.customer_message == CUSTOMER_MESSAGES["APPROVE"]
    record = {
        "verdict_id": "v-1", "transaction_id": "tx-1", "card_token": "tok_1",
        **parts.verdict_fields(), "processing_latency_ms": 1.0, "transaction_time": WHEN,
        "decided_at": WHEN, "is_override": False, "overrides_verdict_id": None,
        "decided_by": "worker",
    }
    codec = make_codec(None)
    decoded = codec.decode(codec.encode("verdict", record, topic="t"), topic="t").record
    assert decoded["guardrails"][0]["name"] == parts.guardrails[0].name


def test_every_flagged_model_verdict_carries_an_exact_explanation(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    pipe = pipeline(scorer)
    seen = {"APPROVE": 0, "REVIEW": 0, "DECLINE": 0}
    for i, features in enumerate(pool[:150]):
        parts = pipe.decide(tx(i), features, context())
        seen[parts.decision] += 1
        assert parts.trace is not None
        if parts.decision in FLAGGED:
            assert 0 < len(parts.reasons) <= pipe.top_k
            assert parts.trace.explanation.consistent
            full = scorer.explain(features)
            assert parts.reasons == full.top(pipe.top_k)
            assert check_consistency([c for _, _, c in full.contributions], full.base_value,
                                     scorer.score(features).margin)
        else:
            assert parts.reasons == () and parts.trace.explain_ms == 0.0
    assert seen["APPROVE"] > 0 and seen["REVIEW"] + seen["DECLINE"] > 0
    eager = pipeline(scorer, explain_approvals=True)
    approved = next(f for f in pool if eager.decide(tx(), f, context()).decision == "APPROVE")
    assert eager.decide(tx(), approved, context()).reasons


class Inconsistent(Failing):
    def explain(self, features: Mapping[str, float]) -> Explanation:
        found = self.inner.explain(features)
        return Explanation(found.contributions, found.base_value + 0.5)


def test_an_inconsistent_explanation_cannot_decline_on_its_own(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    config = ThresholdConfig(review=0.4, decline=0.7, decline_bounds=(0.6, 0.98), high_risk=0.999)
    features = find(scorer, pool, 0.72, 0.99, card_velocity_1h=0.0, card_velocity_24h=1.0)
    assert pipeline(scorer, thresholds=config).decide(tx(), features, context()).decision \
        == "DECLINE"
    parts = pipeline(Inconsistent(scorer), thresholds=config).decide(tx(), features, context())
    assert parts.decision == "REVIEW"
    assert "explanation_inconsistent" in parts.fallbacks


def test_model_unavailable_means_rules_and_the_verdict_says_so() -> None:
    engine = RuleEngine.from_file()
    features = {VEL_1H: 9.0, VEL_24H: 9.0, "amount": 10.0}
    parts = pipeline(None).decide(tx(), features, context())
    assert {"model_unavailable", "rules_only"} <= set(parts.fallbacks)
    assert parts.model_version == RULES_ONLY_VERSION and parts.arm == "NONE"
    assert parts.score == max(h.score for h in engine.evaluate(features))
    assert parts.decision == "REVIEW"
    assert parts.reasons == (("customer_transaction_velocity_1h", 9.0, 0.0),)
    assert "protected_attributes" not in names(parts)


def test_a_model_error_falls_back_to_rules_in_the_conservative_tier(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    parts = pipeline(Failing(scorer, ValueError("corrupt"))).decide(
        tx(), pool[0], context())
    assert {"model_error", "rules_only", "conservative_tier"} <= set(parts.fallbacks)
    assert parts.model_version == RULES_ONLY_VERSION
    assert parts.trace is not None and parts.trace.decision.thresholds.review < BASE.review


def test_a_scoring_timeout_falls_back_to_the_simpler_model(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    clock = FakeClock()
    slow = Failing(scorer, clock=clock, delay_s=0.5)
    pipe = pipeline(slow, make_executor=lambda: Executor(budget_s=0.02, clock=clock,
                                                         sleep=clock.sleep))
    features = {**pool[0], "customer_transaction_velocity_1h": 25.0}
    parts = pipe.decide(tx(), features, context())
    assert slow.calls == 1
    assert {"model_timeout", "rules_only"} <= set(parts.fallbacks)
    assert parts.model_version == RULES_ONLY_VERSION
    assert parts.decision == "DECLINE"  # the velocity rule still declines card testing


def test_the_circuit_opens_after_n_failures_and_half_opens_after_the_cool_down(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    clock = FakeClock()
    broken = Failing(scorer, RuntimeError("down"))
    pipe = pipeline(broken, make_executor=lambda: Executor(
        breaker=CircuitBreaker(BreakerConfig(failure_threshold=3, cool_down_s=10.0), clock),
        clock=clock, sleep=clock.sleep))
    for _ in range(3):
        assert "model_error" in pipe.decide(tx(), pool[0], context()).fallbacks
    assert broken.calls == 3
    skipped = pipe.decide(tx(), pool[0], context())
    assert "circuit_open" in skipped.fallbacks and broken.calls == 3
    clock.advance(10.0)
    assert "model_error" in pipe.decide(tx(), pool[0], context()).fallbacks  # the trial
    assert broken.calls == 4 and pipe.executor("CHAMPION").breaker.state == OPEN
    clock.advance(10.0)
    broken.error = None
    healed = pipe.decide(tx(), pool[0], context())
    assert healed.model_version == "gbm-test-1" and not healed.fallbacks
    assert pipe.executor("CHAMPION").breaker.state == CLOSED


def test_feature_store_down_uses_cached_features_up_to_an_hour(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    cached = pool[3]
    pipe = pipeline(scorer)
    fresh = pipe.decide(tx(), None, context(feature_store_ok=False, cached_features=cached,
                                            cached_at_ms=NOW_MS - 10 * MINUTE_MS))
    assert "cached_features" in fresh.fallbacks and "conservative_tier" not in fresh.fallbacks
    assert fresh.trace is not None and fresh.trace.plan.features_stale
    assert fresh.trace.blend.model_probability == pytest.approx(scorer.score(cached).probability)
    assert fresh.trace.decision.confidence.low
    old = pipe.decide(tx(), None, context(feature_store_ok=False, cached_features=cached,
                                          cached_at_ms=NOW_MS - 61 * MINUTE_MS))
    assert {"cached_features_expired", "conservative_tier"} <= set(old.fallbacks)
    assert old.trace is not None and old.trace.decision.thresholds.review < BASE.review
    none = pipe.decide(tx(), {"amount": 20.0}, context(feature_store_ok=False))
    assert {"features_unavailable", "conservative_tier"} <= set(none.fallbacks)


def test_a_failing_guardrail_blocks_the_payment(scorer: BoosterScorer,
                                                pool: list[dict[str, float]]) -> None:
    features = find(scorer, pool, 0.0, 0.1, card_velocity_1h=0.0, card_velocity_24h=1.0)
    pipe = pipeline(scorer, guardrail=Guardrail(sanctions=RaisingSanctions()))
    parts = pipe.decide(tx(), features, context())
    assert parts.decision == "DECLINE" and "guardrail_error" in parts.fallbacks
    assert names(parts)["guardrail_error"] is False
    assert parts.customer_message == CUSTOMER_MESSAGES["DECLINE"]


def test_aml_hits_block_or_send_to_review(scorer: BoosterScorer,
                                          pool: list[dict[str, float]]) -> None:
    features = find(scorer, pool, 0.0, 0.1, card_velocity_1h=0.0, card_velocity_24h=1.0)
    pipe = pipeline(scorer)
    sanctioned = pipe.decide(tx(merchant_name="Nimbus Cobalt Exchange, L.L.C."), features,
                             context())
    assert sanctioned.decision == "DECLINE" and names(sanctioned)["aml_sanctions"] is False
    structured = pipe.decide(tx(amount="9850.00"), features,
                             context(amount_history=in_band_history(2)))
    assert structured.decision == "REVIEW" and names(structured)["aml_structuring"] is False


QUIET = {VEL_1H: 1.0, VEL_24H: 2.0}  # no velocity rule fires
TRUSTED = Whitelisting("ana", NOW_MS - 60 * MINUTE_MS, NOW_MS + 60 * MINUTE_MS)


def test_a_whitelisted_card_is_approved_where_only_the_model_asked_for_review(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    features = find(scorer, pool, 0.55, 0.85, **QUIET)
    pipe = pipeline(scorer)
    assert pipe.decide(tx(), features, context()).decision == "REVIEW"
    parts = pipe.decide(tx(), features, context(whitelist=TRUSTED))
    assert parts.decision == "APPROVE" and parts.customer_message == CUSTOMER_MESSAGES["APPROVE"]
    assert parts.score == pytest.approx(scorer.score(features).probability)  # the score stands
    fired = parts.verdict_fields()["rules_fired"]
    assert fired == [{"rule_id": WHITELIST_RULE, "reason": "card whitelisted by ana until "
                      "2026-03-01T13:00:00+00:00: the model's review is waived"}]
    # Not for a payment made once it expired, nor for one made before the analyst decided.
    expired = Whitelisting("ana", NOW_MS - 120 * MINUTE_MS, NOW_MS)
    later = Whitelisting("ana", NOW_MS + MINUTE_MS, NOW_MS + 120 * MINUTE_MS)
    for window in (expired, later):
        parts = pipe.decide(tx(), features, context(whitelist=window))
        assert parts.decision == "REVIEW" and parts.rules_fired == ()


def test_a_whitelisted_card_still_meets_the_rules_and_the_guardrails(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    features = find(scorer, pool, 0.55, 0.85, **QUIET)
    pipe = pipeline(scorer)
    trusted = context(whitelist=TRUSTED)
    sanctioned = pipe.decide(tx(merchant_name="Nimbus Cobalt Exchange, L.L.C."), features,
                             trusted)
    assert sanctioned.decision == "DECLINE" and names(sanctioned)["aml_sanctions"] is False
    structured = pipe.decide(tx(amount="9850.00"), features,
                             context(amount_history=in_band_history(2), whitelist=TRUSTED))
    assert structured.decision == "REVIEW" and names(structured)["aml_structuring"] is False
    reviewed = pipe.decide(tx(), {**features, VEL_1H: 9.0}, trusted)
    declined = pipe.decide(tx(), {**features, VEL_1H: 25.0}, trusted)
    assert (reviewed.decision, declined.decision) == ("REVIEW", "DECLINE")
    strict = ThresholdConfig(review=0.4, decline=0.7, decline_bounds=(0.6, 0.98))
    risky = find(scorer, pool, 0.72, 0.99, **QUIET)
    assert pipeline(scorer, thresholds=strict).decide(tx(), risky, trusted).decision == "DECLINE"
    for parts in (sanctioned, structured, reviewed, declined):
        assert WHITELIST_RULE not in {h.rule_id for h in parts.rules_fired}


def test_a_model_using_a_protected_attribute_is_excluded(pool: list[dict[str, float]]) -> None:
    biased_names = ("amount", VEL_1H, VEL_24H, "customer_age")
    biased = BoosterScorer(train(biased_names), "gbm-biased")
    parts = pipeline(biased).decide(tx(), {**pool[0], "customer_age": 30.0}, context())
    assert {"model_excluded", "model_unavailable", "rules_only"} <= set(parts.fallbacks)
    assert parts.model_version == RULES_ONLY_VERSION
    failed = [g for g in parts.guardrails if g.name == "protected_attributes"]
    assert failed and not failed[0].passed and "customer_age" in failed[0].detail


def test_a_high_false_positive_rate_turns_marginal_reviews_into_approvals(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    features = find(scorer, pool, BASE.review, BASE.review + 0.05, card_velocity_1h=0.0,
                    card_velocity_24h=1.0)
    pipe = pipeline(scorer)
    assert pipe.decide(tx(), features, context()).decision == "REVIEW"
    for _ in range(pipe.evaluator.min_feedback):
        pipe.record_feedback("REVIEW", is_fraud=False)
    after = pipe.decide(tx(), features, context())
    assert after.decision == "APPROVE"
    assert after.trace is not None and after.trace.decision.thresholds.review > BASE.review


def test_a_full_review_queue_means_fewer_reviews_and_the_same_declines(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    def decisions(depth: int) -> list[str]:
        pipe = pipeline(scorer)
        ctx = context(review_queue_depth=depth, review_queue_capacity=100)
        return [pipe.decide(tx(i), f, ctx).decision for i, f in enumerate(pool[:200])]

    idle, full = decisions(0), decisions(100)
    assert full.count("REVIEW") < idle.count("REVIEW")
    assert full.count("DECLINE") == idle.count("DECLINE")


class ConstantOnline:
    """An online learner that has seen plenty and always says the same."""

    kind = "constant"

    def __init__(self, p: float) -> None:
        self.p = p
        self.learned: list[bool] = []

    @property
    def labels_seen(self) -> int:
        return 10_000 + len(self.learned)

    def learn_one(self, features: Mapping[str, float], label: bool) -> None:
        self.learned.append(label)

    def predict_one(self, features: Mapping[str, float]) -> float:
        return self.p

    def to_state(self) -> bytes:
        return b""


def test_strong_disagreement_with_the_online_learner_escalates_to_review(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    features = find(scorer, pool, 0.0, 0.1, card_velocity_1h=0.0, card_velocity_24h=1.0)
    assert pipeline(scorer).decide(tx(), features, context()).decision == "APPROVE"
    parts = pipeline(scorer, online=ConstantOnline(0.99)).decide(tx(), features, context())
    assert parts.trace is not None
    assert parts.trace.blend.disagreement is not None and parts.trace.blend.disagreement > 0.85
    assert parts.decision == "REVIEW"
    assert parts.model_version == "gbm-test-1+online"
    assert any("disagree" in why for why in parts.trace.decision.why)


def test_labels_teach_the_online_learner_without_protected_attributes(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    learner = LogisticLearner()
    pipe = pipeline(scorer, online=learner)
    for features in pool[:20]:
        pipe.record_label({**features, "gender": 1.0}, 0.3, features["merchant_risk"] > 0.5)
    assert learner.labels_seen == 20 and pipe.evaluator.metrics().n == 20
    state = learner.to_state()
    assert b"gender" not in state and b"merchant_risk" in state


def test_challenger_and_shadow_arms(booster: lgb.Booster, scorer: BoosterScorer,
                                    pool: list[dict[str, float]]) -> None:
    split = ExperimentSplit(challenger_share=0.5, shadow_share=1.0, salt="s")
    challenger = BoosterScorer(booster, "gbm-challenger")
    shadow = BoosterScorer(booster, "gbm-shadow")
    pipe = pipeline(scorer, challenger=challenger, shadow=shadow, planner=Planner(split))
    plain = pipeline(scorer)
    arms = set()
    for i in range(30):
        card = f"tok_{i}"
        parts = pipe.decide(tx(i, card=card), pool[i], context())
        want = "CHALLENGER" if bucket(card, "s") < 0.5 else "CHAMPION"
        arms.add(parts.arm)
        assert parts.arm == want
        assert parts.model_version == ("gbm-challenger" if want == "CHALLENGER" else "gbm-test-1")
        assert parts.shadow is not None and parts.shadow.model_version == "gbm-shadow"
        assert parts.shadow.probability == pytest.approx(shadow.score(pool[i]).probability)
        assert parts.decision == plain.decide(tx(i, card=card), pool[i], context()).decision
    assert arms == {"CHAMPION", "CHALLENGER"}


def test_no_card_number_leaves_in_a_verdict(scorer: BoosterScorer,
                                            pool: list[dict[str, float]]) -> None:
    leaky = RuleEngine([Rule("LEAKY", "customer_transaction_velocity_1h", ">=", 0.0, "review", 0.5,
                             "copied from a note: card 4111 1111 1111 1111")])
    parts = DecisionPipeline(leaky, scorer).decide(tx(), pool[0], context())
    assert names(parts)["card_data"] is False
    assert "4111 1111" not in json.dumps(parts.verdict_fields())
    assert parts.rules_fired[0].rule_id == "LEAKY"


class BrokenRules(RuleEngine):
    def evaluate(self, features: Mapping[str, float]) -> list[RuleHit]:
        raise RuntimeError("rules file half-written")


@pytest.mark.parametrize(("merchant", "expected"), [
    ("Corner Grocer", "REVIEW"), ("Orbital Quartz Trading Ltd", "DECLINE")])
def test_a_pipeline_bug_leaves_the_guardrails_in_charge(scorer: BoosterScorer,
                                                        pool: list[dict[str, float]],
                                                        merchant: str, expected: str) -> None:
    parts = DecisionPipeline(BrokenRules([]), scorer).decide(tx(merchant_name=merchant),
                                                              pool[0], context())
    assert parts.decision == expected and "pipeline_error" in parts.fallbacks
    assert names(parts)["pipeline"] is False


def test_decide_is_deterministic(scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    make: Callable[[], DecisionPipeline] = lambda: pipeline(scorer)  # noqa: E731
    first = [make().decide(tx(i), f, context()) for i, f in enumerate(pool[:20])]
    again = [make().decide(tx(i), f, context()) for i, f in enumerate(pool[:20])]
    assert first == again


class RaisingModelCheck(Guardrail):
    def check_model(self, feature_names: Any) -> Any:
        raise RuntimeError("attribute list unreadable")


def test_a_failing_model_guardrail_also_blocks(scorer: BoosterScorer,
                                               pool: list[dict[str, float]]) -> None:
    parts = pipeline(scorer, guardrail=RaisingModelCheck()).decide(tx(), pool[0], context())
    assert parts.decision == "DECLINE" and "guardrail_error" in parts.fallbacks
    assert names(parts)["guardrail_error"] is False


def test_the_pipeline_feeds_drift_and_disparity(scorer: BoosterScorer,
                                                pool: list[dict[str, float]]) -> None:
    baselines = {n: Baseline.from_values(n, [f[n] for f in pool]) for n in NAMES}
    pipe = pipeline(scorer, evaluator=Evaluator(baselines, drift_every=50))
    for i, features in enumerate(pool[:50]):
        pipe.decide(tx(i), {**features, "amount": features["amount"] * 5}, context())
    drift = pipe.evaluator.latest_drift
    assert drift is not None and set(drift) == set(NAMES)
    assert drift["amount"].status == "act" and drift["merchant_risk"].status != "act"
    assert len(pipe.guardrail.disparity) == 50


def test_each_verdict_records_the_thresholds_a_filling_queue_and_false_positives_moved(
        scorer: BoosterScorer, pool: list[dict[str, float]]) -> None:
    """The context's queue load and the analysts' findings reach the thresholds the decision
    compares the score with, and the verdict says which ones it used."""
    features = find(scorer, pool, 0.0, 0.1, card_velocity_1h=0.0, card_velocity_24h=1.0)
    pipe = pipeline(scorer)
    calm = pipe.decide(tx(), features, context(review_queue_capacity=10)).verdict_fields()
    assert calm["thresholds"] == {"review": BASE.review, "decline": BASE.decline,
                                  "tier": "normal", "adjustments": []}
    full = pipe.decide(tx(), features, context(review_queue_depth=12,
                                               review_queue_capacity=10)).verdict_fields()
    assert full["thresholds"]["review"] == pytest.approx(BASE.review + BASE.queue_max_raise)
    assert full["thresholds"]["decline"] == BASE.decline
    assert "review queue 120% full" in full["thresholds"]["adjustments"][0]
    for _ in range(pipe.evaluator.min_feedback):  # analysts find every flagged payment genuine
        pipe.record_feedback("REVIEW", is_fraud=False)
    noisy = pipe.decide(tx(), features, context(review_queue_capacity=10)).verdict_fields()
    assert noisy["thresholds"]["review"] == pytest.approx(BASE.review + BASE.fp_max_raise)
    assert noisy["thresholds"]["decline"] == pytest.approx(
        min(BASE.decline + BASE.fp_max_raise, BASE.decline_bounds[1]))
    codec = make_codec(None)
    record = {"verdict_id": "v-1", "transaction_id": "tx-1", "card_token": "tok_1", **noisy,
              "processing_latency_ms": 1.0, "transaction_time": WHEN, "decided_at": WHEN,
              "is_override": False, "overrides_verdict_id": None, "decided_by": "worker"}
    decoded = codec.decode(codec.encode("verdict", record, topic="t"), topic="t").record
    assert decoded["thresholds"] == noisy["thresholds"]


def test_a_degraded_decision_records_the_conservative_tier(scorer: BoosterScorer) -> None:
    parts = pipeline(scorer).decide(tx(), None, context(feature_store_ok=False))
    used = parts.verdict_fields()["thresholds"]
    assert used["tier"] == "conservative"
    assert used["review"] == pytest.approx(BASE.review - BASE.conservative_shift)
