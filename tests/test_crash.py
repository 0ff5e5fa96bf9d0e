"""Rebalance and kill -9 workers in the middle of a 20,000-transaction run, restart, and count
what a downstream read_committed consumer sees.

The claim under test (streams/worker/lane.py): at-least-once. Every transaction gets a
verdict; a crash may re-issue the verdicts of records processed after the last offset commit, and a
re-issued verdict is byte for byte the first one: the restarted worker reads its verdicts back
from the decision topic and sends them again rather than deciding twice. The online learner is
active throughout (labels stream in beside the transactions, a model is registered, and the blend
trusts the learner after 20 labels per partition), so what each partition learned is recovered
from its changelog too.
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
from tests.test_casework_end_to_end import register_amount_model

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N = 20_000


def test_rebalance_and_kill_9_mid_run_lose_nothing(make_settings: Callable[..., Settings],
                                                   tmp_path: Path) -> None:
    """Scale out while a backlog is buffered, then kill -9 twice; every transaction gets a verdict.

    The scale-out is the case that once lost verdicts: a live worker with full stream buffers
    rebalances, and Faust acks the buffered records it skips (streams/worker/transport.py).
    """
    settings = make_settings(online_min_labels=LEARNER_AFTER)
    ensure_topics(settings)
    register_amount_model(settings.home)
    codec = make_codec(None)
    tx_topic = name(settings, Topic.TRANSACTIONS)
    labels_topic = name(settings, Topic.LABELS)
    decisions = name(settings, Topic.DECISIONS)
    start = datetime.now(UTC) - timedelta(hours=2)
    # 500 cards, strictly increasing event time: velocity values are well defined per transaction.
    txs = [transaction(i, card=f"tok_{i % 500:04x}", when=start + timedelta(milliseconds=300 * i),
                       amount=f"{20 + (i * 37) % 1500}.00")
           for i in range(N)]
    # Every fifth transaction is labelled a minute (event time) later: the learners are busy
    # before, during and after the crashes. Big payments are the frauds.
    labels = [_label(t, float(t["amount"]) > 900.0) for t in txs[::5]]

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
    produce(settings, [(labels_topic, lb["card_token"].encode(),
                        codec.encode("label", lb, topic=labels_topic)) for lb in labels])
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

    by_tx: dict[str, list[bytes]] = defaultdict(list)
    online: list[str] = []
    for r in records:
        v = codec.decode(r.value, topic=decisions, expect="verdict").record
        by_tx[v["transaction_id"]].append(r.value)
        if v["model_version"].endswith("+online"):
            online.append(v["transaction_id"])
    missing = {t["transaction_id"] for t in txs} - set(by_tx)
    duplicates = {tx: vs for tx, vs in by_tx.items() if len(vs) > 1}
    extra = sum(len(vs) - 1 for vs in duplicates.values())
    differ = [tx for tx, vs in duplicates.items() if any(v != vs[0] for v in vs[1:])]
    resent = sum(w.log().count("read back") for w in (first, second, restarted))
    print(f"\n[crash] {N} transactions, {len(labels)} labels; scale-out to two workers, kill -9 "
          f"of each; {at_kill} verdicts written before the last kill; {refused} skipped records' "
          f"acks refused; after restart a read_committed consumer sees {len(records)} verdicts, "
          f"{len(by_tx)} unique, {len(missing)} missing, {extra} duplicates "
          f"({len(duplicates)} transactions, {len(differ)} differing from their first); "
          f"{len(set(online))} decided with the online learner's weight; {resent} read-backs")

    assert not missing
    assert set(by_tx) == {t["transaction_id"] for t in txs}
    # The learner had a say before the crashes and after them.
    order = {t["transaction_id"]: i for i, t in enumerate(txs)}
    assert min(order[t] for t in online) < N * 0.2 and max(order[t] for t in online) > N * 0.9
    # Every duplicate is its first verdict, byte for byte.
    for tx in differ[:3]:  # what a differing duplicate changed, to say why
        a, b = (codec.decode(v, topic=decisions, expect="verdict").record for v in by_tx[tx][:2])
        print(tx, {k: (a[k], b[k]) for k in ("score", "model_version", "thresholds", "decision")
                   if a[k] != b[k]})
    assert duplicates and not differ
    # Duplicates come only from work after the last commit: far fewer than what was done before.
    assert extra < at_kill


LEARNER_AFTER = 20


def _label(tx: dict[str, Any], fraud: bool) -> dict[str, Any]:
    return {"transaction_id": tx["transaction_id"], "card_token": tx["card_token"],
            "terminal_id": tx["terminal_id"], "merchant_id": tx["merchant_id"],
            "device_id": tx["device_id"], "label": "FRAUD" if fraud else "GENUINE",
            "fraud_scenario": None, "transaction_time": tx["event_time"],
            "known_at": tx["event_time"] + timedelta(minutes=1), "source": "ISSUER"}
