"""Rebalance and kill -9 workers in the middle of a 20,000-transaction run, restart, and count
what a downstream read_committed consumer sees.

The claim under test (streams/worker/lane.py): at-least-once. Every transaction gets a
verdict; a crash may re-issue the verdicts of records processed after the last offset commit, and a
re-issued verdict is the same decision with the same verdict_id and the same feature values
(idempotent state).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import make_codec
from streams.admin import end_offsets, ensure_topics
from streams.config import Settings
from streams.topics import Topic
from tests.factories import transaction
from tests.kafka_helpers import WorkerProcess, name, produce, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N = 20_000


def test_rebalance_and_kill_9_mid_run_lose_nothing(make_settings: Callable[..., Settings],
                                                   tmp_path: Path) -> None:
    """Scale out while a backlog is buffered, then kill -9 twice; every transaction gets a verdict.

    The scale-out is the case that once lost verdicts: a live worker with full stream buffers
    rebalances, and Faust acks the buffered records it skips (streams/worker/transport.py).
    """
    settings = make_settings()
    ensure_topics(settings)
    codec = make_codec(None)
    tx_topic = name(settings, Topic.TRANSACTIONS)
    decisions = name(settings, Topic.DECISIONS)
    start = datetime.now(UTC) - timedelta(hours=2)
    # 500 cards, strictly increasing event time: velocity values are well defined per transaction.
    txs = [transaction(i, card=f"tok_{i % 500:04x}", when=start + timedelta(milliseconds=300 * i))
           for i in range(N)]

    def verdicts_written() -> int:
        return sum(end_offsets(settings, decisions).values())

    def wait_for(share: float) -> None:
        deadline = time.monotonic() + 180
        while verdicts_written() < N * share:
            assert time.monotonic() < deadline, f"no progress to {share:.0%} of the verdicts"
            time.sleep(0.05)

    first = WorkerProcess(settings, tmp_path / "worker-1.log").start()
    produce(settings, [(tx_topic, t["card_token"].encode(),
                        codec.encode("transaction", t, topic=tx_topic)) for t in txs])
    wait_for(0.2)
    second = WorkerProcess(settings, tmp_path / "worker-2.log").start(wait=False)  # rebalance
    wait_for(0.45)
    first.kill9()
    wait_for(0.7)
    second.kill9()
    at_kill = verdicts_written()
    restarted = WorkerProcess(settings, tmp_path / "worker-3.log").start()
    deadline = time.monotonic()
    try:
        records = read_all(settings, decisions, until=None, idle_s=5.0, timeout_s=240)
        while len({r.key for r in records}) < N and time.monotonic() < deadline + 240:
            records = read_all(settings, decisions, until=None, idle_s=5.0, timeout_s=240)
    finally:
        restarted.stop()
        refused = sum(w.log().count("ack refused") for w in (first, second, restarted))

    by_tx: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        v = codec.decode(r.value, topic=decisions, expect="verdict").record
        by_tx[v["transaction_id"]].append(v)
    missing = {t["transaction_id"] for t in txs} - set(by_tx)
    duplicates = {tx: vs for tx, vs in by_tx.items() if len(vs) > 1}
    extra = sum(len(vs) - 1 for vs in duplicates.values())
    print(f"\n[crash] {N} transactions; scale-out to two workers, kill -9 of each; "
          f"{at_kill} verdicts written before the last kill; {refused} skipped records' acks "
          f"refused; after restart a read_committed consumer sees {len(records)} verdicts, "
          f"{len(by_tx)} unique, {len(missing)} missing, {extra} duplicates "
          f"({len(duplicates)} transactions re-decided)")

    assert not missing
    assert set(by_tx) == {t["transaction_id"] for t in txs}
    for vs in duplicates.values():
        first = vs[0]
        for again in vs[1:]:
            assert again["verdict_id"] == first["verdict_id"]
            assert again["decision"] == first["decision"]
            assert again["rules_fired"] == first["rules_fired"]
            # Exact explanations are equal; the explanation time budget (a machine-speed
            # fallback, flagged) is the one thing that may explain a re-issue differently.
            if not {"explanation_simplified"} & {*first["fallbacks"], *again["fallbacks"]}:
                assert again["reasons"] == first["reasons"]
    # Duplicates come only from work after the last commit: far fewer than what was done before.
    assert extra < at_kill
