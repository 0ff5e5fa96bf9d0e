"""`rakshit bench pipeline`: the worker's sustained throughput beside a raw Kafka passthrough.

The machine is shared and noisy, so both sides run in the same invocation, alternating, each on
fresh topics with the same pre-encoded transactions, and the figures are medians over rounds with
their ratio. The passthrough is the same Faust client and guarantee forwarding records untouched:
the ceiling any work in the worker eats into.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

from confluent_kafka import Producer

from schemas.codec import make_codec
from streams.admin import admin_client, end_offsets, ensure_topics, free_port
from streams.config import Settings
from streams.demo import start_worker, stop_process, wait_until_ready
from streams.simulator.population import build_population
from streams.simulator.scenarios import get_scenario
from streams.simulator.traffic import EventClock, TrafficGenerator
from streams.topics import Topic, topic_name


def _records(settings: Settings, count: int, seed: int) -> list[tuple[bytes, bytes]]:
    codec = make_codec(settings.schema_registry_url)
    gen = TrafficGenerator(build_population(seed, customers=max(2_000, count // 10)),
                           get_scenario("normal"), seed, EventClock.for_run(count / 1000.0))
    topic = topic_name(Topic.TRANSACTIONS, settings.topic_prefix)
    out = []
    for _ in range(count):
        tx = gen.generate().transaction
        out.append((tx["card_token"].encode(), codec.encode("transaction", tx, topic=topic)))
    return out


def _one_run(base: Settings, records: list[tuple[bytes, bytes]], passthrough: bool,
             tag: str) -> float:
    settings = replace(base, topic_prefix=f"{tag}.", app_id=f"rakshit-{tag}",
                       metrics_port=free_port())
    ensure_topics(settings)
    worker, _ = start_worker(settings, f"{tag}.log", passthrough=passthrough)
    try:
        wait_until_ready(settings, worker)
        topic = topic_name(Topic.TRANSACTIONS, settings.topic_prefix)
        decisions = topic_name(Topic.DECISIONS, settings.topic_prefix)
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5,
                             "queue.buffering.max.messages": 1_000_000})
        started = time.monotonic()
        for key, value in records:
            producer.produce(topic, key=key, value=value)
        producer.flush(60)
        while sum(end_offsets(settings, decisions).values()) < len(records):
            if worker.poll() is not None:
                raise RuntimeError(f"{tag}: worker exited with {worker.returncode}")
            time.sleep(0.05)
        return len(records) / (time.monotonic() - started)
    finally:
        stop_process(worker)
        names = [n for n in admin_client(settings).list_topics(timeout=10).topics
                 if n.startswith(settings.topic_prefix) or n.startswith(settings.app_id)]
        if names:
            admin_client(settings).delete_topics(names, operation_timeout=30)


def bench_pipeline(settings: Settings, transactions: int = 20_000, rounds: int = 3,
                   seed: int = 5) -> dict[str, Any]:
    records = _records(settings, transactions, seed)
    stamp = time.strftime("%H%M%S")
    runs: dict[str, list[float]] = {"passthrough": [], "worker": []}
    for r in range(rounds):
        for mode in ("passthrough", "worker"):
            tps = _one_run(settings, records, mode == "passthrough", f"bench{stamp}-{mode}-{r}")
            runs[mode].append(round(tps, 1))
            print(f"  round {r + 1}/{rounds} {mode:<12} {tps:8.0f} tx/s", flush=True)
    worker = statistics.median(runs["worker"])
    baseline = statistics.median(runs["passthrough"])
    return {
        "transactions_per_run": transactions,
        "rounds": rounds,
        "worker_tps": runs["worker"],
        "passthrough_tps": runs["passthrough"],
        "worker_tps_median": worker,
        "passthrough_tps_median": baseline,
        "ratio": round(worker / baseline, 3),
    }
