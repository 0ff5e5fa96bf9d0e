"""One producer for everything the lane writes, and the rule that ties offsets to deliveries.

Every record sent belongs to the open *epoch*. A checkpoint closes the epoch with the input offsets
it covers and opens the next one; processing goes on at once. A closed epoch becomes committable
when every record sent in it has been acknowledged by the broker and every older epoch has been
committed, so an offset is committed only after the outputs (verdicts, changelogs, hand-overs) of
every record before it are durable: a crash repeats work, never skips it. No flush stalls the loop
on the way (quix-streams' checkpoint flushes; this one counts acknowledgements instead).

    outbox = Outbox(producer)
    outbox.send("rakshit.decisions", key, value)
    outbox.close_epoch({("rakshit.transactions", 3): 1042})
    ...
    offsets = outbox.committable()   # {} until the broker has acknowledged the epoch
"""

from __future__ import annotations

import logging
from collections import deque

from confluent_kafka import KafkaError, Message, Producer

from streams.worker import metrics

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]


class DeliveryFailed(RuntimeError):
    """The broker refused or timed out a record after the producer's own retries: the offsets of
    its epoch must never be committed, so the lane stops and a restart repeats the work."""


class Epoch:
    __slots__ = ("acked", "delivered", "errors", "inflight", "metadata", "number", "offsets",
                 "watched")

    def __init__(self, number: int, watched: str | None = None,
                 acked: dict[int, int] | None = None) -> None:
        self.number = number
        self.delivered = self._delivered  # bound once: produce() is called for every record
        self.inflight = 0
        self.offsets: Offsets = {}
        self.metadata: dict[tuple[str, int], str] = {}
        self.errors: list[str] = []
        self.watched = watched
        self.acked = acked if acked is not None else {}

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        self.inflight -= 1
        if err is not None:
            self.errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")
        elif self.watched is not None and msg.topic() == self.watched:
            partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            if offset > self.acked.get(partition, -1):
                self.acked[partition] = offset


class Outbox:
    """``watched``: a topic whose highest acknowledged offset per partition is kept in
    ``acked`` (the lane's decision topic: where a restart starts reading its own verdicts)."""

    def __init__(self, producer: Producer, watched: str | None = None) -> None:
        self.producer = producer
        self.watched = watched
        self.acked: dict[int, int] = {}
        self.open = Epoch(0, watched, self.acked)
        self.closed: deque[Epoch] = deque()
        self.sent: dict[str, int] = {}
        self.metadata: dict[tuple[str, int], str] = {}  # of the offsets committable() returned

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None = None) -> None:
        """Hand a record to the producer (no value: a tombstone); a full queue is waited out,
        never dropped."""
        epoch = self.open
        while True:
            try:  # positional: produce(topic, value, key, partition, on_delivery); -1 = by key
                self.producer.produce(topic, value, key, -1 if partition is None else partition,
                                      epoch.delivered)
                break
            except BufferError:
                metrics.SEND_RETRIES.labels(topic).inc()
                self.producer.poll(0.05)
        epoch.inflight += 1
        self.sent[topic] = self.sent.get(topic, 0) + 1

    def close_epoch(self, offsets: Offsets,
                    metadata: dict[tuple[str, int], str] | None = None) -> None:
        """The records processed so far are covered by ``offsets``; later sends open a new epoch.
        ``metadata`` goes with the offsets it names when they are committed (``metadata``)."""
        epoch = self.open
        epoch.offsets = dict(offsets)
        epoch.metadata = dict(metadata or {})
        self.closed.append(epoch)
        self.open = Epoch(epoch.number + 1, self.watched, self.acked)

    def committable(self) -> Offsets:
        """Offsets of every closed epoch now fully acknowledged, oldest first (later wins)."""
        self.producer.poll(0)
        ready: Offsets = {}
        while self.closed and self.closed[0].inflight == 0:
            epoch = self.closed.popleft()
            if epoch.errors:
                raise DeliveryFailed(f"{len(epoch.errors)} record(s) not delivered, first: "
                                     f"{epoch.errors[0]}")
            ready.update(epoch.offsets)
            self.metadata.update(epoch.metadata)
        return ready

    def drain(self, timeout_s: float = 30.0) -> Offsets:
        """Wait for every delivery, then return what is committable (a rebalance or a stop; the
        caller closes the epoch first)."""
        remaining = self.producer.flush(timeout_s)
        if remaining:
            raise DeliveryFailed(f"{remaining} record(s) still undelivered after {timeout_s} s")
        return self.committable()

    def flush_counts(self) -> dict[str, int]:
        counts, self.sent = self.sent, {}
        return counts
