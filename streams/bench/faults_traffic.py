"""`rakshit bench faults`' measurements: steady traffic, what a downstream reader sees, and when
verdict latency is back under its target.

Traffic: the pipeline benchmark's handbook transactions (streams.bench.pipeline), sent at a fixed
rate by one thread, each registered with its send time before it is handed to the producer. A
transaction counts as sent once the broker acknowledged it (an idempotent producer: its retries
across a broker outage add no copies).

Latency: from the send time to the moment a read_committed consumer in this process first reads
the transaction's verdict (streams.demo.run.VerdictCollector, as the demo measures it). Receipt
time, not the verdict record's timestamp: a worker's producer stamps a verdict when it hands it to
librdkafka, so verdicts buffered through a broker outage would look fast. Lost and duplicates are
counted afterwards from a full read of the decision topic, not from the live reader.

recovery_s (:func:`recovery_s`): the first whole second k after the fault's end such that the
transactions sent in the ``HOLD_S`` (10) seconds from end + k have a p99 latency under the target
(nearest rank; a transaction without a verdict is infinitely late). 0 when latency was under the
target from the fault's end on; None when no such window fits in the traffic sent after it.
Windows by send time, so a transaction is judged by when the gateway sent it, and the backlog
the fault built up keeps every window that holds much of it above the target; ten seconds (1,000
to 2,000 transactions), so one slow pause of an otherwise recovered worker (a GC, a checkpoint,
a neighbour on a shared machine) does not decide it alone, as it would a 1-s bucket's p99.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer, TopicPartition

from schemas.codec import make_codec
from streams.admin import end_offsets
from streams.config import Settings
from streams.topics import Topic, topic_name

HOLD_S = 10  # buckets in a row under the target that count as recovered
BUCKET_S = 1.0


class SteadyTraffic(threading.Thread):
    """Sends ``records`` (key, value, transaction id) at ``rate`` per second until told to stop
    or out of records; ``sent_at`` holds every send time, ``acked`` the delivered ids."""

    def __init__(self, settings: Settings, records: Sequence[tuple[bytes, bytes, str]],
                 rate: float, on_send: Callable[[str, float], None]) -> None:
        super().__init__(name="fault-traffic", daemon=True)
        self.settings, self.records, self.rate, self.on_send = settings, records, rate, on_send
        self.topic = topic_name(Topic.TRANSACTIONS, settings.topic_prefix)
        self.stop_event = threading.Event()
        self.sent_at: dict[str, float] = {}
        self.acked: set[str] = set()
        self.failed: dict[str, str] = {}
        self.unflushed = 0
        self.exhausted = False

    def run(self) -> None:
        producer = Producer({**self.settings.kafka_config(), "linger.ms": 1,
                             "enable.idempotence": True})
        started = time.monotonic()
        for i, (key, value, tx_id) in enumerate(self.records):
            wait = started + i / self.rate - time.monotonic()
            if self.stop_event.wait(wait) if wait > 0 else self.stop_event.is_set():
                break
            now = time.time()
            self.sent_at[tx_id] = now
            self.on_send(tx_id, now)
            while True:
                try:
                    producer.produce(self.topic, key=key, value=value,
                                     on_delivery=self._delivered(tx_id))
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        else:
            self.exhausted = True
        self.unflushed = producer.flush(120)

    def _delivered(self, tx_id: str) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self.acked.add(tx_id)
            else:
                self.failed[tx_id] = str(err)

        return report


@dataclass
class Tally:
    """What the decision topic holds: verdicts by transaction, in log order."""

    by_tx: dict[str, list[bytes]] = field(default_factory=dict)
    verdict_ids: set[str] = field(default_factory=set)
    records: int = 0

    def lost(self, sent: set[str]) -> int:
        return len(sent - set(self.by_tx))

    def duplicates(self) -> int:
        return sum(len(vs) - 1 for vs in self.by_tx.values())

    def identical(self) -> bool:
        return not self.differing()

    def differing(self) -> list[str]:
        """The transactions with a verdict that is not byte for byte their first."""
        return [tx for tx, vs in self.by_tx.items() if any(v != vs[0] for v in vs[1:])]

    def how_they_differ(self, settings: Settings, limit: int = 3) -> list[dict[str, Any]]:
        """For a few differing transactions, the fields their first two verdicts disagree on."""
        topic = topic_name(Topic.DECISIONS, settings.topic_prefix)
        codec = make_codec(settings.schema_registry_url)
        out = []
        for tx in self.differing()[:limit]:
            first, other = (codec.decode(v, topic=topic, expect="verdict").record
                            for v in next((vs[0], v) for vs in [self.by_tx[tx]]
                                          for v in vs[1:] if v != vs[0]))
            out.append({"transaction_id": tx, "fields": {
                k: [str(first.get(k)), str(other.get(k))]
                for k in sorted(set(first) | set(other)) if first.get(k) != other.get(k)}})
        return out


def read_to_end(settings: Settings, topic: str,
                timeout_s: float = 120.0) -> list[tuple[bytes | None, bytes]]:
    """Every record (key, value) of ``topic`` as a read_committed consumer sees it, read to the
    end offsets asked for first."""
    from confluent_kafka import Consumer

    ends = end_offsets(settings, topic)
    consumer = Consumer({**settings.kafka_config(), "group.id": f"rakshit-faults-{time.time_ns()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    todo = {p for p, end in ends.items() if end > 0}
    out: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while todo:
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading {topic}: partitions {sorted(todo)} not read to their "
                                   f"end within {timeout_s:.0f}s")
            for msg in consumer.consume(num_messages=5_000, timeout=0.5):
                if msg.error():
                    continue
                out.append((msg.key(), msg.value() or b""))
            # Positions, not the last offsets read: they step over transaction markers.
            for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                if tp.offset >= ends[tp.partition]:
                    todo.discard(tp.partition)
    finally:
        consumer.close()
    return out


def read_decisions(settings: Settings, timeout_s: float = 120.0) -> Tally:
    """The decision topic's verdicts, by transaction in log order."""
    topic = topic_name(Topic.DECISIONS, settings.topic_prefix)
    codec = make_codec(settings.schema_registry_url)
    by_tx: dict[str, list[bytes]] = defaultdict(list)
    tally = Tally()
    for _, value in read_to_end(settings, topic, timeout_s):
        verdict = codec.decode(value, topic=topic, expect="verdict").record
        by_tx[verdict["transaction_id"]].append(value)
        tally.verdict_ids.add(str(verdict["verdict_id"]))
        tally.records += 1
    tally.by_tx = dict(by_tx)
    return tally


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``th percentile (exact with infinite values); NaN without values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


def p99(values: Sequence[float]) -> float:
    return percentile(values, 99.0)


def since_end(sent_at: Mapping[str, float], seen_at: Mapping[str, float],
              fault_end: float) -> list[tuple[float, float]]:
    """(seconds after the fault's end it was sent, latency in ms) of every transaction sent
    from then on; a transaction without a verdict is infinitely late."""
    out = []
    for tx_id, sent in sent_at.items():
        if sent >= fault_end:
            seen = seen_at.get(tx_id)
            out.append((sent - fault_end, math.inf if seen is None else (seen - sent) * 1000.0))
    return sorted(out)


def p99_by_second(samples: Sequence[tuple[float, float]]) -> list[float]:
    """p99 latency (ms) of each second's transactions (for the summary, not the verdict)."""
    buckets: dict[int, list[float]] = defaultdict(list)
    for at, latency in samples:
        buckets[int(at // BUCKET_S)].append(latency)
    return [p99(buckets.get(k, [])) for k in range(max(buckets) + 1)] if buckets else []


def recovery_s(samples: Sequence[tuple[float, float]], target_ms: float,
               window_s: float = HOLD_S) -> float | None:
    """The first k (whole seconds from the fault's end) such that the transactions sent in
    [k, k + window_s) have a p99 latency under ``target_ms``; None when no window that fits in
    the traffic sent after the fault qualifies. ``samples`` as :func:`since_end` makes them."""
    if not samples:
        return None
    horizon = samples[-1][0]
    k = 0
    while k + window_s <= horizon + BUCKET_S:
        window = [lat for at, lat in samples if k <= at < k + window_s]
        if window and p99(window) < target_ms:
            return float(k)
        k += 1
    return None


def backlog_gone_s(samples: Sequence[tuple[float, float]], target_ms: float,
                   hold: int = HOLD_S) -> float | None:
    """The first k from which ``hold`` seconds in a row each have a median latency under
    ``target_ms``: when the fault's backlog is gone, whatever the machine's tail does; None
    when that never happens in the traffic sent after the fault."""
    buckets: dict[int, list[float]] = defaultdict(list)
    for at, latency in samples:
        buckets[int(at // BUCKET_S)].append(latency)
    last = max(buckets, default=-1)
    for k in range(0, last - hold + 2):
        if all(percentile(buckets.get(j, []), 50.0) < target_ms for j in range(k, k + hold)):
            return float(k)
    return None
