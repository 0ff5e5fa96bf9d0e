"""The benchmark's ceiling: transactions forwarded untouched with confluent-kafka alone.

`rakshit bench pipeline` compares the worker with two passthroughs measured in the same run, on the
same machine, topics and pre-encoded records. The Faust passthrough (streams.worker.app) says what
Faust's client costs per record before any work. This one says what Kafka and librdkafka alone cost:
a consumer reading batches, a producer forwarding each record's key and value to the decision topic,
and nothing else. No worker built on these clients can beat it, so the worker's share of it is the
honest measure of what its work costs.

It keeps the worker's guarantee, at least once: offsets are committed only after the producer has
flushed every record forwarded before them (every commit interval, on a revocation and at
shutdown), and a record the broker refused stops the loop before its offset can be committed, so a
restart forwards it again.

    rakshit worker --passthrough raw
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import start_http_server

from streams.config import Settings
from streams.topics import Topic, topic_name
from streams.worker import metrics

log = logging.getLogger(__name__)

BATCH = 1000
POLL_TIMEOUT_S = 0.05

Offsets = dict[tuple[str, int], int]


class DeliveryFailed(RuntimeError):
    """The broker refused a forwarded record after the producer's retries: the offsets covering it
    are never committed, and a restart forwards it again."""


class RawPassthrough:
    """One consumer, one producer, offsets committed behind the producer's flush."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.source = topic_name(Topic.TRANSACTIONS, settings.topic_prefix)
        self.sink = topic_name(Topic.DECISIONS, settings.topic_prefix)
        self.pending: Offsets = {}  # (topic, partition) -> next offset to read, not committed yet
        self.failures: list[str] = []
        self.stopping = False
        self.producer = Producer({
            **settings.kafka_config(),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            # Only failures call back: a callback per delivered record would be Python work per
            # record, which is what this baseline must not add.
            "delivery.report.only.error": True,
            "on_delivery": self._delivered,
        })
        self.consumer = Consumer({
            **settings.kafka_config(),
            "group.id": settings.app_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # As the worker's: a killed member's partitions move within seconds.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
        })

    # -- callbacks -----------------------------------------------------------------------------

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", sorted(tp.partition for tp in partitions))
        metrics.WORKER_READY.set(1)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before a partition moves, what was forwarded from it is flushed and committed, so its
        next owner starts where this one stopped (a failed commit only repeats records)."""
        metrics.WORKER_READY.set(0)
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        try:
            self.checkpoint(only=revoked)
        except (KafkaException, DeliveryFailed) as exc:
            log.warning("commit on revocation failed (records will be forwarded again): %s", exc)
        for key in revoked:
            self.pending.pop(key, None)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost partitions already belong to someone else: their offsets cannot be committed."""
        metrics.WORKER_READY.set(0)
        for tp in partitions:
            self.pending.pop((tp.topic, tp.partition), None)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    # -- the loop ------------------------------------------------------------------------------

    def forward(self, batch: list[Message]) -> int:
        sent = 0
        for msg in batch:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err.str())
                continue
            while True:
                try:
                    self.producer.produce(self.sink, msg.value(), msg.key())
                    break
                except BufferError:
                    metrics.SEND_RETRIES.labels(self.sink).inc()
                    self.producer.poll(0.05)
            self.pending[(self.source, msg.partition() or 0)] = (msg.offset() or 0) + 1
            sent += 1
        self.producer.poll(0)
        return sent

    def checkpoint(self, only: set[tuple[str, int]] | None = None) -> None:
        """Flush the producer, then commit the next offsets of what was forwarded."""
        offsets = {k: v for k, v in self.pending.items() if only is None or k in only}
        if not offsets:
            return
        while self.producer.flush(1.0):
            log.info("waiting for the broker to acknowledge forwarded records")
        if self.failures:
            raise DeliveryFailed(f"{len(self.failures)} records not delivered, offsets not "
                                 f"committed; first: {self.failures[0]}")
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                             asynchronous=False)
        for key, offset in offsets.items():
            if self.pending.get(key) == offset:
                del self.pending[key]

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        metrics.WORKER_READY.set(0)
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port, addr=self.settings.metrics_addr)
        self.consumer.subscribe([self.source], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("raw passthrough %s -> %s as group %s", self.source, self.sink,
                 self.settings.app_id)
        events_in = metrics.EVENTS_IN.labels(self.source)
        events_out = metrics.EVENTS_OUT.labels(self.sink)
        interval = self.settings.commit_interval_s
        next_commit = time.monotonic() + interval
        try:
            while not self.stopping:
                batch = self.consumer.consume(num_messages=BATCH, timeout=POLL_TIMEOUT_S)
                if batch:
                    events_in.inc(len(batch))
                    events_out.inc(self.forward(batch))
                else:
                    self.producer.poll(0)
                if time.monotonic() >= next_commit:
                    self.checkpoint()
                    next_commit = time.monotonic() + interval
            self.checkpoint()
        finally:
            metrics.WORKER_READY.set(0)
            # close() leaves the group; its revocation commits anything forwarded since.
            self.consumer.close()
            self.producer.flush(30)
        log.info("raw passthrough stopped")


def run_raw_passthrough(settings: Settings) -> None:
    """Block forwarding transactions to the decision topic until SIGTERM/SIGINT."""
    RawPassthrough(settings).run()
