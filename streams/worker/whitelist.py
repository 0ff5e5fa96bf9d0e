"""The whitelist as the fraud lane reads it: every analyst's whitelisting, on every lane.

The case agent (Faust, ``streams.worker.casework``) is the single writer of the whitelist and
publishes each whitelisting to the compacted ``rakshit.whitelist`` topic, keyed by card token.
The lane decides at the terminal stage, whose partitions follow terminals, so any lane may decide
any card's payment. Each lane therefore reads the whole topic outside its consumer group (a global
table, as Kafka Streams has). Reading only the partitions that match its cards would not reach the
terminal stage, and it would also need every gateway to partition card tokens exactly as the case
agent's producer does. There are few whitelistings (one per card, each lasting at most
``agents.cases.MAX_WHITELIST``), so they all fit in memory.

The topic is read to its end before the lane joins its group, so a restarted worker decides with
every whitelisting made before it started. After that the lane follows the topic between batches.
A payment made before a whitelisting (its ``since``) is decided without it. A repeat after a crash
therefore decides as the first time did, unless the whitelisting reached the lane in the moment
between the payment and its first decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from agents.fraud.decision import Whitelisting
from schemas.clock import to_millis
from schemas.codec import Codec, DecodeError
from streams.worker import metrics
from streams.worker.store import partition_bounds

log = logging.getLogger(__name__)


class GlobalTable:
    """A compacted topic read whole, outside the consumer group, and followed between batches;
    subclasses say what a record means (``_apply``). The review queue's depth
    (``streams.worker.review_queue``) is read the same way."""

    def __init__(self, codec: Codec, topic: str) -> None:
        self.codec = codec
        self.topic = topic
        self.consumer: Consumer | None = None

    def start(self, config: Mapping[str, Any], timeout_s: float = 120.0) -> None:
        """Assign every partition from its beginning and read each to its end."""
        consumer = Consumer({**config, "enable.auto.commit": False,
                             "enable.partition.eof": False})
        self.consumer = consumer
        started = time.monotonic()
        deadline = started + timeout_s
        meta = consumer.list_topics(self.topic, timeout=30).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise RuntimeError(f"topic {self.topic} is missing: create the topics first")
        ends = {}
        for p in meta.partitions:
            low, high = partition_bounds(consumer, TopicPartition(self.topic, p), deadline)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {self.topic} to its end took over {timeout_s} s")
            for msg in consumer.consume(num_messages=1_000, timeout=0.5):
                self._apply(msg)
            for tp in consumer.position([TopicPartition(self.topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
        log.info("%s read in %.2f s", self.topic, time.monotonic() - started)

    def poll(self) -> None:
        """Apply what has arrived since the last call, without waiting."""
        if self.consumer is not None:
            for msg in self.consumer.consume(num_messages=1_000, timeout=0):
                self._apply(msg)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def _apply(self, msg: Message) -> None:
        raise NotImplementedError


class WhitelistFeed(GlobalTable):
    """Card token -> ``Whitelisting`` in ``entries``, kept current from the topic."""

    def __init__(self, codec: Codec, topic: str) -> None:
        super().__init__(codec, topic)
        self.entries: dict[str, Whitelisting] = {}

    def _apply(self, msg: Message) -> None:
        if msg.error() is not None:
            log.warning("whitelist consumer error: %s", msg.error())
            return
        value = msg.value()
        if value is None:  # a tombstone: the card has no whitelisting any more
            key = msg.key()
            if key is not None:
                self.entries.pop(key.decode(), None)
        else:
            try:
                rec = self.codec.decode(value, topic=self.topic, expect="whitelist").record
            except DecodeError:  # the case agent wrote it, so a bug: say so, keep the rest
                log.exception("unreadable whitelisting at %s[%s]@%s", self.topic,
                              msg.partition(), msg.offset())
                return
            self.entries[rec["card_token"]] = Whitelisting(
                rec["actor"], to_millis(rec["since"]), to_millis(rec["until"]))
        metrics.WHITELISTED_CARDS.set(len(self.entries))
