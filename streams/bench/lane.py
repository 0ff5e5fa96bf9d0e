"""`rakshit bench lane`: the fraud lane's own CPU per transaction, with no broker in the way.

`rakshit bench pipeline` measures the whole path through Kafka on a shared machine, where the
broker, librdkafka and the other processes take their share; it says how far the worker is from
the passthroughs, not where the lane's own time goes. This command runs the lane's real code
(``FraudLane._process`` for the card stage, then again for the terminal stage on the hand-overs
the card stage produced, then the checkpoint's changelog records) on the pipeline benchmark's
transactions, in one thread, through ``streams.worker.local`` (an in-memory source and sink
standing in for the consumer and the producer), so a change to the hot path can be judged in
seconds and profiled without noise:

    rakshit bench lane --transactions 20000
    py-spy record -- python -m streams.cli bench lane

Nothing is measured here that a Kafka client costs (fetching, producing, delivery reports): those
are in the pipeline benchmark's figures.
"""

from __future__ import annotations

import time
from typing import Any

from streams.config import Settings
from streams.topics import Topic
from streams.worker.collector import BatchCollector
from streams.worker.lane import BATCH
from streams.worker.local import LocalLane


def bench_lane(settings: Settings, transactions: int = 20_000, batch: int = BATCH
               ) -> dict[str, Any]:
    from streams.bench.pipeline import benchmark_records

    records = benchmark_records(settings, transactions, seed=5, traffic="handbook")
    local = LocalLane(settings)
    stores = (local.lane.cards, local.lane.terminals)
    tx_topic, scoring = local.topic(Topic.TRANSACTIONS), local.topic(Topic.SCORING)
    collector = BatchCollector()
    card_s = terminal_s = changelog_s = gc_s = 0.0
    outputs: dict[str, int] = {}
    try:
        for start in range(0, len(records), batch):
            t0 = time.perf_counter()
            sent = local.process(tx_topic, records[start:start + batch])
            t1 = time.perf_counter()
            handed = [(key, value) for topic, key, value in sent if topic == scoring]
            t2 = time.perf_counter()
            for topic, _, _ in local.process(scoring, handed):
                outputs[topic] = outputs.get(topic, 0) + 1
            t3 = time.perf_counter()
            changes = sum(1 for store in stores for _ in store.changes())
            t4 = time.perf_counter()
            collector.after_batch()
            t5 = time.perf_counter()
            card_s, terminal_s = card_s + t1 - t0, terminal_s + t3 - t2
            changelog_s, gc_s = changelog_s + t4 - t3, gc_s + t5 - t4
            outputs["changelog records"] = outputs.get("changelog records", 0) + changes
    finally:
        collector.close()
    n = len(records)
    total = card_s + terminal_s + changelog_s + gc_s
    return {
        "transactions": n,
        "batch": batch,
        "us_per_transaction": {
            "card_stage": round(card_s / n * 1e6, 1),
            "terminal_stage_and_decisions": round(terminal_s / n * 1e6, 1),
            "changelog_values": round(changelog_s / n * 1e6, 1),
            "garbage_collection": round(gc_s / n * 1e6, 1),
            "total": round(total / n * 1e6, 1),
        },
        "ceiling_tps": round(n / total, 1),
        "outputs": outputs,
    }
