"""The online-learner contract (every model in scoring.online must pass all of it), and how the
blend in scoring.blend weighs the online learner against LightGBM and the rules."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoring.blend import BlendConfig, blend, online_weight
from scoring.online import (
    ONLINE_MODELS,
    LogisticLearner,
    OnlineModel,
    StateMismatch,
    make_online,
    restore_online,
)

KINDS = sorted(ONLINE_MODELS)
POSITIVE = {"x": 2.0, "noise": 0.0}
NEGATIVE = {"x": -2.0, "noise": 0.0}


def separable(n: int, seed: int = 3) -> list[tuple[dict[str, float], bool]]:
    """Fraud exactly when x > 0, with an irrelevant noise feature."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = float(rng.normal()) * 2.0
        out.append(({"x": x, "noise": float(rng.normal())}, x > 0))
    return out


def trained(kind: str, n: int = 400) -> OnlineModel:
    model = make_online(kind)
    for features, label in separable(n):
        model.learn_one(features, label)
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_before_any_label_the_answer_is_the_prior(kind: str) -> None:
    model = make_online(kind, prior=0.03)
    assert model.labels_seen == 0
    for features in (POSITIVE, NEGATIVE, {}):
        assert model.predict_one(features) == pytest.approx(0.03)


@pytest.mark.parametrize("kind", KINDS)
def test_learning_separable_data_moves_predictions_the_right_way(kind: str) -> None:
    model = make_online(kind)
    before_pos, before_neg = model.predict_one(POSITIVE), model.predict_one(NEGATIVE)
    for features, label in separable(400):
        model.learn_one(features, label)
    after_pos, after_neg = model.predict_one(POSITIVE), model.predict_one(NEGATIVE)
    assert model.labels_seen == 400
    assert after_pos > before_pos
    assert after_pos - after_neg > 0.5
    assert after_pos - after_neg > before_pos - before_neg
    for p in (after_pos, after_neg):
        assert 0.0 <= p <= 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_preserves_predictions_and_learning(kind: str) -> None:
    model = trained(kind)
    restored = restore_online(model.to_state())
    same_kind = type(model).from_state(model.to_state())  # type: ignore[attr-defined]
    assert type(restored) is type(model)
    assert restored.labels_seen == same_kind.labels_seen == model.labels_seen
    probes = [features for features, _ in separable(50, seed=11)]
    for features in probes:
        assert restored.predict_one(features) == model.predict_one(features)
    # The restored model goes on learning exactly as the original would.
    for features, label in separable(30, seed=12):
        model.learn_one(features, label)
        restored.learn_one(features, label)
    for features in probes:
        assert restored.predict_one(features) == pytest.approx(model.predict_one(features))


@pytest.mark.parametrize("kind", KINDS)
def test_missing_values_do_not_poison_the_model(kind: str) -> None:
    model = trained(kind, 200)
    model.learn_one({"x": math.nan, "noise": math.inf}, True)
    assert model.labels_seen == 201
    for features in (POSITIVE, NEGATIVE, {"x": math.nan}):
        p = model.predict_one(features)
        assert math.isfinite(p) and 0.0 <= p <= 1.0
    assert model.predict_one(POSITIVE) > model.predict_one(NEGATIVE)


MODELS = [trained(kind, 100) for kind in KINDS]


@given(st.dictionaries(st.sampled_from(["x", "noise", "other"]),
                       st.floats(allow_nan=True, allow_infinity=True), max_size=3))
def test_any_input_gives_a_probability(features: dict[str, float]) -> None:
    for model in MODELS:
        p = model.predict_one(features)
        assert math.isfinite(p) and 0.0 <= p <= 1.0



def test_state_of_another_kind_or_river_version_is_refused() -> None:
    other = next(k for k in KINDS if k != LogisticLearner.kind)
    with pytest.raises(StateMismatch, match="not"):
        LogisticLearner.from_state(make_online(other).to_state())
    state = pickle.loads(LogisticLearner().to_state())
    state["river"] = "0.0.1"
    with pytest.raises(StateMismatch, match=r"river 0\.0\.1"):
        restore_online(pickle.dumps(state))
    with pytest.raises(StateMismatch):
        restore_online(pickle.dumps(["not", "a", "state"]))


def test_unknown_kind_and_bad_prior_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown online model"):
        make_online("deep_forest")
    with pytest.raises(ValueError, match="prior"):
        LogisticLearner(prior=1.0)


# -- the blend ------------------------------------------------------------------------------------

CONFIG = BlendConfig(max_online_weight=0.3, min_labels=200, full_labels=5_000)


def test_online_weight_is_zero_until_enough_labels_then_grows_to_the_cap() -> None:
    weights = [online_weight(n, CONFIG) for n in range(0, 8_000, 50)]
    assert online_weight(CONFIG.min_labels - 1, CONFIG) == 0.0
    assert online_weight(CONFIG.min_labels + 100, CONFIG) > 0.0
    assert weights == sorted(weights)
    assert max(weights) == online_weight(CONFIG.full_labels, CONFIG) == CONFIG.max_online_weight


def test_rules_set_a_floor_the_model_can_only_raise() -> None:
    assert blend(0.1, None, 0, [0.6, 0.95], CONFIG).score == 0.95
    assert blend(0.97, None, 0, [0.6], CONFIG).score == 0.97
    assert blend(0.1, None, 0, [], CONFIG).rule_floor == 0.0


def test_without_lightgbm_the_score_is_the_rule_floor_whatever_the_online_learner_says() -> None:
    result = blend(None, 0.99, 10_000, [0.6], CONFIG)
    assert (result.score, result.source, result.online_weight) == (0.6, "rules", 0.0)
    assert result.disagreement is None


def test_a_warm_online_learner_is_mixed_in_by_its_weight() -> None:
    cold = blend(0.2, 0.9, 10, [], CONFIG)
    assert (cold.score, cold.source, cold.disagreement) == (0.2, "model", None)
    warm = blend(0.2, 0.9, 10_000, [], CONFIG)
    w = CONFIG.max_online_weight
    assert warm.score == pytest.approx((1 - w) * 0.2 + w * 0.9)
    assert warm.source == "model+online" and warm.disagreement == pytest.approx(0.7)


@given(st.floats(0, 1), st.none() | st.floats(0, 1), st.integers(0, 10_000),
       st.lists(st.floats(0, 1), max_size=3))
def test_blend_is_a_bounded_deterministic_probability(model: float, online: float | None,
                                                      labels: int, rules: list[float]) -> None:
    result = blend(model, online, labels, rules, CONFIG)
    assert result == blend(model, online, labels, rules, CONFIG)
    assert 0.0 <= result.score <= 1.0
    assert result.score >= max(rules, default=0.0)
    parts = [model] if online is None else [model, online]
    assert result.score >= min(parts) - 1e-12
    assert result.score <= max([*parts, *rules]) + 1e-12


def test_blend_refuses_what_is_not_a_probability() -> None:
    with pytest.raises(ValueError, match="model_probability"):
        blend(math.nan, None, 0, [])
    with pytest.raises(ValueError, match="online_probability"):
        blend(0.5, 1.5, 0, [])
    with pytest.raises(ValueError):
        BlendConfig(min_labels=10, full_labels=10)
