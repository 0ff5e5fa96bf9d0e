"""The decision agents, one by one and chained, including every degraded path.

Where a model is needed it is a tiny LightGBM booster trained here on seeded synthetic data; time is
a fake clock, so timeouts and cool-downs are exact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.fraud.decision import (
    CONSERVATIVE_TIER,
    CUSTOMER_MESSAGES,
    RULES_ONLY_VERSION,
    Confidence,
    ThresholdConfig,
    Thresholds,
    adapt_thresholds,
    assess_confidence,
    decide_rules_only,
    decide_verdict,
)
from agents.fraud.evaluator import SCORE, Evaluator
from agents.fraud.executor import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerConfig,
    CircuitBreaker,
    Executor,
    RetryConfig,
    TransientError,
)
from agents.fraud.guardrail import (
    BLOCK,
    DEFAULT_SANCTIONS,
    REVIEW,
    DisparityConfig,
    DisparityMonitor,
    Guardrail,
    SanctionsList,
    StructuringConfig,
    check_card_data,
    normalize_name,
    protected_in,
    record_amount,
    structuring_check,
)
from agents.fraud.pipeline import (
    BoosterScorer,
    DecisionContext,
    DecisionPipeline,
    Scorer,
    VerdictParts,
)
from agents.fraud.planner import ExperimentSplit, FeatureHealth, ModelHealth, Planner, bucket
from schemas.codec import make_codec
from scoring.drift import Baseline
from scoring.explain import Explanation, check_consistency
from scoring.online import LogisticLearner
from scoring.rules import Rule, RuleEngine, RuleHit
from tests.factories import transaction

VEL_1H, VEL_24H = "customer_transaction_velocity_1h", "customer_transaction_velocity_24h"
NAMES = ("amount", VEL_1H, VEL_24H, "merchant_risk")
WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(WHEN.timestamp() * 1000)
MINUTE_MS = 60_000
FLAGGED = ("REVIEW", "DECLINE")


# -- fixtures -------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 60.0, n)
    v1 = rng.poisson(1.0, n).astype(float)
    v24 = v1 + rng.poisson(4.0, n)
    risk = rng.random(n)
    logit = 0.012 * (amount - 150) + 0.8 * (v1 - 1) + 3.0 * (risk - 0.6)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return np.column_stack([amount, v1, v24, risk]), y


def train(names: tuple[str, ...] = NAMES, seed: int = 5) -> lgb.Booster:
    x, y = synthetic(3000, seed)
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "num_threads": 1,
              "seed": seed, "min_data_in_leaf": 10}
    return lgb.train(params, lgb.Dataset(x, y, feature_name=list(names)), num_boost_round=40)


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train()


@pytest.fixture(scope="module")
def scorer(booster: lgb.Booster) -> BoosterScorer:
    return BoosterScorer(booster, "gbm-test-1")


@pytest.fixture(scope="module")
def pool() -> list[dict[str, float]]:
    x, _ = synthetic(400, seed=77)
    return [dict(zip(NAMES, map(float, row), strict=True)) for row in x]


def find(scorer: BoosterScorer, pool: list[dict[str, float]], lo: float, hi: float,
         **fixed: float) -> dict[str, float]:
    """A pool row, with ``fixed`` values applied, whose model probability is in [lo, hi)."""
    for row in pool:
        features = {**row, **fixed}
        if lo <= scorer.score(features).probability < hi:
            return features
    raise AssertionError(f"no synthetic row scores in [{lo}, {hi}); adjust the generator")


def tx(i: int = 1, **overrides: Any) -> dict[str, Any]:
    return transaction(i, when=WHEN, **overrides)


def context(**overrides: Any) -> DecisionContext:
    return replace(DecisionContext(now_ms=NOW_MS), **overrides)


def pipeline(scorer: Scorer | None, **kwargs: Any) -> DecisionPipeline:
    return DecisionPipeline(RuleEngine.from_file(), scorer, **kwargs)


def names(parts: VerdictParts) -> dict[str, bool]:
    return {g.name: g.passed for g in parts.guardrails}


class Failing:
    """A scorer wrapper that raises (or sleeps on the fake clock) until told to recover."""

    def __init__(self, inner: BoosterScorer, error: Exception | None = None,
                 clock: FakeClock | None = None, delay_s: float = 0.0) -> None:
        self.inner = inner
        self.error = error
        self.clock = clock
        self.delay_s = delay_s
        self.calls = 0

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.inner.feature_names

    def score(self, features: Mapping[str, float], explain: bool = False) -> Any:
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.inner.score(features, explain)

    def explain(self, features: Mapping[str, float]) -> Explanation:
        return self.inner.explain(features)


# -- executor and circuit breaker -----------------------------------------------------------------

def test_breaker_opens_after_n_failures_and_half_opens_after_the_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3, cool_down_s=30.0), clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.advance(29.9)
    assert breaker.state == OPEN
    clock.advance(0.1)
    assert breaker.state == HALF_OPEN
    assert breaker.allow()          # one trial ...
    assert not breaker.allow()      # ... at a time
    breaker.record_failure()        # the trial failed: open for a fresh cool-down
    assert breaker.state == OPEN
    clock.advance(30.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.consecutive_failures == 0


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2), FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == CLOSED


def test_open_circuit_skips_the_model_without_calling_it() -> None:
    clock = FakeClock()
    executor = Executor(breaker=CircuitBreaker(BreakerConfig(2, 5.0), clock), clock=clock,
                        sleep=clock.sleep)
    calls = []

    def broken() -> str:
        calls.append(1)
        raise ValueError("bad model")

    outcomes = [executor.run(broken, lambda: "rules") for _ in range(4)]
    assert [o.fallbacks for o in outcomes] == [("model_error",)] * 2 + [("circuit_open",)] * 2
    assert len(calls) == 2
    assert all(o.result == "rules" and o.used == "fallback" for o in outcomes)
    clock.advance(5.0)
    assert executor.run(lambda: "model", lambda: "rules").result == "model"
    assert executor.breaker.state == CLOSED


def test_an_answer_after_the_budget_is_discarded_for_the_simpler_model() -> None:
    clock = FakeClock()
    executor = Executor(budget_s=0.05, clock=clock, sleep=clock.sleep)

    def slow() -> str:
        clock.advance(0.051)
        return "model"

    out = executor.run(slow, lambda: "rules")
    assert (out.result, out.used, out.fallbacks) == ("rules", "fallback", ("model_timeout",))
    assert out.elapsed_ms >= 51.0
    assert executor.breaker.consecutive_failures == 1

    def quick() -> str:
        clock.advance(0.049)
        return "model"

    assert executor.run(quick, lambda: "rules").result == "model"


def test_transient_errors_are_retried_with_exponential_backoff() -> None:
    clock = FakeClock()
    retry = RetryConfig(attempts=4, base_delay_s=0.001, multiplier=2.0, max_delay_s=1.0)
    executor = Executor(budget_s=1.0, retry=retry, clock=clock, sleep=clock.sleep)
    failures = [TransientError(), ConnectionError()]

    def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "model"

    out = executor.run(flaky, lambda: "rules")
    assert (out.result, out.attempts, out.errors) == ("model", 3,
                                                      ("TransientError", "ConnectionError"))
    assert clock.slept == [retry.delay(1), retry.delay(2)]
    assert clock.slept[1] == pytest.approx(2 * clock.slept[0])
    assert executor.breaker.consecutive_failures == 0


def test_retries_stop_at_the_budget_and_other_errors_are_not_retried() -> None:
    clock = FakeClock()
    retry = RetryConfig(attempts=10, base_delay_s=0.004, multiplier=2.0, max_delay_s=1.0)
    executor = Executor(budget_s=0.02, retry=retry, clock=clock, sleep=clock.sleep)

    def always_transient() -> str:
        raise TransientError()

    out = executor.run(always_transient, lambda: "rules")
    assert out.fallbacks == ("model_transient_error",)
    assert sum(clock.slept) < 0.02 and out.attempts < 10
    calls = []

    def buggy() -> str:
        calls.append(1)
        raise KeyError("x")

    assert executor.run(buggy, lambda: "rules").fallbacks == ("model_error",)
    assert len(calls) == 1


# -- planner --------------------------------------------------------------------------------------

LIVE = FeatureHealth(live=True)


def test_arms_are_a_deterministic_split_by_card() -> None:
    split = ExperimentSplit(challenger_share=0.3, salt="exp-7")
    models = ModelHealth(champion=True, challenger=True)
    cards = [f"tok_{i:05d}" for i in range(3000)]
    first = [Planner(split).plan(c, models, LIVE).arm for c in cards]
    again = [Planner(split).plan(c, models, LIVE).arm for c in cards]
    assert first == again
    share = first.count("CHALLENGER") / len(cards)
    assert 0.26 < share < 0.34
    assert set(first) == {"CHAMPION", "CHALLENGER"}
    resalted = [Planner(replace(split, salt="exp-8")).plan(c, models, LIVE).arm for c in cards]
    assert resalted != first
    for card, arm in zip(cards[:50], first, strict=False):
        assert (arm == "CHALLENGER") == (bucket(card, "exp-7") < 0.3)


def test_no_experiment_means_arm_none_and_a_missing_challenger_falls_back() -> None:
    plan = Planner().plan("tok_1", ModelHealth(champion=True), LIVE)
    assert (plan.arm, plan.use_model, plan.fallbacks, plan.tier) == ("CHAMPION", True, (), "normal")
    split = ExperimentSplit(challenger_share=1.0)
    plan = Planner(split).plan("tok_1", ModelHealth(champion=True, challenger=False), LIVE)
    assert plan.arm == "CHAMPION" and "challenger_unavailable" in plan.fallbacks


def test_no_model_means_rules_only() -> None:
    plan = Planner().plan("tok_1", ModelHealth(champion=False), LIVE)
    assert not plan.use_model and plan.arm == "NONE"
    assert {"model_unavailable", "rules_only"} <= set(plan.fallbacks)


@pytest.mark.parametrize(("health", "source", "tier", "fallback"), [
    (FeatureHealth(live=False, cached_age_s=600.0), "cached", "normal", "cached_features"),
    (FeatureHealth(live=False, cached_age_s=3600.0), "cached", "normal", "cached_features"),
    (FeatureHealth(live=False, cached_age_s=3601.0), "cached", "conservative",
     "cached_features_expired"),
    (FeatureHealth(live=False), "partial", "conservative", "features_unavailable"),
])
def test_feature_store_failures(health: FeatureHealth, source: str, tier: str,
                                fallback: str) -> None:
    plan = Planner().plan("tok_1", ModelHealth(champion=True), health)
    assert (plan.feature_source, plan.tier, plan.features_stale) == (source, tier, True)
    assert fallback in plan.fallbacks
    assert ("conservative_tier" in plan.fallbacks) == (tier == "conservative")


def test_a_reported_error_means_the_conservative_tier() -> None:
    plan = Planner().plan("tok_1", ModelHealth(champion=True), LIVE, error=True)
    assert plan.tier == "conservative" and "upstream_error" in plan.fallbacks


def test_shadow_scores_its_share_only_when_loaded() -> None:
    split = ExperimentSplit(shadow_share=0.5)
    cards = [f"tok_{i}" for i in range(400)]
    loaded = [Planner(split).plan(c, ModelHealth(True, shadow=True), LIVE) for c in cards]
    assert 0.4 < sum(p.shadow for p in loaded) / len(cards) < 0.6
    assert all(p.arm == "CHAMPION" for p in loaded)
    assert not any(Planner(split).plan(c, ModelHealth(True), LIVE).shadow for c in cards)


# -- guardrail ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sanctions() -> SanctionsList:
    return SanctionsList.from_file()


def test_the_sanctions_file_is_fictitious_and_every_entry_matches_itself(
        sanctions: SanctionsList) -> None:
    assert "FICTITIOUS" in DEFAULT_SANCTIONS.read_text()
    assert len(sanctions.entries) >= 5
    for entry, _ in sanctions.entries:
        hit = sanctions.match(entry)
        assert hit is not None and hit.entry == entry


@pytest.mark.parametrize("name", [
    "ORBITAL QUARTZ TRADING LIMITED",
    "Orbital Quartz Tradng Ltd.",
    "Zébulon Marsh Holdings",
    "Holdings, Zebulon Marsh",
    "Kestrel Vantablack Imports (Mumbai branch)",
])
def test_variants_of_a_listed_name_match(sanctions: SanctionsList, name: str) -> None:
    assert sanctions.match(name) is not None


@pytest.mark.parametrize("name", ["Corner Grocer", "Orbital Pizza", "Marsh Hardware", "", "Ltd"])
def test_other_names_do_not_match(sanctions: SanctionsList, name: str) -> None:
    assert sanctions.match(name) is None


def test_normalisation_drops_accents_case_punctuation_and_legal_forms() -> None:
    assert normalize_name("  Zébulon-MARSH   Holdings GmbH ") == "zebulon marsh holdings"


def in_band_history(n: int, currency: str = "EUR", start_ms: int = NOW_MS - 60 * MINUTE_MS
                    ) -> list[tuple[int, str, float, str]]:
    history: list[tuple[int, str, float, str]] = []
    for i in range(n):
        history = record_amount(history, start_ms + i * MINUTE_MS, f"prev-{i}", 9_700.0 + i,
                                currency)
    return history


def test_structuring_counts_near_threshold_amounts_in_the_window() -> None:
    config = StructuringConfig(min_count=3)
    check = structuring_check(in_band_history(2), "now", 9_850.0, "EUR", NOW_MS, config)
    assert not check.passed and check.on_fail == REVIEW and "3 payment(s)" in check.detail
    assert structuring_check(in_band_history(1), "now", 9_850.0, "EUR", NOW_MS, config).passed
    # the same payment replayed is not counted twice
    replay = [*in_band_history(1), (NOW_MS, "now", 9_850.0, "EUR")]
    assert structuring_check(replay, "now", 9_850.0, "EUR", NOW_MS, config).passed
    # outside the window, another currency, or an amount not just under: not counted
    old = in_band_history(2, start_ms=NOW_MS - 25 * 60 * MINUTE_MS)
    assert structuring_check(old, "now", 9_850.0, "EUR", NOW_MS, config).passed
    assert structuring_check(in_band_history(2, "USD"), "now", 9_850.0, "EUR", NOW_MS,
                             config).passed
    assert structuring_check(in_band_history(2), "now", 4_000.0, "EUR", NOW_MS, config).passed


def test_structuring_threshold_is_configurable_and_unknown_currencies_say_so() -> None:
    config = StructuringConfig(thresholds={"EUR": 3_000.0}, min_count=2)
    history = record_amount([], NOW_MS - MINUTE_MS, "a", 2_900.0, "EUR", config)
    assert not structuring_check(history, "b", 2_950.0, "EUR", NOW_MS, config).passed
    unknown = structuring_check(history, "b", 2_950.0, "JPY", NOW_MS, config)
    assert unknown.passed and "not screened" in unknown.detail


def test_amount_state_keeps_only_near_threshold_payments_once_and_within_the_window() -> None:
    config = StructuringConfig()
    history = record_amount([], NOW_MS, "a", 50.0, "EUR", config)
    assert history == []
    history = record_amount(history, NOW_MS, "b", 9_500.0, "EUR", config)
    history = record_amount(history, NOW_MS, "b", 9_500.0, "EUR", config)
    assert [i for _, i, _, _ in history] == ["b"]
    later = NOW_MS + config.window_ms + 1
    history = record_amount(history, later, "c", 9_600.0, "EUR", config)
    assert [i for _, i, _, _ in history] == ["c"]


def test_protected_attributes_match_whole_tokens() -> None:
    features = ["customer_age", "page_views", "genderCode", "amount", "Nationality_match",
                "usage_ratio", "date_of_birth_year"]
    assert protected_in(features, ["age", "gender", "nationality", "date_of_birth"]) == [
        "customer_age", "genderCode", "Nationality_match", "date_of_birth_year"]
    guardrail = Guardrail()
    assert not guardrail.check_model(["amount", "customer_age"]).passed
    assert guardrail.check_model(list(NAMES)).passed
    assert guardrail.allowed_features(["amount", "gender"]) == ["amount"]
    # Reviewed exemptions only: the card's account age passes, the cardholder's age never does.
    assert guardrail.check_model(["amount", "account_age_days"]).passed
    assert not guardrail.check_model(["account_age_days", "cardholder_age"]).passed


def test_decline_disparity_flags_a_segment_declined_far_more_than_the_rest() -> None:
    monitor = DisparityMonitor(DisparityConfig(dimensions=("country",), max_ratio=3.0,
                                               min_count=50, window_ms=60 * MINUTE_MS))
    for i in range(200):
        monitor.record(NOW_MS + i, {"country": "DE"}, declined=i % 50 == 0)   # 2 %
    for i in range(60):
        monitor.record(NOW_MS + i, {"country": "FR"}, declined=i % 3 == 0)    # 33 %
    for i in range(10):
        monitor.record(NOW_MS + i, {"country": "IT"}, declined=True)          # too few
    fr, de, it = (monitor.check({"country": c}) for c in ("FR", "DE", "IT"))
    assert not fr.passed and "country=FR" in fr.detail
    assert de.passed
    assert it.passed and "too few" in it.detail
    # an hour later the old decisions have left the window
    monitor.record(NOW_MS + 61 * MINUTE_MS, {"country": "DE"}, declined=False)
    assert monitor.check({"country": "FR"}).passed


def test_card_numbers_in_verdict_text_are_masked_and_fail_the_check() -> None:
    check, masked = check_card_data(["fine", "seen card 4111 1111 1111 1111 here"])
    assert not check.passed
    assert masked[0] == "fine" and "4111" not in masked[1]
    assert check_card_data(["order 12345"])[0].passed


class RaisingSanctions(SanctionsList):
    def __init__(self) -> None:
        super().__init__(["Somebody Fictional"])

    def match(self, name: str) -> Any:
        raise RuntimeError("list unavailable")


def test_a_guardrail_that_raises_blocks() -> None:
    outcome = Guardrail(sanctions=RaisingSanctions()).screen(tx(), [], NOW_MS, list(NAMES))
    assert outcome.action == BLOCK and outcome.error == "RuntimeError"
    failed = [c for c in outcome.checks if c.name == "guardrail_error"]
    assert failed and not failed[0].passed and "failing closed" in failed[0].detail


# -- decision -------------------------------------------------------------------------------------

BASE = ThresholdConfig()


def test_a_full_review_queue_raises_the_review_threshold_only() -> None:
    empty = adapt_thresholds(BASE, queue_depth=0, queue_capacity=100)
    busy = adapt_thresholds(BASE, queue_depth=85, queue_capacity=100)
    full = adapt_thresholds(BASE, queue_depth=100, queue_capacity=100)
    assert empty.review == BASE.review
    assert BASE.review < busy.review < full.review <= BASE.review_bounds[1]
    assert empty.decline == busy.decline == full.decline == BASE.decline
    assert any("queue" in note for note in full.adjustments)


def test_a_high_false_positive_rate_raises_both_thresholds() -> None:
    calm = adapt_thresholds(BASE, fp_rate=BASE.target_fp_rate)
    noisy = adapt_thresholds(BASE, fp_rate=0.95)
    assert (calm.review, calm.decline) == (BASE.review, BASE.decline)
    assert noisy.review > BASE.review and noisy.decline > BASE.decline
    assert noisy.review - BASE.review <= BASE.fp_max_raise + 1e-12
    assert adapt_thresholds(BASE, fp_rate=None) == calm


def test_the_conservative_tier_lowers_thresholds() -> None:
    low = adapt_thresholds(BASE, tier=CONSERVATIVE_TIER)
    assert low.review < BASE.review and low.decline < BASE.decline


@given(st.sampled_from(["normal", "conservative"]), st.integers(0, 500), st.integers(0, 200),
       st.none() | st.floats(0.0, 1.0))
def test_thresholds_stay_within_bounds(tier: str, depth: int, capacity: int,
                                       fp: float | None) -> None:
    t = adapt_thresholds(BASE, tier, depth, capacity, fp)
    assert BASE.review_bounds[0] <= t.review <= BASE.review_bounds[1]
    assert BASE.decline_bounds[0] <= t.decline <= BASE.decline_bounds[1]
    assert t.decline >= t.review + BASE.min_gap - 1e-12


SURE = Confidence(False, ())
UNSURE = assess_confidence(BASE, disagreement=0.9)
T = Thresholds(0.5, 0.9, ())


def test_low_confidence_escalates_and_declines_only_at_high_risk() -> None:
    assert UNSURE.low and "disagree" in UNSURE.reasons[0]
    assert not assess_confidence(BASE, disagreement=0.1).low
    assert assess_confidence(BASE, features_stale=True).low
    assert decide_verdict(0.93, [], T, SURE).decision == "DECLINE"
    assert decide_verdict(0.93, [], T, UNSURE).decision == "REVIEW"
    assert decide_verdict(BASE.high_risk, [], T, UNSURE).decision == "DECLINE"
    assert decide_verdict(0.3, [], T, SURE).decision == "APPROVE"
    assert decide_verdict(0.3, [], T, UNSURE).decision == "REVIEW"
    assert decide_verdict(0.1, [], T, UNSURE).decision == "APPROVE"


def test_policy_and_guardrails_act_whatever_the_score() -> None:
    decline = RuleHit("R-D", "x", "decline", 0.95)
    review = RuleHit("R-R", "y", "review", 0.6)
    assert decide_verdict(0.0, [decline], T, SURE).decision == "DECLINE"
    assert decide_verdict(0.0, [review], T, SURE).decision == "REVIEW"
    assert decide_verdict(0.0, [], T, SURE, guardrail_action="block").decision == "DECLINE"
    assert decide_verdict(0.0, [], T, SURE, guardrail_action="review").decision == "REVIEW"


def test_customer_messages_carry_no_scores_rules_or_features() -> None:
    record = decide_verdict(0.93, [RuleHit("VEL-1H-DECLINE", "r", "decline", 0.95)], T, SURE)
    assert record.customer_message == CUSTOMER_MESSAGES["DECLINE"]
    for message in CUSTOMER_MESSAGES.values():
        assert not any(ch.isdigit() for ch in message)
        lowered = message.lower()
        for word in ("score", "rule", "velocity", "model", "risk", "fraud", "_"):
            assert word not in lowered


def test_the_rules_only_decision_is_unchanged() -> None:
    decision = decide_rules_only({"customer_transaction_velocity_1h": 9.0},
                                 [RuleHit("VEL-1H-REVIEW", "r", "review", 0.6)])
    assert (decision.decision, decision.score, decision.model_version, decision.fallbacks) == (
        "REVIEW", 0.6, RULES_ONLY_VERSION, ("rules_only",))


# -- evaluator ------------------------------------------------------------------------------------

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


# -- the pipeline ---------------------------------------------------------------------------------

def test_the_scorer_reproduces_lightgbms_probability(booster: lgb.Booster, scorer: BoosterScorer,
                                                     pool: list[dict[str, float]]) -> None:
    rows = np.array([[row[n] for n in NAMES] for row in pool[:50]])
    expected = booster.predict(rows)
    for row, p in zip(pool[:50], expected, strict=True):
        assert scorer.score(row).probability == pytest.approx(float(p), abs=1e-12)
    assert math.isnan(scorer.row({})[0, 0])


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
