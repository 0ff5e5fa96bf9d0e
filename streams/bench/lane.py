"""`rakshit bench lane`: the fraud lane's own CPU per transaction, with no broker in the way.

`rakshit bench pipeline` measures the whole path through Kafka on a shared machine, where the
broker, librdkafka and the other processes take their share; it says how far the worker is from
the passthroughs, not where the lane's own time goes. This command runs the lane's real code
(``FraudLane._process`` for the card stage, then again for the terminal stage on the hand-overs
the card stage produced, then the checkpoint's changelog records) on the pipeline benchmark's
transactions, in one thread, with an in-memory source and sink standing in for the consumer and
the producer, so a change to the hot path can be judged in seconds and profiled without noise:

    rakshit bench lane --transactions 20000
    py-spy record -- python -m streams.cli bench lane

Nothing is measured here that a Kafka client costs (fetching, producing, delivery reports): those
are in the pipeline benchmark's figures.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from streams.config import Settings
from streams.topics import Topic
from streams.worker.collector import BatchCollector
from streams.worker.lane import BATCH, FraudLane
from streams.worker.watermarks import CAUGHT_UP, WatermarkGate, source


@dataclass(slots=True)
class _Record:
    """What the lane reads of a consumed message (confluent_kafka.Message's accessors)."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, float]:
        return 1, time.time() * 1000.0  # TIMESTAMP_CREATE_TIME, now


class _Sink:
    """The outbox's ``send``, keeping what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes,
             partition: int | None = None) -> None:
        self.sent.append((topic, key, value))


def bench_lane(settings: Settings, transactions: int = 20_000, batch: int = BATCH
               ) -> dict[str, Any]:
    from streams.bench.pipeline import benchmark_records

    records = benchmark_records(settings, transactions, seed=5, traffic="handbook")
    lane = FraudLane(settings)
    sink = _Sink()
    lane.outbox = sink  # type: ignore[assignment]  # only send() is used on this path
    lane.gate = WatermarkGate(1, 1)  # one partition of each, both consumed to their end
    lane.gate.update(0, {source("transactions", 0): CAUGHT_UP, source("labels", 0): CAUGHT_UP})
    lane.held[0] = deque()
    lane.cards.adopt(0, {})
    lane.terminals.adopt(0, {})
    tx_topic, scoring = lane.topics[Topic.TRANSACTIONS], lane.topics[Topic.SCORING]
    collector = BatchCollector()
    card_s = terminal_s = changelog_s = gc_s = 0.0
    outputs: dict[str, int] = {}
    try:
        for start in range(0, len(records), batch):
            chunk = [_Record(tx_topic, 0, start + i, key, value)
                     for i, (key, value) in enumerate(records[start:start + batch])]
            t0 = time.perf_counter()
            lane._process(chunk)  # type: ignore[arg-type]
            t1 = time.perf_counter()
            handed = [_Record(scoring, 0, start + i, key, value) for i, (topic, key, value)
                      in enumerate(sink.sent) if topic == scoring]
            sink.sent.clear()
            t2 = time.perf_counter()
            lane._process(handed)  # type: ignore[arg-type]
            t3 = time.perf_counter()
            for topic, _, _ in sink.sent:
                outputs[topic] = outputs.get(topic, 0) + 1
            sink.sent.clear()
            changes = sum(1 for store in (lane.cards, lane.terminals) for _ in store.changes())
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
