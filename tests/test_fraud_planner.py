"""The planner agent (agents/fraud/planner.py): the experiment split by card, rules only without a
model, and the feature source and tier when the feature store fails."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agents.fraud.planner import ExperimentSplit, FeatureHealth, ModelHealth, Planner, bucket

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
