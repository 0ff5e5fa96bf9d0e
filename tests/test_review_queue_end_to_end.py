"""A filling review queue moves the decision thresholds, through a real broker and a real worker.

The case book (the Faust case agent) counts its unresolved cases and publishes the count to the
compacted review-queue topic; every fraud lane reads it and decides with thresholds for that load
and the configured capacity (RAKSHIT_REVIEW_CAPACITY), and each verdict records the thresholds
it used. With an empty queue they are the normal tier's base values; once the REVIEW verdicts'
cases fill the queue past its capacity, the review threshold has risen by its full allowance.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agents.fraud.decision import ThresholdConfig
from schemas.clock import whole_millis
from schemas.codec import make_codec
from streams.admin import ensure_topics
from streams.config import Settings
from streams.topics import Topic
from tests.factories import transaction
from tests.kafka_helpers import name
from tests.test_casework_end_to_end import (
    WAIT_S,
    register_amount_model,
    scrape,
    send_transactions,
    start_worker,
    verdict_of,
    wait_for,
)

pytestmark = pytest.mark.kafka

CAPACITY = 3
BASE = ThresholdConfig()


def test_a_queue_filled_past_capacity_raises_the_review_threshold_each_verdict_records(
        make_settings: Callable[..., Settings], tmp_path: Path, free_port: int) -> None:
    settings = make_settings(metrics_port=free_port, review_capacity=CAPACITY)
    ensure_topics(settings)
    register_amount_model(settings.home)  # 800 EUR: the model reviews; 20 EUR: it approves
    codec = make_codec(None)

    def pay(i: int, amount: str) -> dict[str, Any]:
        return transaction(i, card=f"tok_queue_{i}", amount=amount,
                           when=whole_millis(datetime.now(UTC)))

    worker = start_worker(settings, tmp_path)
    try:
        calm = pay(1, "20.00")
        send_transactions(settings, codec, [calm])
        before = verdict_of(settings, codec, calm)
        # One more review than the queue holds: each REVIEW verdict opens a case.
        reviewed = [pay(10 + k, "800.00") for k in range(CAPACITY + 1)]
        send_transactions(settings, codec, reviewed)
        decisions = [verdict_of(settings, codec, tx)["decision"] for tx in reviewed]
        published = wait_for(settings, name(settings, Topic.REVIEW_QUEUE), codec,
                             lambda r: r["depth"] == CAPACITY + 1)
        deadline = time.monotonic() + WAIT_S
        while scrape(settings).get("rakshit_review_queue_seen", 0.0) < CAPACITY + 1:
            assert time.monotonic() < deadline, "the lane never read the queue's depth"
            time.sleep(0.2)
        busy = pay(2, "20.00")
        send_transactions(settings, codec, [busy])
        after = verdict_of(settings, codec, busy)
    finally:
        worker.stop()

    assert decisions == ["REVIEW"] * (CAPACITY + 1)
    assert published["depth"] == CAPACITY + 1
    # An empty queue: the normal tier's base thresholds, unmoved.
    assert before["thresholds"] == {"review": BASE.review, "decline": BASE.decline,
                                    "tier": "normal", "adjustments": []}
    # A queue past its capacity: review raised by the full allowance, decline left alone.
    moved = after["thresholds"]
    assert moved["review"] == pytest.approx(BASE.review + BASE.queue_max_raise)
    assert (moved["decline"], moved["tier"]) == (BASE.decline, "normal")
    assert moved["adjustments"] == ["review queue 133% full: review threshold raised"]
