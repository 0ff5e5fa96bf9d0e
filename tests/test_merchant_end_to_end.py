"""Merchant and device features through the real broker: fraud labels, once known, reach a
later payment at their merchant (whichever terminal and card), and a handbook-shaped payment
has neither feature."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.clock import whole_millis
from schemas.codec import make_codec
from streams.admin import ensure_topics
from streams.config import Settings
from streams.topics import Topic
from tests.factories import transaction
from tests.kafka_helpers import WorkerProcess, name, produce, read_all

pytestmark = pytest.mark.kafka


def _verdicts(settings: Settings, until: int) -> dict[str, dict[str, Any]]:
    codec = make_codec(None)
    records = read_all(settings, name(settings, Topic.DECISIONS), until=until)
    decoded = [codec.decode(r.value, topic=r.topic, expect="verdict").record for r in records]
    return {v["transaction_id"]: v for v in decoded}


def test_known_frauds_raise_the_merchant_rate_of_later_payments(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    ensure_topics(settings)
    codec = make_codec(None)
    tx_topic, label_topic = name(settings, Topic.TRANSACTIONS), name(settings, Topic.LABELS)
    now = whole_millis(datetime.now(UTC))
    # Ten payments three days ago at one merchant's two terminals, one device, many cards.
    three_days_ago = now - timedelta(days=3)
    early = [transaction(i, card=f"tok_{i:04x}", when=three_days_ago + timedelta(minutes=i),
                         merchant_id="mer-breached", terminal_id=f"term-b{i % 2}",
                         device_id="dev-shared") for i in range(10)]
    # A handbook-shaped payment: its merchant is its terminal, no device.
    handbook = transaction(50, when=now - timedelta(days=2), merchant_id="hb-t9",
                           terminal_id="hb-t9", device_id=None, channel="UNKNOWN")
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, [(tx_topic, t["card_token"].encode(),
                            codec.encode("transaction", t, topic=tx_topic))
                           for t in [*early, handbook]])
        first = _verdicts(settings, until=len(early) + 1)
        # Four of them turn out to be fraud, known a day ago; one more only in the future.
        labels = [{"transaction_id": t["transaction_id"], "card_token": t["card_token"],
                   "terminal_id": t["terminal_id"], "merchant_id": t["merchant_id"],
                   "device_id": t["device_id"], "label": "FRAUD", "fraud_scenario": None,
                   "transaction_time": t["event_time"], "known_at": known, "source": "ISSUER"}
                  for t, known in [*((t, now - timedelta(days=1)) for t in early[:4]),
                                   (early[4], now + timedelta(days=1))]]
        produce(settings, [(label_topic, lab["card_token"].encode(),
                            codec.encode("label", lab, topic=label_topic)) for lab in labels])
        # Later payments at the merchant: a new card at a terminal no fraud went through, and
        # one at the other terminal from the shared device.
        later = [transaction(100, card="tok_new", when=now - timedelta(hours=1),
                             merchant_id="mer-breached", terminal_id="term-b9",
                             device_id=None),
                 transaction(101, card="tok_other", when=now - timedelta(minutes=30),
                             merchant_id="mer-breached", terminal_id="term-b1",
                             device_id="dev-shared")]
        # One at a time: payments on other cards' partitions count once they have arrived
        # (the watermark gate makes the labels known by t exact, not the latest payments).
        for n, t in enumerate(later, start=1):
            produce(settings, [(tx_topic, t["card_token"].encode(),
                                codec.encode("transaction", t, topic=tx_topic))])
            verdicts = _verdicts(settings, until=len(early) + 1 + n)
    finally:
        worker.stop()

    for t in early:
        assert first[t["transaction_id"]]["features"]["merchant_fraud_rate_7d"] == 0.0
    # Before any label the shared device grows with its cards: (cards - 1) / 9 over the cards
    # that had arrived (a card partition's own payments always have: they come in order).
    shared = [first[t["transaction_id"]]["features"]["device_reputation_score"] for t in early]
    assert shared[0] == 0.0 and 1 / 9 <= max(shared) <= 1.0

    new_card = verdicts[later[0]["transaction_id"]]["features"]
    # 4 frauds known within the week over the merchant's 11 payments in it (the 5th label is
    # not known yet), whichever terminal and card.
    assert new_card["merchant_fraud_rate_7d"] == pytest.approx(4 / 11)
    assert new_card["device_reputation_score"] == 0.0  # no device: neutral
    assert new_card["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0.0  # nothing on its own terminal
    shared_device = verdicts[later[1]["transaction_id"]]["features"]
    assert shared_device["merchant_fraud_rate_7d"] == pytest.approx(4 / 12)
    # Its 24-hour cards are gone; its 4 known frauds saturate the fraud part.
    assert shared_device["device_reputation_score"] == 1.0

    hb = first[handbook["transaction_id"]]["features"]
    assert "merchant_fraud_rate_7d" not in hb and "device_reputation_score" not in hb
    assert "TERMINAL_ID_NB_TX_1DAY_WINDOW" in hb  # the rest of its row is there
