"""The API's store feed: verdicts, cases and disputes from their topics into the durable store.

A consumer thread of its own, beside the read model's (streams.api.server.KafkaFeed), because
the two must be at different places: the read model follows the live end of the topics whatever
the database does, while the store resumes from the positions it committed, which after a
database outage lie behind. Each batch lands in one transaction with the positions it reaches,
so a restart resumes after the last batch that landed instead of re-reading the topics, and a
batch that did not land is read again.

When the database is down the feed keeps nothing in memory: it waits, reads its positions
again once the database answers, and catches up from there. The topics are the source of truth;
nothing the database missed is lost while they retain it.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from schemas.codec import make_codec
from streams.admin import end_offsets
from streams.api.readmodel import dispute_view
from streams.config import Settings
from streams.store import Store, StoreUnavailable
from streams.store.sql import Batch
from streams.topics import SPECS, Topic, topic_name

__all__ = ["STORED", "StoreFeed"]

log = logging.getLogger(__name__)

# The topics the store keeps, read whole (from the oldest record retained) the first time.
STORED = (Topic.DECISIONS, Topic.CASES, Topic.CASE_COMMANDS)
BATCH = 2_000


class StoreFeed(threading.Thread):
    """Writes STORED topics into ``store``; ``status()`` says whether it can, and how far."""

    def __init__(self, settings: Settings, store: Store, retry_s: float = 1.0) -> None:
        super().__init__(name="store-feed", daemon=True)
        self.settings, self.store, self.retry_s = settings, store, retry_s
        self.codec = make_codec(settings.schema_registry_url)
        self.stop = threading.Event()
        self.names = {topic_name(t, settings.topic_prefix): t for t in STORED}
        self._lock = threading.Lock()
        self._error: str | None = "the store feed has not reached the database yet"
        self._reached = False
        self._committed = 0
        self._positions: dict[tuple[str, int], int] = {}

    # -- what others ask ----------------------------------------------------------------------

    @property
    def error(self) -> str | None:
        """Why the feed cannot write now (None when its last attempt landed)."""
        with self._lock:
            return self._error

    def status(self) -> dict[str, Any]:
        """Whether the feed writes, how many records it committed since the API started, and
        how many records the stored topics hold beyond what the store has (a broker query)."""
        with self._lock:
            error, committed = self._error, self._committed
            positions = dict(self._positions)
        behind: int | None = 0
        try:
            for name in self.names:
                for partition, end in end_offsets(self.settings, name, timeout_s=5.0).items():
                    behind = (behind or 0) + max(0, end - positions.get((name, partition), 0))
        except Exception:  # the broker is away too: say unknown rather than fail the page
            behind = None
        return {"writing": error is None, "error": error,
                "committed_since_start": committed, "behind": behind}

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        consumer = Consumer({**self.settings.kafka_config(),
                             "group.id": f"rakshit-api-store-{secrets.token_hex(4)}",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "auto.offset.reset": "earliest",
                             "fetch.wait.max.ms": 100, "fetch.min.bytes": 64 * 1024})
        try:
            while not self.stop.is_set():
                try:
                    self._assign(consumer)
                    self._follow(consumer)
                except StoreUnavailable as exc:
                    self._failed(str(exc))
                except Exception as exc:  # a bug or the broker: show it, never end the thread
                    self._failed(f"store feed error: {type(exc).__name__}: {exc}", exc)
                self.stop.wait(self.retry_s)
        finally:
            consumer.close()

    def _failed(self, reason: str, exc: Exception | None = None) -> None:
        """Remember why; say so in the log once per new reason, not once per retry."""
        with self._lock:
            changed = self._error != reason
            self._error = reason
        if changed:
            log.warning("the API is read-only until the store feed writes again: %s", reason,
                        exc_info=exc)

    def _assign(self, consumer: Consumer) -> None:
        """Start every partition at the position the store committed (the oldest record
        retained if it has none), forgetting anything fetched before."""
        stored = self.store.positions(self.names)
        parts = []
        for name in self.names:
            meta = consumer.list_topics(name, timeout=10).topics[name]
            for partition in sorted(meta.partitions):
                parts.append(TopicPartition(name, partition,
                                            stored.get((name, partition), OFFSET_BEGINNING)))
        consumer.unassign()
        consumer.assign(parts)
        with self._lock:
            self._positions = stored
            recovered = self._reached and self._error is not None
            self._error, self._reached = None, True
        if recovered:
            log.warning("store available again; catching up from its positions")

    def _follow(self, consumer: Consumer) -> None:
        while not self.stop.is_set():
            messages = consumer.consume(num_messages=BATCH, timeout=0.5)
            batch = Batch()
            read = 0
            for msg in messages:
                if msg.error() is None:
                    self._add(batch, msg)
                    read += 1
            if not read:
                continue
            self.store.write(batch)
            with self._lock:
                self._committed += read
                self._positions.update(batch.positions)

    def _add(self, batch: Batch, msg: Message) -> None:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        batch.positions[(topic, partition)] = offset + 1
        kind = self.names[topic]
        value = msg.value()
        if value is None:
            return
        try:
            record = self.codec.decode(value, topic=topic, expect=SPECS[kind].schema).record
        except Exception:  # the worker dead-letters bad input; here: skip it, say so
            log.warning("undecodable record on %s at %d/%d", topic, partition, offset)
            return
        if kind is Topic.DECISIONS:
            batch.verdicts.append((partition, offset, record))
        elif kind is Topic.CASES:
            batch.cases.append(record)
        elif record.get("command") == "DISPUTE" and record.get("transaction_id"):
            batch.disputes.append(dispute_view(record))

