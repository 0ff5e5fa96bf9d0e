"""The worker's two stages without a broker, driven through the worker's own lane
(streams.worker.local): same features as the offline builder, verdicts that
carry them, labels that reach terminal risk and the online learner only once known (an analyst's
finding too, with the evaluator's feedback), the card's whitelisting in the decision's context,
and the hop between them in one shape (a scoring event decoded once, v1 events still read)."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from agents.fraud.decision import Whitelisting
from agents.fraud.pipeline import DecisionPipeline
from schemas.clock import to_millis, whole_millis
from schemas.codec import HISTORY_DIR, SCHEMA_DIR, Codec, ConfluentCodec, Decoded, make_codec
from scoring import features as F
from scoring import merchant as M
from scoring.online import make_online
from scoring.rules import RuleEngine
from streams.config import Settings
from streams.topics import Topic
from streams.worker.admission import Output, Source
from streams.worker.casework import CaseStage
from streams.worker.local import LocalLane
from streams.worker.stages import (
    CardStage,
    TerminalStage,
    is_hand_over,
    is_watermark,
    watermark_event,
)
from tests.factories import transaction

T0 = datetime(2018, 6, 1, tzinfo=UTC)


@pytest.fixture
def stages() -> tuple[CardStage, TerminalStage]:
    codec = make_codec(None)
    pipeline = DecisionPipeline(RuleEngine.from_file(), None, online=make_online())
    return CardStage(codec), TerminalStage(codec, pipeline)


@pytest.fixture
def local() -> LocalLane:
    """The worker's lane, in memory, deciding with rules and the online learner."""
    return LocalLane(Settings(), DecisionPipeline(RuleEngine.from_file(), None,
                                                  online=make_online()))


def _traffic(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    txs = []
    when = T0
    for i in range(n):
        when += timedelta(minutes=rng.uniform(1, 90))
        txs.append(transaction(i, card=f"tok_{rng.randrange(12):02d}",
                               amount=f"{rng.uniform(5, 400):.2f}", when=whole_millis(when),
                               terminal_id=f"term-{rng.randrange(6)}"))
    return txs


def _run(local: LocalLane, txs: list[dict[str, Any]], fraud_ids: set[str]
         ) -> list[dict[str, Any]]:
    """Transactions in event order through the worker's own lane, each label released at its
    known_at, as the replay does."""
    codec, tx_topic = local.codec, local.topic(Topic.TRANSACTIONS)
    labels_topic = local.topic(Topic.LABELS)
    pending = sorted((tx["event_time"] + timedelta(days=7), tx) for tx in txs)
    verdicts = []
    for tx in txs:
        while pending and pending[0][0] <= tx["event_time"]:
            known_at, labelled = pending.pop(0)
            label = {"transaction_id": labelled["transaction_id"],
                     "card_token": labelled["card_token"],
                     "terminal_id": labelled["terminal_id"],
                     "merchant_id": labelled["merchant_id"],
                     "device_id": labelled["device_id"],
                     "label": "FRAUD" if labelled["transaction_id"] in fraud_ids else "GENUINE",
                     "fraud_scenario": None, "transaction_time": labelled["event_time"],
                     "known_at": known_at, "source": "SIMULATOR"}
            value = codec.encode("label", label, topic=labels_topic)
            assert local.feed(Topic.LABELS, [(label["card_token"].encode(), value)]) == {}
        value = codec.encode("transaction", tx, topic=tx_topic)
        outputs = local.feed(Topic.TRANSACTIONS, [(tx["card_token"].encode(), value)])
        ((_, raw),) = outputs.pop(local.topic(Topic.DECISIONS))
        verdict = codec.decode(raw, topic=local.topic(Topic.DECISIONS), expect="verdict").record
        assert verdict["transaction_id"] == tx["transaction_id"]
        assert verdict["terminal_id"] == tx["terminal_id"]  # what an analyst's label needs
        _check_follow_ups(local, verdict, outputs)
        verdicts.append(verdict)
    return verdicts


def _check_follow_ups(local: LocalLane, verdict: dict[str, Any],
                      outputs: dict[str, list[tuple[bytes | None, bytes]]]) -> None:
    """A declined or reviewed payment tells the customer, in the verdict's plain words; a
    reviewed one opens a case."""
    notifications = outputs.pop(local.topic(Topic.NOTIFICATIONS), [])
    cases = outputs.pop(local.topic(Topic.CASE_OPENINGS), [])
    assert outputs == {}  # nothing else: no dead letter, no stray record
    assert len(cases) == (verdict["decision"] == "REVIEW")
    if verdict["decision"] == "APPROVE":
        assert notifications == []
        return
    ((key, value),) = notifications
    record = local.codec.decode(value, topic=local.topic(Topic.NOTIFICATIONS),
                                expect="notification").record
    assert key == verdict["card_token"].encode()
    assert record["message"] == verdict["customer_message"]
    assert record["kind"] == {"DECLINE": "PAYMENT_DECLINED",
                              "REVIEW": "PAYMENT_UNDER_REVIEW"}[verdict["decision"]]
    assert str(verdict["score"]) not in record["message"]


def _offline(txs: list[dict[str, Any]], fraud_ids: set[str]) -> list[dict[str, float]]:
    """The offline builder's way: the same state functions, labels applied when known."""
    cards: dict[str, Any] = {}
    terminals: dict[str, Any] = {}
    merchants: dict[str, Any] = {}  # merchant and device state, by scoring.merchant's keys
    pending = sorted((tx["event_time"] + timedelta(days=7), tx) for tx in txs)
    rows = []
    for tx in txs:
        t = to_millis(tx["event_time"])
        while pending and pending[0][0] <= tx["event_time"]:
            known_at, labelled = pending.pop(0)
            lt = to_millis(labelled["event_time"])
            fraud = labelled["transaction_id"] in fraud_ids
            terminals[labelled["terminal_id"]] = F.terminal_observe_label(
                terminals.get(labelled["terminal_id"]), labelled["transaction_id"], lt, fraud)
            merchants.update(M.observe_label(merchants, labelled, lt, to_millis(known_at),
                                             fraud))
        cards[tx["card_token"]] = F.card_observe(cards.get(tx["card_token"]),
                                                 tx["transaction_id"], t, float(tx["amount"]),
                                                 tx["country"])
        terminals[tx["terminal_id"]] = F.terminal_observe_tx(terminals.get(tx["terminal_id"]),
                                                             tx["transaction_id"], t)
        merchants.update(M.observe_tx(merchants, tx, t))
        row = F.row_features(cards[tx["card_token"]], terminals[tx["terminal_id"]], t,
                             float(tx["amount"]), tx["country"])
        rows.append({**row, **M.features(merchants, tx, t)})
    return rows


def test_streamed_features_equal_the_offline_builder(local: LocalLane) -> None:
    txs = _traffic(400)
    fraud = {tx["transaction_id"] for tx in txs[::9]}
    verdicts = _run(local, txs, fraud)
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


def test_without_a_model_the_verdict_says_rules_only(local: LocalLane) -> None:
    verdicts = _run(local, _traffic(30), set())
    for v in verdicts:
        assert v["model_version"] == "rules-only-v0"
        assert {"model_unavailable", "rules_only"} <= set(v["fallbacks"])
        assert v["decision"] in ("APPROVE", "REVIEW", "DECLINE")
        assert v["customer_message"]


def test_labels_teach_the_online_learner_only_once_known(local: LocalLane) -> None:
    terminal_stage = local.lane.terminal_stage
    txs = _traffic(300)
    _run(local, txs, {tx["transaction_id"] for tx in txs[::7]})
    last = to_millis(txs[-1]["event_time"])
    learned = terminal_stage.learn.of(0)
    assert learned.labels_learned > 0
    assert learned.online is not None and learned.online.labels_seen == learned.labels_learned
    # Nothing learned ahead of its time: every label still waiting is known after the watermark.
    assert all(known > learned.watermark_ms for known, *_ in learned.waiting)
    assert learned.watermark_ms == last


def _command(stage: CaseStage, kind: str, at: datetime, **fields: Any) -> bytes:
    record = {"command_id": f"{kind}-{at.timestamp()}", "command": kind, "actor": "ana",
              "role": "ANALYST", "reason": "cardholder denies the payment", "case_id": None,
              "expected_version": None, "resolution": None, "card_token": None, "until": None,
              "transaction_id": None, "verdict": None, "requested_at": at} | fields
    return stage.codec.encode("case_command", record, topic=stage.commands)


def test_an_analysts_finding_teaches_terminal_risk_the_learners_and_the_evaluator(
        local: LocalLane) -> None:
    """A REVIEW, its case resolved CONFIRMED_FRAUD by the real case book, and the label it
    makes fed back into the lane: the terminal's risk a week later counts it, and once event
    time passes its known_at the online learner, the evaluator and its feedback have it."""
    codec = local.codec
    tx_topic, decisions = local.topic(Topic.TRANSACTIONS), local.topic(Topic.DECISIONS)

    def decide(tx: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        value = codec.encode("transaction", tx, topic=tx_topic)
        outputs = local.feed(Topic.TRANSACTIONS, [(tx["card_token"].encode(), value)])
        ((_, raw),) = outputs[decisions]
        return codec.decode(raw, topic=decisions, expect="verdict").record, raw

    # Eight payments on one card within the hour: the eighth is reviewed (VEL-1H-REVIEW).
    burst = [decide(transaction(i, card="tok_burst", terminal_id="term-x",
                                when=T0 + timedelta(minutes=i)))
             for i in range(8)]
    reviewed, raw = burst[-1]
    assert [v["decision"] for v, _ in burst] == ["APPROVE"] * 7 + ["REVIEW"]
    cases = CaseStage(codec, "")
    opened = cases.open_case(Output(decisions, reviewed["transaction_id"].encode(), raw), T0)
    case_id = f"case-{reviewed['verdict_id']}"
    resolved_at = T0 + timedelta(days=1)
    outs = [*cases.on_command(opened.value, opened.topic),
            *cases.on_command(_command(cases, "CLAIM", resolved_at, case_id=case_id)),
            *cases.on_command(_command(cases, "RESOLVE", resolved_at, case_id=case_id,
                                       resolution="CONFIRMED_FRAUD"))]
    labels = [(o.key, o.value) for o in outs if o.topic == local.topic(Topic.LABELS)]
    assert len(labels) == 1
    assert local.feed(Topic.LABELS, labels) == {}
    learned = local.lane.terminal_stage.learn.of(0)  # what the partition learned
    assert learned.evaluator.labels_recorded == 0  # not before event time reaches known_at

    later, _ = decide(transaction(100, card="tok_other", terminal_id="term-x",
                                  when=T0 + timedelta(days=8)))
    assert later["features"]["TERMINAL_ID_RISK_7DAY_WINDOW"] == pytest.approx(1 / 8)
    assert later["features"]["TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 8.0
    assert (learned.labels_learned, learned.labels_unmatched) == (1, 0)
    assert learned.online is not None and learned.online.labels_seen == 1
    assert (learned.evaluator.labels_recorded, learned.evaluator.feedback_recorded) == (1, 1)


def test_the_terminal_stage_decides_with_the_cards_whitelisting(
        stages: tuple[CardStage, TerminalStage]) -> None:
    card_stage, terminal_stage = stages
    trusted = Whitelisting("ana", to_millis(T0), to_millis(T0 + timedelta(days=7)))
    terminal_stage.whitelist = {"tok_trusted": trusted}
    contexts = []
    for i, card in enumerate(("tok_trusted", "tok_other")):
        tx = transaction(i, card=card, when=T0 + timedelta(hours=1))
        _, _, row = card_stage.features(None, tx, [])
        hand = card_stage.hand_over(tx, row, [], Source("t", 0, i, None), 0.0)
        _, ready = terminal_stage.prepare({}, terminal_stage.decode(hand.value), 0.0)
        contexts.append(ready.context.whitelist)
    assert contexts == [trusted, None]


def test_amount_features_are_in_euros(stages: tuple[CardStage, TerminalStage]) -> None:
    card_stage, _ = stages
    tx = transaction(1, amount="1000.00", currency="INR")
    _, _, row = card_stage.features(None, tx, [])
    assert row["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == pytest.approx(11.0)


def test_a_shadow_model_is_logged_beside_the_verdict_and_never_decides() -> None:
    import lightgbm as lgb
    import numpy as np

    from agents.fraud.planner import ExperimentSplit, Planner
    from agents.fraud.risk_scorer import BoosterScorer

    names = F.feature_names("gateway")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(names)))
    y = (x[:, 0] > 1.0).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(x, y, feature_name=names), num_boost_round=5)
    pipeline = DecisionPipeline(RuleEngine.from_file(), None,
                                shadow=BoosterScorer(booster, "9.9.9", names),
                                planner=Planner(ExperimentSplit(shadow_share=1.0)))
    verdicts = _run(LocalLane(Settings(), pipeline), _traffic(20), set())
    for v in verdicts:
        assert v["shadow"]["model_version"] == "9.9.9"
        assert 0.0 <= v["shadow"]["score"] <= 1.0
        assert v["model_version"] == "rules-only-v0"  # the shadow never decides


# --- the hop: one shape, decoded once -----------------------------------------------------------


class CountingCodec:
    """The codec, counting decodes by expected schema."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.decodes: dict[str | None, int] = {}

    def encode(self, schema: str, record: Mapping[str, Any], *, topic: str) -> bytes:
        return self.codec.encode(schema, record, topic=topic)

    def decode(self, data: bytes, *, topic: str, expect: str | None = None) -> Decoded:
        self.decodes[expect] = self.decodes.get(expect, 0) + 1
        return self.codec.decode(data, topic=topic, expect=expect)


def test_a_hand_over_is_decoded_once_and_amounts_cross_in_the_guardrails_form() -> None:
    codec = CountingCodec(make_codec(None))
    card_stage = CardStage(codec)
    terminal_stage = TerminalStage(codec, DecisionPipeline(RuleEngine.from_file(), None))
    amounts: Any = []
    when = T0
    for i in range(3):  # near the EUR reporting threshold: the structuring check keeps them
        when += timedelta(minutes=10)
        tx = transaction(i, card="tok_s", amount="9700.00", when=when)
        _, amounts, row = card_stage.features(None, tx, amounts)
        hand = card_stage.hand_over(tx, row, amounts, Source("t", 0, 0, None), 0.0)
    assert amounts == [(to_millis(t), f"tx-{i:08d}", 9700.0, "EUR") for i, t in
                       enumerate(T0 + timedelta(minutes=10 * (k + 1)) for k in range(3))]
    body = terminal_stage.decode(hand.value)
    _, ready = terminal_stage.prepare({}, body, 0.0)
    assert ready.tx == tx and ready.tx["amount"] == Decimal("9700.00")
    assert ready.context.amount_history == amounts  # the tuples the card stage kept
    assert codec.decodes == {"scoring_event": 1}  # no second decode of a nested payload
    (out,) = terminal_stage.decide_all([ready])
    verdict = codec.decode(out.value, topic=out.topic, expect="verdict").record
    assert verdict["decision"] == "REVIEW"  # the third near-threshold amount in a day
    assert any(g["name"] == "aml_structuring" and not g["passed"] for g in verdict["guardrails"])


def test_the_body_is_a_hand_over_a_label_or_a_watermark(
        stages: tuple[CardStage, TerminalStage]) -> None:
    card_stage, terminal_stage = stages
    marks = {"transactions/0": 2**63 - 1, "labels/1": 5}
    value = card_stage.codec.encode("scoring_event", watermark_event(marks), topic="s")
    body = terminal_stage.decode(value)
    assert is_watermark(body) and not is_hand_over(body) and body["watermarks"] == marks
    label = {"transaction_id": "t", "card_token": "tok_1", "terminal_id": "q",
             "label": "FRAUD", "fraud_scenario": None, "transaction_time": T0,
             "known_at": T0 + timedelta(days=8), "source": "ISSUER"}
    out = card_stage.forward_label(label)
    assert out is not None and out.key == b"q"  # no merchant named: by terminal
    body = terminal_stage.decode(out.value)
    assert body == {**label, "merchant_id": None, "device_id": None}
    assert not is_watermark(body) and not is_hand_over(body)
    named = {**label, "merchant_id": "m", "device_id": "d"}
    out = card_stage.forward_label(named)
    assert out is not None and out.key == b"m"  # where its transaction's hand-over went
    assert terminal_stage.decode(out.value) == named


def test_the_nested_transaction_and_label_are_the_repo_schemas() -> None:
    """The scoring event copies Transaction and Label (the codec reads one file per schema):
    a change to either file must be made to the copy too."""
    event = json.loads((SCHEMA_DIR / "scoring_event.avsc").read_text())
    hand_over, label, watermark = event["fields"][0]["type"]
    nested = {f["name"]: f["type"] for f in hand_over["fields"]}["transaction"]
    assert nested == json.loads((SCHEMA_DIR / "transaction.avsc").read_text())
    assert label == json.loads((SCHEMA_DIR / "label.avsc").read_text())
    assert [f["name"] for f in watermark["fields"]] == ["watermarks"]


def _v1(kind: str, payload: bytes, codec: Codec, registry: bool) -> bytes:
    """A scoring event as a v1.2 worker wrote it, in either framing."""
    schema = json.loads((HISTORY_DIR / "scoring_event.v1.2.avsc").read_text())
    event = {"kind": kind, "transaction_id": "t", "terminal_id": "q", "transaction_time": T0,
             "payload": payload, "card_features": {}, "card_vector": [0.5] * len(F.CARD_FEATURES),
             "card_amount_history": [{"t_ms": 1, "transaction_id": "a", "amount": 9.9e3,
                                      "currency": "EUR"}],
             "card_state_stale_s": None, "received_at_ms": 1.5e12, "source_timestamp_ms": None,
             "watermarks": {"labels/0": 7} if kind == "WATERMARK" else {}}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), event)
    if registry:
        assert isinstance(codec, ConfluentCodec)
        from confluent_kafka.schema_registry import Schema

        schema_id = codec.client.register_schema("v1-value", Schema(json.dumps(schema), "AVRO"))
        return b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(schema))
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    return b"\xc3\x01" + fingerprint + body.getvalue()


@pytest.mark.parametrize("registry", [False, True])
def test_hand_overs_a_v1_worker_left_in_the_topic_are_still_decided(registry: bool) -> None:
    """v2.0 moved v1's fields into the body's records, which Avro's resolution cannot follow;
    the terminal stage reads v1 events with their own schema and gives the v2.0 body."""
    codec = make_codec("mock://v1-hand-overs" if registry else None)
    stage = TerminalStage(codec, DecisionPipeline(RuleEngine.from_file(), None))
    tx = transaction(1, when=T0)
    body = stage.decode(_v1("TRANSACTION", codec.encode("transaction", tx, topic="t"),
                            codec, registry))
    assert is_hand_over(body) and body["transaction"] == tx
    assert body["card_vector"] == [0.5] * len(F.CARD_FEATURES)
    assert body["received_at_ms"] == 1.5e12 and body["card_state_stale_s"] is None
    _, ready = stage.prepare({}, body, 0.0)
    assert ready.context.amount_history == [(1, "a", 9.9e3, "EUR")]
    assert stage.decide_all([ready])[0].key == tx["transaction_id"].encode()
    label = {"transaction_id": "t", "card_token": "tok_1", "terminal_id": "q",
             "label": "GENUINE", "fraud_scenario": None, "transaction_time": T0,
             "known_at": T0, "source": "ISSUER"}
    assert stage.decode(_v1("LABEL", codec.encode("label", label, topic="t"),
                            codec, registry)) == {**label, "merchant_id": None, "device_id": None}
    assert stage.decode(_v1("WATERMARK", b"", codec, registry)) == {"watermarks": {"labels/0": 7}}
