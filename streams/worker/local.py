"""The fraud lane without a broker: the worker's own dataflow, fed from lists, outputs collected.

As bytewax's testing source and sink: the tests and `rakshit bench lane` call the very
``FraudLane._process`` the worker's consume loop calls, on records held in memory, with one
partition of each input consumed to its end (so the watermark gate never holds a decision).
Hand-overs the card stage sends to the terminal topic are fed back in, as the broker would.

    lane = LocalLane(settings)
    outputs = lane.feed(Topic.TRANSACTIONS, [(key, avro_bytes), ...])
    outputs["rakshit.decisions"]  # [(key, value), ...]

What it leaves out is what only Kafka does: fetching, producing, delivery reports, commits and
rebalances. The crash and end-to-end tests cover those through a real broker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agents.fraud.pipeline import DecisionPipeline
from schemas.codec import Codec
from streams.config import Settings
from streams.topics import Topic, topic_name
from streams.worker.lane import FraudLane
from streams.worker.watermarks import CAUGHT_UP, WatermarkGate, source

Sent = tuple[str, bytes | None, bytes]


@dataclass(slots=True)
class MemoryRecord:
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


class MemorySink:
    """The outbox's ``send``, keeping what was sent in order."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None = None) -> None:
        if value is not None:  # tombstones go to changelogs, which only checkpoints write
            self.sent.append((topic, key, value))

    def take(self) -> list[Sent]:
        sent, self.sent = self.sent, []
        return sent


class LocalLane:
    """One FraudLane owning partition 0 of every input, its outbox a ``MemorySink``."""

    def __init__(self, settings: Settings, pipeline: DecisionPipeline | None = None,
                 codec: Codec | None = None) -> None:
        self.lane = FraudLane(settings, codec=codec, pipeline=pipeline)
        self.sink = MemorySink()
        self.lane.outbox = self.sink  # type: ignore[assignment]  # only send() is used here
        self.lane.gate = WatermarkGate(1, 1)
        self.lane.gate.update(0, {source("transactions", 0): CAUGHT_UP,
                                  source("labels", 0): CAUGHT_UP})
        self.lane.held[0] = deque()
        self.lane.cards.adopt(0, {})
        self.lane.terminals.adopt(0, {})
        self.codec = self.lane.codec
        self._offsets: dict[str, int] = {}

    def topic(self, topic: Topic) -> str:
        return topic_name(topic, self.lane.settings.topic_prefix)

    def process(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> list[Sent]:
        """One batch through ``_process``; returns everything it sent, hand-overs included."""
        first = self._offsets.get(topic, 0)
        self._offsets[topic] = first + len(records)
        batch = [MemoryRecord(topic, 0, first + i, key, value)
                 for i, (key, value) in enumerate(records)]
        self.lane._process(batch)  # type: ignore[arg-type]
        return self.sink.take()

    def feed(self, topic: Topic, records: Iterable[tuple[bytes | None, bytes]]
             ) -> dict[str, list[tuple[bytes | None, bytes]]]:
        """The records as one batch, then their hand-overs as the next: every output but the
        hand-overs, by topic."""
        scoring = self.topic(Topic.SCORING)
        outputs: dict[str, list[tuple[bytes | None, bytes]]] = {}
        pending: list[tuple[bytes | None, bytes]] = list(records)
        name = self.topic(topic)
        while pending:
            sent = self.process(name, pending)
            pending, name = [], scoring
            for out_topic, key, value in sent:
                if out_topic == scoring:
                    pending.append((key, value))
                else:
                    outputs.setdefault(out_topic, []).append((key, value))
        return outputs
