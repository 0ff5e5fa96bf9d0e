"""The fraud lane: transactions to verdicts in batches, on confluent-kafka, inside `rakshit worker`.

One consumer (group ``<app id>-fraud``, range assignment so a card's transactions and outcomes
partitions land on the same worker) reads four topics and one loop works each batch:

    transactions (by card) --card stage--> scoring-by-terminal (by terminal) --terminal stage-->
    labels (by card) -------/                                               decisions, cases,
    authorization outcomes --card decline history, then one batch ------>   notifications
                               record to route-outcomes (Faust's routing agent takes it from there)

The card and terminal stages are ``streams.worker.stages``; this module owns only what Kafka
needs: state per partition (``streams.worker.store``), the watermark gate
(``streams.worker.watermarks``), the whitelist and the review queue's depth the decisions read
(``streams.worker.whitelist``, ``streams.worker.review_queue``: each the whole topic, with its
own consumer outside the group) and the checkpoint, which every
``commit_interval_s``

1. writes one changelog record per state key changed since the last checkpoint,
2. closes the outbox's epoch with the offsets of everything processed so far, and
3. commits the offsets of every epoch whose records the broker has acknowledged.

Processing never waits for a commit. A newly assigned partition's state is read from its changelog
inside the assignment callback, before any of its records is processed. At-least-once: a crash
repeats the records after the last commit, and because state is idempotent per transaction id the
repeated verdicts equal the first ones.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from agents.fraud.pipeline import DecisionPipeline
from schemas.clock import to_millis
from schemas.codec import Codec, make_codec
from scoring import features as F
from scoring import retention
from streams.config import Settings
from streams.topics import DEAD_LETTER_MAX_BYTES, Topic, topic_name
from streams.worker import metrics
from streams.worker.admission import (
    Admitted,
    Output,
    Processor,
    Source,
    internal_error,
)
from streams.worker.casework import CaseStage
from streams.worker.chain import build_pipeline
from streams.worker.collector import BatchCollector
from streams.worker.learning import Learning
from streams.worker.outbox import Offsets, Outbox
from streams.worker.review_queue import ReviewQueueFeed
from streams.worker.routing import RoutingStage
from streams.worker.stages import (
    SCORED_NAMES,
    CardStage,
    Prepared,
    TerminalStage,
    is_hand_over,
    is_watermark,
    watermark_event,
)
from streams.worker.store import Store, partition_bounds, read_back, recover
from streams.worker.watermarks import CAUGHT_UP, WatermarkGate, source
from streams.worker.whitelist import WhitelistFeed

log = logging.getLogger(__name__)

BATCH = 2_000  # records per consume call, at most
POLL_S = 0.05  # wait for the first record of a batch at most this long
MARK_EVERY_S = 0.1  # watermark events to every terminal partition this often
MAX_HOLD_S = 30.0  # a decision waits for watermarks at most this long (then says so)
LAG_EVERY_S = 5.0
# Fewer, larger requests: at 1,000 tx/s with linger 1 ms and fetches answered at the first byte,
# the broker spent most of a core on tiny requests and every process queued for CPU. Each also
# bounds what a hop adds at a low rate, where a record waits out the whole linger and fetch wait.
# Measured 2026-12-06 (`rakshit demo --scenario mixed`): linger 5 ms took the broker from 53% to
# 44% of a core at 1,000 tx/s (demo p50 1.6 s -> 0.3 s) but the p50 at 100 tx/s up by about 10 ms;
# fetches answered at the first byte took the p50 at 100 tx/s from 20 to 14 ms and the broker at
# 1,000 tx/s to 66%. These values keep the low rate's latency; the high rate needs CPU headroom.
# Verdicts read back after a restart wait this long for their transactions to come round again.
REDO_KEEP_S = 300.0
# How long a synchronous commit (a rebalance, a stop) may take before it is given up.
COMMIT_WAIT_S = 5.0
# Keys each store's expiry looks at per checkpoint (streams.worker.store.Store.expire): `rakshit
# bench state` measures it (about 2 ms when none is due, 12 ms when all are: freeing them); at
# one checkpoint a second a pass over 300,000 keys takes two and a half minutes.
EXPIRE_KEYS = 2_000
LINGER_MS = 2
FETCH_WAIT_MS = 5
FETCH_MIN_BYTES = 64 * 1024


def changelog_topic(settings: Settings, store: str) -> str:
    """``<app id>-<store>-changelog``: run-scoped clean-up (streams.admin) finds it by app id."""
    return f"{settings.app_id}-{store}-changelog"


@dataclass
class Held:
    """A transaction the terminal stage has observed but may not decide yet (watermarks)."""

    offset: int
    hand_over: dict[str, Any]
    t_ms: int
    started: float


class FraudLane:
    """The hot path. ``run()`` blocks until ``stop()``; ``ready`` once partitions are recovered."""

    def __init__(self, settings: Settings, codec: Codec | None = None,
                 pipeline: DecisionPipeline | None = None) -> None:
        self.settings = settings
        self.codec = codec or make_codec(settings.schema_registry_url)
        prefix = settings.topic_prefix
        self.admission = Processor(settings, self.codec)
        self.card_stage = CardStage(self.codec, prefix)
        pipeline = pipeline or build_pipeline(settings)  # tests pass their own
        self.cards = Store("card-state", changelog_topic(settings, "card-state"))
        self.terminals = Store("terminal-state", changelog_topic(settings, "terminal-state"))
        # What each scoring partition learned lives in its terminal state (streams.worker.learning).
        self.learning = Learning(pipeline, self.terminals, SCORED_NAMES)
        self.terminal_stage = TerminalStage(self.codec, pipeline, prefix, learning=self.learning)
        self.decisions = topic_name(Topic.DECISIONS, prefix)
        self.quality_topic = topic_name(Topic.MODEL_QUALITY, prefix)
        # Verdicts already published for transactions a restart reads again: sent again as they
        # were, never decided twice (``_read_back``).
        self.redo: dict[str, bytes] = {}
        self.redo_until = 0.0
        self.read_from: set[frozenset[tuple[int, int]]] = set()  # positions already read back
        # Partitions read again after a restart or rebalance: (up to which offset, the decision
        # topic's ends at their last commit). A card partition's hand-overs say where their
        # verdicts may be; and until the replay is over, each commit keeps those ends.
        self.replays: dict[tuple[str, int], tuple[int, dict[str, int]]] = {}
        self.decision_partitions = 0
        self.whitelist = WhitelistFeed(self.codec, topic_name(Topic.WHITELIST, prefix))
        self.terminal_stage.whitelist = self.whitelist.entries
        self.queue = ReviewQueueFeed(self.codec, topic_name(Topic.REVIEW_QUEUE, prefix),
                                     settings.review_capacity)
        self.terminal_stage.review_queue = self.queue.load
        self.cases = CaseStage(self.codec, prefix)
        self.routing = RoutingStage(self.codec, prefix, {})
        self.topics = {t: topic_name(t, prefix) for t in (
            Topic.TRANSACTIONS, Topic.LABELS, Topic.AUTH_OUTCOMES, Topic.SCORING)}
        self._stop = threading.Event()
        self.ready = False
        self.next_offsets: Offsets = {}
        self.held: dict[int, deque[Held]] = {}
        self.pending: list[Prepared] = []  # decidable, decided together at the batch's end
        self.marks: dict[tuple[str, int], int] = {}  # (topic, partition) -> event time handed over
        self.changelog_end: dict[tuple[str, int], int] = {}
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self.outbox: Outbox | None = None
        self.gate: WatermarkGate | None = None
        self.terminal_partitions = 0
        self.collector: BatchCollector | None = None

    # -- set-up ------------------------------------------------------------------------------

    def _ensure_changelogs(self) -> None:
        from streams.admin import admin_client, wait_for_leaders

        admin = admin_client(self.settings)
        meta = admin.list_topics(timeout=30).topics
        wanted = []
        for store, source_topic in ((self.cards, Topic.TRANSACTIONS),
                                    (self.terminals, Topic.SCORING)):
            if store.changelog in meta:
                continue
            parts = len(meta[self.topics[source_topic]].partitions)
            wanted.append(NewTopic(store.changelog, num_partitions=parts, replication_factor=1,
                                   config={"cleanup.policy": "compact"}))
        for future in (admin.create_topics(wanted).values() if wanted else ()):
            try:
                future.result()
            except Exception as exc:  # another worker created it first
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
        # Created a moment ago (here or by another worker starting beside this one): recovery
        # reads their offsets at once, which a partition without a leader yet refuses.
        wait_for_leaders(admin, [self.cards.changelog, self.terminals.changelog], 60.0)
        counts = {t: len(meta[self.topics[t]].partitions)
                  for t in (Topic.TRANSACTIONS, Topic.LABELS, Topic.SCORING)}
        self.gate = WatermarkGate(counts[Topic.TRANSACTIONS], counts[Topic.LABELS])
        self.terminal_partitions = counts[Topic.SCORING]
        self.decision_partitions = len(meta[self.decisions].partitions)

    def _connect(self) -> None:
        self.producer = Producer({
            **self._base, "acks": "all", "enable.idempotence": True,
            "linger.ms": LINGER_MS,
            # Java's partitioner, so terminal ids land where any other client would put them.
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 1_000_000,
            "message.max.bytes": DEAD_LETTER_MAX_BYTES + 64 * 1024})
        self.outbox = Outbox(self.producer, watched=self.decisions)
        self.consumer = Consumer({
            **self._base, "group.id": f"{self.settings.app_id}-fraud",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",
            # A killed worker's partitions move once its session expires: 10 s, not 45.
            "session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": FETCH_WAIT_MS, "fetch.min.bytes": FETCH_MIN_BYTES})
        # Where this worker's verdicts start: what the decision topic holds already.
        for p in range(self.decision_partitions):
            tp = TopicPartition(self.decisions, p)
            self.outbox.acked[p] = partition_bounds(self.consumer, tp, time.monotonic() + 60)[1] - 1
        self.consumer.subscribe(list(self.topics.values()), on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    # -- rebalances --------------------------------------------------------------------------

    def _store_for(self, topic: str) -> Store | None:
        if topic == self.topics[Topic.SCORING]:
            return self.terminals
        if topic in (self.topics[Topic.TRANSACTIONS], self.topics[Topic.AUTH_OUTCOMES]):
            return self.cards
        return None

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Recover the state of every newly owned partition before any of its records is read.

        A partition this worker still holds from before the rebalance keeps its state if nobody
        wrote its changelog since (its end offset is where this worker left it)."""
        self.ready = False
        wanted: dict[Store, set[int]] = {self.cards: set(), self.terminals: set()}
        for tp in partitions:
            store = self._store_for(tp.topic)
            if store is not None:
                wanted[store].add(tp.partition)
            if tp.topic == self.topics[Topic.SCORING]:
                self.held.setdefault(tp.partition, deque())
        # Where each partition resumes: what the watermarks and lag read before a first record.
        decided_from: dict[int, dict[int, int]] = {}
        for tp in consumer.committed(partitions, timeout=30):
            start = tp.offset
            if start < 0:  # never committed: auto.offset.reset is earliest
                start = consumer.get_watermark_offsets(tp, timeout=10, cached=False)[0]
            self.next_offsets[(tp.topic, tp.partition)] = start
            self.replays.pop((tp.topic, tp.partition), None)
            if tp.metadata and tp.topic in (self.topics[Topic.SCORING],
                                            self.topics[Topic.TRANSACTIONS]):
                stood = _decided_from(tp.metadata)
                high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                if stood and start < high:  # records to read again, some perhaps decided
                    self.replays[(tp.topic, tp.partition)] = (
                        high, {str(p): o for p, o in stood.items()})
                    if tp.topic == self.topics[Topic.SCORING]:
                        decided_from[tp.partition] = stood
        recovered: list[int] = []
        for store, owned in wanted.items():
            for p in list(store.partitions):
                if p not in owned:
                    store.drop(p)
                    if store is self.terminals:
                        self.learning.drop(p)
            for p in sorted(owned):
                left_at = self.changelog_end.pop((store.name, p), None)
                if store.owns(p) and left_at == self._changelog_high(store, p):
                    continue
                table, read, seconds = recover(self._base, store.changelog, p)
                store.adopt(p, table)
                if store is self.terminals:
                    self.learning.adopt(p)
                    recovered.append(p)
                metrics.STATE_RECOVERY.labels(store.name).observe(seconds)
                log.info("recovered %s[%d]: %d keys from %d changelog records in %.2f s",
                         store.name, p, len(table), read, seconds)
        if recovered:
            self.terminal_stage.report_learning()  # what the recovered partitions had learned
        # Every scoring partition with records to read again, recovered or kept: a partition kept
        # through a lost session re-reads what this very process may have decided already.
        self._read_back(list(decided_from.values()))
        if self.collector is not None:  # the recovered state: long-lived, never walked again
            self.collector.full()
        self.ready = True
        log.info("fraud lane assigned %d partitions", len(partitions))

    def _read_back(self, positions: list[dict[int, int]]) -> None:
        """Read back the verdicts published since the checkpoints the recovered partitions
        resume from: the transactions they read again that were decided before the crash are
        sent those verdicts again, byte for byte (``_prepare``), not decided a second time.

        Every verdict for a record after a committed offset was published after that commit's
        checkpoint, which wrote the decision topic's acknowledged ends into the commit's
        metadata (``_checkpoint``); so reading from there finds them all."""
        positions = [p for p in positions if frozenset(p.items()) not in self.read_from]
        if not positions:
            return
        self.read_from.update(frozenset(p.items()) for p in positions)
        starts: dict[int, int] = {}
        for position in positions:
            for p, offset in position.items():
                starts[p] = min(offset, starts.get(p, offset))
        t0 = time.monotonic()
        found, read = read_back(self._base, self.decisions, starts)
        self.redo.update(found)
        self.redo_until = time.monotonic() + REDO_KEEP_S
        log.warning("read back %d verdicts (%d records) published since the last commit in %.2f s",
                 len(found), read, time.monotonic() - t0)

    def _changelog_high(self, store: Store, partition: int) -> int:
        assert self.consumer is not None
        tp = TopicPartition(store.changelog, partition)
        return partition_bounds(self.consumer, tp, time.monotonic() + 60.0)[1]

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Hand the partitions over clean: everything done so far durable and committed."""
        self.ready = False
        try:
            self._checkpoint(wait=True)
            for store in (self.cards, self.terminals):
                for p in store.partitions:
                    self.changelog_end[(store.name, p)] = self._changelog_high(store, p)
        except Exception:
            log.exception("checkpoint before a rebalance failed; the next owner repeats the work")
            self.changelog_end.clear()
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.ready = False
        self.changelog_end.clear()
        for store in (self.cards, self.terminals):
            for p in list(store.partitions):
                store.drop(p)
                if store is self.terminals:
                    self.learning.drop(p)
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        """Offsets and held decisions of partitions given up (state: see assign). The gate's
        watermarks stay: what a card partition has handed over stays true whoever reads it, and
        forgetting would hold every decision until a dead worker's partitions found an owner."""
        for tp in partitions:
            self.next_offsets.pop((tp.topic, tp.partition), None)
            self.marks.pop((tp.topic, tp.partition), None)
            if tp.topic == self.topics[Topic.SCORING]:
                self.held.pop(tp.partition, None)

    # -- the loop ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self._ensure_changelogs()
        # Every whitelisting made so far, before the first decision (streams.worker.whitelist).
        self.whitelist.start({**self._base, "group.id": f"{self.settings.app_id}-whitelist"})
        # And the review queue's depth (streams.worker.review_queue).
        self.queue.start({**self._base, "group.id": f"{self.settings.app_id}-review-queue"})
        self._connect()
        assert self.consumer is not None and self.outbox is not None
        consumer = self.consumer
        collector = self.collector = BatchCollector()
        checkpoint_at = marks_at = lag_at = time.monotonic()
        try:
            while not self._stop.is_set():
                first = consumer.poll(POLL_S)
                batch = [first] if first is not None else []
                if first is not None:
                    batch += consumer.consume(num_messages=BATCH - 1, timeout=0)
                if batch:
                    self._process(batch)
                now = time.monotonic()
                self._release_held(time.time())
                self._decide_pending()
                if now - marks_at >= MARK_EVERY_S:
                    marks_at = now
                    self._send_marks()
                    self.whitelist.poll()
                    self.queue.poll()
                if now - checkpoint_at >= self.settings.commit_interval_s:
                    checkpoint_at = now
                    self._checkpoint(wait=False)
                else:
                    self.outbox.producer.poll(0)
                if now - lag_at >= LAG_EVERY_S:
                    lag_at = now
                    self._report_lag()
                collector.after_batch()
            self._checkpoint(wait=True)
        finally:
            collector.close()
            consumer.close()
            self.whitelist.close()
            self.queue.close()

    def _process(self, batch: list[Message]) -> None:
        assert self.outbox is not None
        started = time.perf_counter()
        received = time.time()
        tx_topic = self.topics[Topic.TRANSACTIONS]
        scoring_topic = self.topics[Topic.SCORING]
        labels_topic = self.topics[Topic.LABELS]
        outcome_raws: list[bytes] = []
        timings = {"card": 0.0, "terminal": 0.0}
        for msg in batch:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), \
                int(msg.offset() or 0)
            ts_type, ts = msg.timestamp()
            src = Source(topic, partition, offset, msg.key(), float(ts) if ts_type else None)
            t0 = time.perf_counter()
            if topic == scoring_topic:
                self._terminal(msg.value() or b"", src, received)
                timings["terminal"] += time.perf_counter() - t0
            else:
                if topic == tx_topic:
                    self._card(msg.value(), src, received)
                elif topic == labels_topic:
                    self._label(msg.value(), src)
                else:
                    raw = self._outcome(msg.value(), src)
                    if raw is not None:
                        outcome_raws.append(raw)
                timings["card"] += time.perf_counter() - t0
            self.next_offsets[(topic, partition)] = offset + 1
        self._decide_pending()
        if outcome_raws:
            self._send(self.routing.hand_over(outcome_raws))
        for stage, seconds in timings.items():
            if seconds:
                metrics.child(metrics.STAGE_SECONDS, stage).observe(seconds)
        metrics.BATCH_RECORDS.observe(len(batch))
        metrics.child(metrics.STAGE_SECONDS, "batch").observe(time.perf_counter() - started)

    @property
    def _base(self) -> dict[str, Any]:
        """The clients' connection settings, the login included: read when the lane connects,
        so a lane fed in memory (streams.worker.local) needs no broker and no password."""
        return {**self.settings.kafka_config()}

    def _send(self, out: Output) -> None:
        assert self.outbox is not None
        self.outbox.send(out.topic, out.key, out.value)
        metrics.child(metrics.EVENTS_OUT, out.topic).inc()

    # -- card stage --------------------------------------------------------------------------

    def _card(self, raw: bytes | None, src: Source, received: float) -> None:
        admitted = self.admission.admit(raw, src, "transaction")
        if not isinstance(admitted, Admitted):
            self._send(admitted)
            return
        tx = admitted.record
        card = tx["card_token"]
        t_ms = to_millis(tx["event_time"])
        key = (src.topic, src.partition)
        self.marks[key] = max(self.marks.get(key, t_ms), t_ms)
        try:
            table = self.cards.table(src.partition)
            stored = table.get(card) or {}
            state, amounts, row = self.card_stage.features(
                stored.get("features") or None, tx, stored.get("amounts", []),
                stored.get("outcomes"))
            self.cards.put(src.partition, card, {**stored, "features": state,
                                                 "amounts": amounts})
            stale = None
        except Exception:  # the feature store failed: decide on what we last knew
            log.exception("card state unavailable for a transaction; using cached features")
            metrics.FEATURE_STORE_ERRORS.inc()
            cached = self.card_stage.cached(card)
            row, stale = (cached[0], received - cached[1]) if cached else ({}, 1e9)
            amounts = []
        replay = self.replays.get(key)
        decided_from = replay[1] if replay is not None and src.offset < replay[0] else None
        self._send(self.card_stage.hand_over(tx, row, amounts, src, received, stale,
                                             decided_from))

    def _label(self, raw: bytes | None, src: Source) -> None:
        admitted = self.admission.admit(raw, src, "label")
        if not isinstance(admitted, Admitted):
            self._send(admitted)
            return
        label = admitted.record
        known = to_millis(label["known_at"])
        key = (src.topic, src.partition)
        self.marks[key] = max(self.marks.get(key, known), known)
        out = self.card_stage.forward_label(label)
        if out is None:
            metrics.LABELS_WITHOUT_TERMINAL.inc()
        else:
            self._send(out)

    def _outcome(self, raw: bytes | None, src: Source) -> bytes | None:
        admitted = self.admission.admit(raw, src, "authorization_outcome")
        if not isinstance(admitted, Admitted):
            self._send(admitted)
            return None
        rec = admitted.record
        card = rec["card_token"]
        try:
            table = self.cards.table(src.partition)
            stored = table.get(card) or {}
            self.cards.put(src.partition, card, {**stored, "outcomes": F.card_outcome_observe(
                stored.get("outcomes"), rec["transaction_id"], to_millis(rec["event_time"]),
                rec["result"])})
        except Exception:  # the feature store failed: routing still gets the outcome
            log.exception("card state unavailable for an outcome")
            metrics.FEATURE_STORE_ERRORS.inc()
        return raw

    def _send_marks(self) -> None:
        """Tell every terminal partition how far each owned input partition has been handed over."""
        assert self.consumer is not None and self.outbox is not None
        marks: dict[str, int] = {}
        kinds = {self.topics[Topic.TRANSACTIONS]: "transactions",
                 self.topics[Topic.LABELS]: "labels"}
        try:
            assignment = self.consumer.assignment()
        except Exception:
            return
        for tp in assignment:
            kind = kinds.get(tp.topic)
            if kind is None:
                continue
            done = self.next_offsets.get((tp.topic, tp.partition))
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if done is not None and high >= 0 and done >= high:
                marks[source(kind, tp.partition)] = CAUGHT_UP
            elif (tp.topic, tp.partition) in self.marks:
                marks[source(kind, tp.partition)] = self.marks[(tp.topic, tp.partition)]
        if not marks:
            return
        topic = self.topics[Topic.SCORING]
        value = self.codec.encode("scoring_event", watermark_event(marks), topic=topic)
        for q in range(self.terminal_partitions):
            self.outbox.send(topic, b"watermark", value, partition=q)

    # -- terminal stage ----------------------------------------------------------------------

    def _terminal(self, raw: bytes, src: Source, received: float) -> None:
        assert self.gate is not None
        metrics.child(metrics.EVENTS_IN, src.topic).inc()
        try:
            body = self.terminal_stage.decode(raw)
        except Exception as exc:  # our own topic, so a bug: keep the record, say why
            self._send(self.admission.dead_letter(raw, src, internal_error(exc)))
            return
        q = src.partition
        if is_watermark(body):
            self.gate.update(q, body["watermarks"])
            self._release(q, time.time())
            return
        table = self.terminals.table(q)
        if not is_hand_over(body):  # a label
            self._put_all(q, self.terminal_stage.observe_label(table, body))
            self.terminal_stage.queue_label(body, q, src.offset)
            return
        tx = body["transaction"]
        t_ms = to_millis(tx["event_time"])
        held = self.held[q]
        if held or not self.gate.ready(q, t_ms):
            # Observed now (later decisions count it), decided once the watermarks allow.
            self._put_all(q, self.terminal_stage.observe(table, tx))
            held.append(Held(src.offset, body, t_ms, received))
            metrics.HELD_DECISIONS.set(sum(len(h) for h in self.held.values()))
            return
        self._prepare(q, body, received, waited_out=False)

    def _prepare(self, q: int, hand_over: dict[str, Any], started: float,
                 waited_out: bool) -> None:
        """Observe and read features now; the batch's decisions are made together at its end.
        A transaction decided before a crash gets the verdict it got then (``_read_back``): one
        this worker's own partition reads again, or one a card partition hands over again."""
        stood = hand_over.get("decided_from")
        if stood:
            self._read_back([{int(p): int(o) for p, o in stood.items()}])
        if self.redo:
            again = self.redo.get(hand_over["transaction"]["transaction_id"])
            if again is not None:
                self._resend(q, hand_over, again)
                return
        try:
            updates, ready = self.terminal_stage.prepare(self.terminals.table(q), hand_over,
                                                         started, waited_out)
            self._put_all(q, updates)
            ready.partition = q
            self.pending.append(ready)
        except Exception:
            log.exception("terminal state failed; deciding without features")
            metrics.FEATURE_STORE_ERRORS.inc()
            self._emit(self._without_state(q, hand_over, started))

    def _resend(self, q: int, hand_over: dict[str, Any], raw: bytes) -> None:
        try:
            self._put_all(q, self.terminal_stage.observe(self.terminals.table(q),
                                                         hand_over["transaction"]))
            self._emit(self.terminal_stage.resend(raw, q))
        except Exception:
            log.exception("a verdict read back could not be sent again; deciding afresh")
            self.redo.clear()
            self._prepare(q, hand_over, time.time(), waited_out=False)

    def _put_all(self, q: int, updates: Mapping[str, Any]) -> None:
        for key, state in updates.items():
            self.terminals.put(q, key, state)

    def _without_state(self, q: int, hand_over: Mapping[str, Any], started: float) -> Output:
        try:
            return self.terminal_stage.decide_without_state(hand_over, started)
        except Exception as again:
            where = Source(self.topics[Topic.SCORING], q, -1, None)
            return self.admission.dead_letter(b"", where, internal_error(again))

    def _decide_pending(self) -> None:
        """One decision-chain call for every transaction the batch made decidable."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        if time.monotonic() < self.redo_until:
            batch = _first_of_each(batch)
        t0 = time.perf_counter()
        try:
            verdicts = self.terminal_stage.decide_all(batch)
        except Exception:  # the chain never raises; this is the stage's own code failing
            log.exception("deciding a batch failed; deciding each without features")
            verdicts = [self._without_state(-1, p.hand_over, p.started) for p in batch]
        metrics.child(metrics.STAGE_SECONDS, "decide").observe(time.perf_counter() - t0)
        for verdict in verdicts:
            self._emit(verdict)

    def _emit(self, verdict: Output) -> None:
        self._send(verdict)
        if verdict.topic == self.decisions and time.monotonic() < self.redo_until:
            # A replay is on: this transaction's hand-over may come round again (the old owner's
            # copy after the commit, and the card stage's replay of it); it then gets this very
            # verdict, byte for byte, not a second decision (``_prepare``).
            self.redo[verdict.key.decode()] = verdict.value
        for follow_up in verdict.follow_ups:
            self._send(follow_up)
        if verdict.opens_case:
            self._send(self.cases.open_case(verdict, datetime.now(UTC)))

    def _release(self, q: int, now: float) -> None:
        assert self.gate is not None
        held = self.held.get(q)
        released = False
        while held:
            head = held[0]
            waited_out = now - head.started > MAX_HOLD_S
            if not waited_out and not self.gate.ready(q, head.t_ms):
                break
            if waited_out:
                metrics.WATERMARK_TIMEOUTS.inc()
            held.popleft()
            released = True
            metrics.WATERMARK_WAIT.observe(max(0.0, now - head.started))
            self._prepare(q, head.hand_over, head.started, waited_out)
        if released:
            metrics.HELD_DECISIONS.set(sum(len(h) for h in self.held.values()))

    def _release_held(self, now: float) -> None:
        for q, held in self.held.items():
            if held and now - held[0].started > MAX_HOLD_S:
                self._release(q, now)

    # -- checkpoint --------------------------------------------------------------------------

    def _offsets(self) -> Offsets:
        """Next offset per processed partition; a terminal partition stops at its oldest hold."""
        out = dict(self.next_offsets)
        scoring = self.topics[Topic.SCORING]
        for q, held in self.held.items():
            if held and (scoring, q) in out:
                out[(scoring, q)] = held[0].offset
        return out

    def _checkpoint(self, wait: bool) -> None:
        assert self.outbox is not None and self.consumer is not None
        t0 = time.perf_counter()
        for record in self.learning.quality():
            self.outbox.send(self.quality_topic, str(record["partition"]).encode(),
                             self.codec.encode("model_quality", record, topic=self.quality_topic))
        self.learning.save()
        self._expire()
        for store in (self.cards, self.terminals):
            topic = store.changelog
            for partition, name, value in store.changes():
                self.outbox.send(topic, name.encode(), value, partition=partition)
        # Each commit says where the decision topic stood (``_read_back``).
        stood = orjson.dumps({"decided_from": {
            str(p): o + 1 for p, o in self.outbox.acked.items()}}).decode()
        done = self._offsets()
        metadata = dict.fromkeys(done, stood)
        for key, (high, replay_stood) in list(self.replays.items()):
            if done.get(key, high) < high:  # a record after this offset may have a verdict
                metadata[key] = orjson.dumps({"decided_from": replay_stood}).decode()
            else:
                del self.replays[key]
        self.outbox.close_epoch(done, metadata)
        ready = self.outbox.drain() if wait else self.outbox.committable()
        if self.redo and time.monotonic() > self.redo_until:
            self.redo.clear()
            self.read_from.clear()
        if ready:
            offsets = [_position(t, p, o, self.outbox.metadata.get((t, p)))
                       for (t, p), o in ready.items()]
            try:
                if wait:
                    _commit_within(self.consumer, offsets, COMMIT_WAIT_S)
                else:
                    self.consumer.commit(offsets=offsets, asynchronous=True)
            except Exception as exc:  # e.g. no longer a member: the next owner repeats the work
                log.warning("offset commit failed: %s", exc)
        metrics.STAGE_SECONDS.labels("checkpoint").observe(time.perf_counter() - t0)
        metrics.STATE_KEYS.labels(self.cards.name).set(self.cards.keys())
        metrics.STATE_KEYS.labels(self.terminals.name).set(self.terminals.keys())

    def _expire(self) -> None:
        """Delete up to ``EXPIRE_KEYS`` keys per store whose newest event is past retention at
        their partition's event time (``scoring.retention``); the changelog gets tombstones.
        A card partition's time is the newest transaction handed over from it, a scoring
        partition's the newest it decided, both moved only by admitted records."""
        transactions = self.topics[Topic.TRANSACTIONS]
        card_now = {p: t for (topic, p), t in self.marks.items() if topic == transactions}
        gone = self.cards.expire(card_now, retention.card_expired, EXPIRE_KEYS)
        for _, card in gone:
            self.card_stage.forget(card)
        if gone:
            metrics.child(metrics.STATE_EXPIRED, self.cards.name).inc(len(gone))
        terminal_now = {q: learned.watermark_ms for q, learned in self.learning.learned.items()
                        if learned.watermark_ms > 0}
        gone = self.terminals.expire(terminal_now, retention.terminal_expired, EXPIRE_KEYS)
        if gone:
            metrics.child(metrics.STATE_EXPIRED, self.terminals.name).inc(len(gone))

    def _report_lag(self) -> None:
        assert self.consumer is not None
        try:
            for tp in self.consumer.assignment():
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                done = self.next_offsets.get((tp.topic, tp.partition))
                if high >= 0 and done is not None:
                    metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                        max(0, high - done))
        except Exception:  # a figure is not worth a crash
            log.debug("lag report failed", exc_info=True)


def _first_of_each(batch: list[Prepared]) -> list[Prepared]:
    """During a replay one batch may hold a transaction's hand-over twice (see ``_emit``): it
    is decided once; the copy adds nothing (its state was observed once, by id)."""
    seen: set[str] = set()
    kept = []
    for ready in batch:
        tx_id = ready.hand_over["transaction"]["transaction_id"]
        if tx_id not in seen:
            seen.add(tx_id)
            kept.append(ready)
    return kept


def _commit_within(consumer: Consumer, offsets: list[TopicPartition], timeout_s: float) -> None:
    """A synchronous commit that gives up after ``timeout_s``. librdkafka's has no timeout, and
    after a lost session (the broker frozen past session.timeout.ms) one made in the revoke
    callback was seen to block for good (`rakshit bench faults --only broker-pause`, in about
    half the runs; confluent-kafka-python #1801 reports the same hang). Given up, the offsets
    are not committed: the next owner reads those records again and re-sends their verdicts as
    they were (``FraudLane._read_back``)."""
    failure: list[BaseException] = []

    def commit() -> None:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=commit, name="offset-commit", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer to a synchronous offset commit within {timeout_s:.0f}s")
    if failure:
        raise failure[0]


def _position(topic: str, partition: int, offset: int, metadata: str | None) -> TopicPartition:
    if metadata is None:  # confluent-kafka takes a string or nothing, not None
        return TopicPartition(topic, partition, offset)
    return TopicPartition(topic, partition, offset, metadata=metadata)


def _decided_from(metadata: str) -> dict[int, int]:
    """The decision topic's ends a commit's metadata recorded (``FraudLane._checkpoint``)."""
    try:
        stood = orjson.loads(metadata).get("decided_from", {})
        return {int(p): int(o) for p, o in stood.items()}
    except (ValueError, AttributeError, TypeError):
        log.warning("offset metadata not understood, verdicts not read back: %.80r", metadata)
        return {}


def start_lane(settings: Settings, on_fatal: Callable[[BaseException], None] | None = None
               ) -> tuple[FraudLane, threading.Thread]:
    """Run the lane in a thread of the worker process; a fatal error ends the process loudly."""
    lane = FraudLane(settings)

    def main() -> None:
        try:
            lane.run()
        except BaseException as exc:
            log.critical("fraud lane stopped: %s: %s", type(exc).__name__, exc, exc_info=True)
            if on_fatal is not None:
                on_fatal(exc)
            else:
                os._exit(70)

    thread = threading.Thread(target=main, name="fraud-lane", daemon=True)
    thread.start()
    return lane, thread
