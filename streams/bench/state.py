"""`rakshit bench state`: bytes per card and per terminal, and recovery time from the changelog.

What a worker holds per key, and how long a newly assigned worker takes to rebuild it, set how many
cards one machine can own and how fast a failed worker's partitions come back. Card and terminal
states are built by the real feature functions from synthetic traffic (a card with
``card_history`` transactions over 30 days, a terminal with ``terminal_history`` over 38 days),
written to a compacted changelog topic of one partition as the lane's checkpoint writes them (one
JSON record per key), then read back with ``streams.worker.store.recover``, as on assignment.
And what a checkpoint's key expiry (``Store.expire``) costs.
"""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from dataclasses import replace
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from agents.fraud.guardrail import record_amount
from scoring import features as F
from scoring import retention
from streams.admin import admin_client, delete_run_topics
from streams.config import Settings
from streams.worker.lane import EXPIRE_KEYS
from streams.worker.store import Store, encode_value, recover

T0 = 1_780_000_000_000


def card_state(rng: random.Random, card: int, history: int) -> dict[str, Any]:
    """A card's stored value as the lane keeps it: features state and amount history."""
    state: dict[str, Any] | None = None
    amounts: list[Any] = []
    for i in range(history):
        t = T0 - rng.randrange(30 * F.DAY_MS)
        tx_id = f"tx-{card:09d}-{i:03d}"
        amount = round(rng.uniform(1, 300), 2)
        state = F.card_observe(state, tx_id, t, amount, "DE", (52.5, 13.4))
        amounts = [list(a) for a in record_amount(amounts, t, tx_id, amount, "EUR")]
    return {"features": state, "amounts": amounts}


def terminal_state(rng: random.Random, terminal: int, history: int) -> dict[str, Any]:
    state: dict[str, Any] | None = None
    for i in range(history):
        t = T0 - rng.randrange(38 * F.DAY_MS)
        state = F.terminal_observe_tx(state, f"tx-t{terminal:07d}-{i:03d}", t)
    assert state is not None
    return state


def bench_expiry(rng: random.Random, terminal_history: int, keys: int = 100_000,
                 rounds: int = 20) -> dict[str, Any]:
    """What one checkpoint's expiry costs (streams.worker.lane.EXPIRE_KEYS keys looked at) over
    ``keys`` real terminal states in six partitions: when none is due, and when all are."""
    sample = [terminal_state(rng, i, terminal_history) for i in range(2_000)]
    newest = max(retention.terminal_last_event_ms(s) for s in sample)
    out: dict[str, Any] = {"keys": keys, "keys_per_call": EXPIRE_KEYS}
    for case, now in (("none_due", newest), ("all_due", newest + retention.TERMINAL_RETENTION_MS
                                              + F.DAY_MS)):
        store = Store("terminal-state", "")
        for p in range(6):
            store.adopt(p, {f"term-{p}-{i:07d}": json.loads(json.dumps(sample[i % len(sample)]))
                            for i in range(keys // 6)})
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            store.expire(dict.fromkeys(range(6), now), retention.terminal_expired, EXPIRE_KEYS)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out[case] = {"median_ms": round(times[len(times) // 2], 2), "max_ms": round(times[-1], 2)}
    print(f"  expiry: {EXPIRE_KEYS:,} terminal keys looked at per checkpoint: median "
          f"{out['none_due']['median_ms']} ms when none is due, {out['all_due']['median_ms']} ms "
          f"when all are (max {out['all_due']['max_ms']} ms)", flush=True)
    return out


def bench_state(settings: Settings, cards: int = 1_000_000, card_history: int = 10,
                terminals: int = 10_000, terminal_history: int = 80,
                seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    run = replace(settings, app_id=f"rakshit-statebench{int(time.time()) % 100000}",
                  topic_prefix="statebench.")
    result: dict[str, Any] = {"cards": cards, "card_history": card_history,
                              "terminals": terminals, "terminal_history": terminal_history}
    try:
        def make(kind: str, i: int) -> dict[str, Any]:
            if kind == "card":
                return card_state(rng, i, card_history)
            return terminal_state(rng, i, terminal_history)

        result["expiry"] = bench_expiry(rng, terminal_history)
        for kind, count in (("card", cards), ("terminal", terminals)):
            topic = f"{run.app_id}-{kind}-state-changelog"
            admin = admin_client(run)
            for future in admin.create_topics([NewTopic(
                    topic, num_partitions=1, replication_factor=1,
                    config={"cleanup.policy": "compact"})]).values():
                future.result()
            producer = Producer({**run.kafka_config(), "linger.ms": 20,
                                 "acks": "all", "queue.buffering.max.messages": 1_000_000,
                                 "compression.type": "lz4"})
            # Distinct states are built for a sample and cycled: building a million card
            # histories would time the feature code, not the store.
            sample = [encode_value(make(kind, i)) for i in range(min(count, 20_000))]
            value_bytes = key_bytes = 0
            for i in range(count):
                key = f"{kind}-{i:09d}".encode()
                value = sample[i % len(sample)]
                value_bytes += len(value)
                key_bytes += len(key)
                while True:
                    try:
                        producer.produce(topic, value, key, partition=0)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.flush(120)
            tracemalloc.start()
            held = {f"{kind}-{i:09d}": json.loads(v) for i, v in enumerate(sample)}
            memory = tracemalloc.get_traced_memory()[0] / len(held)
            tracemalloc.stop()
            del held
            table, read, seconds = recover({**run.kafka_config()},
                                           topic, 0)
            assert len(table) == count, f"recovered {len(table)} of {count} {kind} states"
            result[kind] = {
                "keys": count,
                "changelog_bytes_per_key": round((value_bytes + key_bytes) / count, 1),
                "memory_bytes_per_key": round(memory),
                "recovery_s": round(seconds, 2),
                "recovery_keys_per_s": round(read / seconds) if seconds else None,
            }
            print(f"  {kind}: {count:,} keys, {result[kind]['changelog_bytes_per_key']:.0f} "
                  f"changelog bytes and {memory:,.0f} bytes of memory per key, recovered in "
                  f"{seconds:.1f} s ({result[kind]['recovery_keys_per_s']:,} keys/s)", flush=True)
            del table
    finally:
        delete_run_topics(run)
    return result
