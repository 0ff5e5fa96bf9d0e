"""The worker's two stages without a broker: same features as the offline builder, verdicts that
carry them, labels that reach terminal risk and the online learner only once known."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.fraud.pipeline import DecisionPipeline
from schemas.codec import make_codec
from scoring import features as F
from scoring.online import make_online
from scoring.rules import RuleEngine
from streams.worker.admission import Source
from streams.worker.stages import CardStage, TerminalStage
from tests.factories import transaction

T0 = datetime(2018, 6, 1, tzinfo=UTC)


@pytest.fixture
def stages() -> tuple[CardStage, TerminalStage]:
    codec = make_codec(None)
    pipeline = DecisionPipeline(RuleEngine.from_file(), None, online=make_online())
    return CardStage(codec), TerminalStage(codec, pipeline)


def _traffic(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    txs = []
    when = T0
    for i in range(n):
        when += timedelta(minutes=rng.uniform(1, 90))
        txs.append(transaction(i, card=f"tok_{rng.randrange(12):02d}",
                               amount=f"{rng.uniform(5, 400):.2f}", when=when,
                               terminal_id=f"term-{rng.randrange(6)}"))
    return txs


def _run(card_stage: CardStage, terminal_stage: TerminalStage, txs: list[dict[str, Any]],
         fraud_ids: set[str]) -> list[dict[str, Any]]:
    """Transactions in event order, each label released at its known_at, as the replay does."""
    cards: dict[str, dict[str, Any]] = {}
    terminals: dict[str, dict[str, Any]] = {}
    pending = sorted((tx["event_time"] + timedelta(days=7), tx) for tx in txs)
    verdicts = []
    for tx in txs:
        while pending and pending[0][0] <= tx["event_time"]:
            known_at, labelled = pending.pop(0)
            label = {"transaction_id": labelled["transaction_id"],
                     "card_token": labelled["card_token"],
                     "terminal_id": labelled["terminal_id"],
                     "label": "FRAUD" if labelled["transaction_id"] in fraud_ids else "GENUINE",
                     "fraud_scenario": None, "transaction_time": labelled["event_time"],
                     "known_at": known_at, "source": "SIMULATOR"}
            out = card_stage.forward_label(label)
            assert out is not None
            event = terminal_stage.decode(out.value)
            term = event["terminal_id"]
            terminals[term] = terminal_stage.observe_label(terminals.get(term), event)
        stored = cards.get(tx["card_token"], {})
        state, amounts, row = card_stage.features(stored.get("features"), tx,
                                                  stored.get("amounts", []))
        cards[tx["card_token"]] = {"features": state, "amounts": amounts}
        hand = card_stage.hand_over(tx, row, amounts, Source("t", 0, 0, None), 0.0)
        event = terminal_stage.decode(hand.value)
        term = event["terminal_id"]
        terminals[term], out = terminal_stage.decide(terminals.get(term), event, 0.0)
        verdict = terminal_stage.codec.decode(out.value, topic=out.topic,
                                              expect="verdict").record
        _check_notification(terminal_stage, verdict, out)
        verdicts.append(verdict)
    return verdicts


def _check_notification(stage: TerminalStage, verdict: dict[str, Any], out: Any) -> None:
    """A declined or reviewed payment tells the customer, in the verdict's plain words."""
    if verdict["decision"] == "APPROVE":
        assert out.follow_ups == ()
        return
    (note,) = out.follow_ups
    record = stage.codec.decode(note.value, topic=note.topic, expect="notification").record
    assert note.topic.endswith("notifications") and note.key == verdict["card_token"].encode()
    assert record["message"] == verdict["customer_message"]
    assert record["kind"] == {"DECLINE": "PAYMENT_DECLINED",
                              "REVIEW": "PAYMENT_UNDER_REVIEW"}[verdict["decision"]]
    assert str(verdict["score"]) not in record["message"]
    assert out.opens_case == (verdict["decision"] == "REVIEW")


def _offline(txs: list[dict[str, Any]], fraud_ids: set[str]) -> list[dict[str, float]]:
    """The offline builder's way: the same state functions, labels applied when known."""
    cards: dict[str, Any] = {}
    terminals: dict[str, Any] = {}
    pending = sorted((tx["event_time"] + timedelta(days=7), tx) for tx in txs)
    rows = []
    for tx in txs:
        t = int(tx["event_time"].timestamp() * 1000)
        while pending and pending[0][0] <= tx["event_time"]:
            _, labelled = pending.pop(0)
            lt = int(labelled["event_time"].timestamp() * 1000)
            terminals[labelled["terminal_id"]] = F.terminal_observe_label(
                terminals.get(labelled["terminal_id"]), labelled["transaction_id"], lt,
                labelled["transaction_id"] in fraud_ids)
        cards[tx["card_token"]] = F.card_observe(cards.get(tx["card_token"]),
                                                 tx["transaction_id"], t, float(tx["amount"]),
                                                 tx["country"])
        terminals[tx["terminal_id"]] = F.terminal_observe_tx(terminals.get(tx["terminal_id"]),
                                                             tx["transaction_id"], t)
        rows.append(F.row_features(cards[tx["card_token"]], terminals[tx["terminal_id"]], t,
                                   float(tx["amount"]), tx["country"]))
    return rows


def test_streamed_features_equal_the_offline_builder(
        stages: tuple[CardStage, TerminalStage]) -> None:
    txs = _traffic(400)
    fraud = {tx["transaction_id"] for tx in txs[::9]}
    verdicts = _run(*stages, txs, fraud)
    offline = _offline(txs, fraud)
    assert len(verdicts) == len(offline) == len(txs)
    compared = 0
    for verdict, row in zip(verdicts, offline, strict=True):
        for name in F.feature_names("gateway"):
            assert verdict["features"][name] == pytest.approx(row[name], rel=1e-9, abs=1e-12), name
            compared += 1
    assert compared == len(txs) * len(F.feature_names("gateway"))
    # Terminal risk is live: some transactions, a week in, see known frauds on their terminal.
    assert any(v["features"]["TERMINAL_ID_RISK_7DAY_WINDOW"] > 0 for v in verdicts)


def test_without_a_model_the_verdict_says_rules_only(
        stages: tuple[CardStage, TerminalStage]) -> None:
    verdicts = _run(*stages, _traffic(30), set())
    for v in verdicts:
        assert v["model_version"] == "rules-only-v0"
        assert {"model_unavailable", "rules_only"} <= set(v["fallbacks"])
        assert v["decision"] in ("APPROVE", "REVIEW", "DECLINE")
        assert v["customer_message"]


def test_labels_teach_the_online_learner_only_once_known(
        stages: tuple[CardStage, TerminalStage]) -> None:
    card_stage, terminal_stage = stages
    txs = _traffic(300)
    _run(card_stage, terminal_stage, txs, {tx["transaction_id"] for tx in txs[::7]})
    last = int(txs[-1]["event_time"].timestamp() * 1000)
    assert terminal_stage.labels_learned > 0
    # Nothing learned ahead of its time: every label still pending is known after the watermark.
    assert all(known > terminal_stage.watermark_ms for known, _, _ in terminal_stage.pending)
    assert terminal_stage.watermark_ms == last


def test_amount_features_are_in_euros(stages: tuple[CardStage, TerminalStage]) -> None:
    card_stage, _ = stages
    tx = transaction(1, amount="1000.00", currency="INR")
    _, _, row = card_stage.features(None, tx, [])
    assert row["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == pytest.approx(11.0)


def test_a_shadow_model_is_logged_beside_the_verdict_and_never_decides() -> None:
    import lightgbm as lgb
    import numpy as np

    from agents.fraud.pipeline import BoosterScorer
    from agents.fraud.planner import ExperimentSplit, Planner

    names = F.feature_names("gateway")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(names)))
    y = (x[:, 0] > 1.0).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(x, y, feature_name=names), num_boost_round=5)
    codec = make_codec(None)
    pipeline = DecisionPipeline(RuleEngine.from_file(), None,
                                shadow=BoosterScorer(booster, "9.9.9", names),
                                planner=Planner(ExperimentSplit(shadow_share=1.0)))
    verdicts = _run(CardStage(codec), TerminalStage(codec, pipeline), _traffic(20), set())
    for v in verdicts:
        assert v["shadow"]["model_version"] == "9.9.9"
        assert 0.0 <= v["shadow"]["score"] <= 1.0
        assert v["model_version"] == "rules-only-v0"  # the shadow never decides
