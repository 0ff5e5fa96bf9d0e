"""State keys expire in the running worker, through the broker (scoring.retention).

A card, terminal, merchant and device seen once 200 days ago, then traffic of today on every
partition: the worker deletes the old keys, writes their tombstones to the changelogs and counts
them; a worker started afterwards recovers without them, so the card comes back as a new card
(account age 0). Without the expiry wired into the lane's checkpoint, no tombstone appears.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.codec import make_codec
from streams.admin import ensure_topics
from streams.config import Settings
from streams.topics import Topic
from streams.worker.lane import changelog_topic
from tests.factories import transaction
from tests.kafka_helpers import WorkerProcess, name, produce, read_all
from tests.test_casework_end_to_end import scrape

pytestmark = pytest.mark.kafka

OLD = {"card_token": "tok_gone", "terminal_id": "term-gone", "merchant_id": "m-gone",
       "device_id": "dev-gone"}
OLD_TERMINAL_KEYS = {"term-gone", "merchant:m-gone", "device:m-gone:dev-gone"}


def _tombstones(settings: Settings, store: str) -> set[str]:
    records = read_all(settings, changelog_topic(settings, store), idle_s=1.0)
    return {r.key.decode() for r in records if r.key is not None and not r.value}


def test_keys_silent_past_their_retention_are_deleted_and_stay_deleted(
        make_settings: Callable[..., Settings], tmp_path: Path, free_port: int) -> None:
    settings = make_settings(metrics_port=free_port)
    ensure_topics(settings)
    codec = make_codec(None)
    topic = name(settings, Topic.TRANSACTIONS)
    now = datetime.now(UTC) - timedelta(seconds=5)

    def send(txs: list[dict[str, object]]) -> None:
        produce(settings, [(topic, str(t["card_token"]).encode(),
                            codec.encode("transaction", t, topic=topic)) for t in txs])

    old = transaction(1, when=now - timedelta(days=200), **OLD)
    # Today's traffic on every card and scoring partition: 60 cards, merchants and terminals.
    today = [transaction(100 + i, card=f"tok_now_{i}", terminal_id=f"term-now-{i}",
                         merchant_id=f"m-now-{i}", device_id=f"dev-now-{i}", when=now)
             for i in range(60)]
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        send([old])
        read_all(settings, name(settings, Topic.DECISIONS), until=1, timeout_s=60)
        send(today)
        read_all(settings, name(settings, Topic.DECISIONS), until=61, timeout_s=90)
        deadline = time.monotonic() + 60
        cards: set[str] = set()
        terminals: set[str] = set()
        while time.monotonic() < deadline:
            cards = _tombstones(settings, "card-state")
            terminals = _tombstones(settings, "terminal-state")
            if "tok_gone" in cards and terminals >= OLD_TERMINAL_KEYS:
                break
            time.sleep(1.0)
        # Only the old keys go: today's are within retention.
        assert cards == {"tok_gone"}, worker.log()[-3000:]
        assert terminals == OLD_TERMINAL_KEYS
        metrics = scrape(settings)
        assert metrics['rakshit_state_expired_total{store="card-state"}'] == 1.0
        assert metrics['rakshit_state_expired_total{store="terminal-state"}'] == 3.0
    finally:
        worker.stop()

    # A worker started now rebuilds its state from the changelogs, tombstones included: the
    # card returns as a new card, its account 0 days old, not 200.
    again = transaction(2, when=datetime.now(UTC) - timedelta(seconds=1), **OLD)
    worker = WorkerProcess(settings, tmp_path / "worker2.log").start()
    try:
        send([again])
        decisions = name(settings, Topic.DECISIONS)
        records = read_all(settings, decisions, until=62, timeout_s=90)
    finally:
        worker.stop()
    verdicts = [codec.decode(r.value, topic=decisions, expect="verdict").record for r in records]
    back = [v for v in verdicts if v["transaction_id"] == again["transaction_id"]]
    assert len(back) == 1
    assert back[0]["features"]["account_age_days"] == 0.0
