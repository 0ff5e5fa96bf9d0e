"""The worker's two stages per transaction, and its label handling, with no Faust in sight.

Why two stages: card features need every transaction of a card in order (partition by card), and
terminal features need every transaction of a terminal (partition by terminal). One hop through the
internal scoring-by-terminal topic joins them:

    transactions (by card) --card stage--> scoring-by-terminal (by terminal) --terminal stage-->
    decisions
    labels (by card) --------label stage--> scoring-by-terminal (Label records)

A scoring event's body is one of three records (schemas/scoring_event.avsc v2.0): a transaction
hand-over (the admitted transaction itself, nested, with the card's features and amount history),
a label, or the card stage's watermarks. Each crosses the hop in one shape, decoded once; the
conversions between the worker's own forms and the record's are here, at the stage edges.

The terminal features only read transactions and labels at least seven days old (the handbook's
label delay), so the hop's few milliseconds, and the race between the labels and transactions
topics, cannot change them; the card features read only the card's own partition, in order.
Every state update is idempotent per transaction id, so an at-least-once repeat changes nothing.

Labels (an issuer's, a chargeback's, an analyst's resolution of a case) count towards their
terminal's risk at once, for transactions a week later in event time; once event time passes
their ``known_at`` they also teach the online learner and the evaluator (rolling AUC/AP), and an
analyst's finding on a payment this worker flagged counts towards the false-positive rate the
decision thresholds adapt to, as they do to the review queue's load (``QueueLoad``). The
decision reads the card's whitelisting, if an analyst made one (``streams.worker.whitelist``
keeps them; the chain decides what it may change).

The Faust agents in `streams.worker.app` hold the tables and send what these functions return; tests
drive them directly.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from agents.fraud.decision import Whitelisting
from agents.fraud.guardrail import AmountEntry, record_amount
from agents.fraud.pipeline import (
    EVALUATION_FAILURES,
    WHITELIST_RULE,
    DecisionContext,
    DecisionPipeline,
    VerdictParts,
)
from schemas.clock import from_millis, to_millis
from schemas.codec import (
    HISTORY_DIR,
    Codec,
    ConfluentCodec,
    DecodeError,
    SingleObjectCodec,
)
from scoring import features as F
from scoring import merchant as M
from scoring.fx import to_eur
from streams.topics import Topic, topic_name
from streams.worker import metrics
from streams.worker.admission import Output, Source, verdict_id
from streams.worker.learning import Learning
from streams.worker.store import Store

# The features a scored transaction is remembered with (streams.worker.learning), in this order.
SCORED_NAMES = tuple(f.name for f in F.FEATURES)
CACHE_TTL_S = 3600.0  # cached card features older than this are "expired" (planner: conservative)


@dataclass
class CardStage:
    """Card state in, card features out, plus the hand-over record for the terminal stage."""

    codec: Codec
    prefix: str = ""
    # Last good features per card, for when the feature store (the table) fails.
    cache: OrderedDict[str, tuple[dict[str, float], float]] = field(default_factory=OrderedDict)
    cache_size: int = 100_000

    def __post_init__(self) -> None:
        self.topic = topic_name(Topic.SCORING, self.prefix)

    def features(self, state: dict[str, Any] | None, tx: Mapping[str, Any],
                 amounts: Sequence[Sequence[Any]], outcomes: dict[str, Any] | None = None,
                 ) -> tuple[dict[str, Any], list[AmountEntry], dict[str, float]]:
        """Update the card's state with this transaction; return (state, amounts, features).
        ``amounts`` is the card's near-threshold amounts in the guardrail's form (its
        ``AmountEntry`` tuples; lists once read back from the changelog), and so is what comes
        back: the one form on both sides of the hop (``amounts_out``, ``amounts_in``).
        ``outcomes`` is the card's authorization-outcome history (for its decline rate)."""
        t_ms = to_millis(tx["event_time"])
        amount = to_eur(tx["amount"], tx["currency"])
        geo = (tx["geo"]["lat"], tx["geo"]["lon"]) if tx.get("geo") else None
        state = F.card_observe(state, tx["transaction_id"], t_ms, amount, tx.get("country"), geo)
        row = F.card_window_features(state, t_ms, amount)
        row.update(F.card_profile_features(state, t_ms, tx.get("country"), geo))
        row["card_decline_rate_7d"] = F.card_decline_rate(outcomes, t_ms)
        amounts = record_amount(amounts, t_ms, tx["transaction_id"], float(tx["amount"]),
                                tx["currency"])
        self._remember(tx["card_token"], row)
        return state, amounts, row

    def _remember(self, card: str, row: dict[str, float]) -> None:
        self.cache[card] = (row, time.time())
        self.cache.move_to_end(card)
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    def cached(self, card: str) -> tuple[dict[str, float], float] | None:
        return self.cache.get(card)

    def forget(self, card: str) -> None:
        """The card's state expired (``scoring.retention``): so do its cached features."""
        self.cache.pop(card, None)

    def hand_over(self, tx: Mapping[str, Any], row: Mapping[str, float],
                  amounts: Sequence[Sequence[Any]], source: Source, received: float,
                  stale_s: float | None = None, decided_from: Mapping[str, int] | None = None,
                  ) -> Output:
        """The terminal stage's record for the admitted ``tx``: the transaction itself (the
        terminal stage decodes it with the rest, once), its card features and amounts. Keyed by
        merchant: every terminal belongs to one merchant, so the merchant's partition holds its
        terminals' state and its own (the handbook replay's merchant is its terminal)."""
        body = {
            "transaction": tx,
            **card_features_out(row),
            "card_amount_history": amounts_out(amounts),
            "card_state_stale_s": stale_s,
            "received_at_ms": received * 1000.0,
            "source_timestamp_ms": source.timestamp_ms,
            "decided_from": decided_from,
        }
        value = self.codec.encode("scoring_event", {"body": body}, topic=self.topic)
        return Output(self.topic, str(tx["merchant_id"]).encode(), value)

    def forward_label(self, label: Mapping[str, Any]) -> Output | None:
        """Labels without a terminal cannot feed terminal risk; they are counted, not forwarded.
        A label goes where its transaction went: the merchant's partition; one that does not
        name its merchant (the handbook's, whose merchant is the terminal; older sources) goes
        by terminal."""
        terminal = label.get("terminal_id")
        if not terminal:
            return None
        value = self.codec.encode("scoring_event", {"body": label}, topic=self.topic)
        return Output(self.topic, str(label.get("merchant_id") or terminal).encode(), value)


def watermark_event(marks: Mapping[str, int]) -> dict[str, Any]:
    """The scoring event that tells a terminal partition how far each input partition the sender
    owns has been handed over (streams.worker.watermarks)."""
    return {"body": {"watermarks": marks}}


def is_hand_over(body: Mapping[str, Any]) -> bool:
    """A decoded body is a transaction hand-over: Avro's Python form of a union of records is
    the record alone, told apart by a field only its record has (schemas/scoring_event.avsc)."""
    return "transaction" in body


def is_watermark(body: Mapping[str, Any]) -> bool:
    return "watermarks" in body


def amounts_out(amounts: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """The card's amounts as the hand-over's AmountEntry records (card stage edge)."""
    return [{"t_ms": int(t), "transaction_id": str(i), "amount": float(a), "currency": str(c)}
            for t, i, a, c in amounts]


def amounts_in(records: Sequence[Mapping[str, Any]]) -> list[AmountEntry]:
    """The hand-over's AmountEntry records in the guardrail's form (terminal stage edge)."""
    return [(r["t_ms"], r["transaction_id"], r["amount"], r["currency"]) for r in records]


_CARD_SET = frozenset(F.CARD_FEATURES)


def card_features_out(row: Mapping[str, float]) -> dict[str, Any]:
    """The hand-over's card features: a vector in ``CARD_FEATURES`` order when the row has
    exactly those (always, unless the card state failed), else the map by name."""
    if len(row) == len(_CARD_SET) and _CARD_SET.issuperset(row):
        return {"card_features": {}, "card_vector": [row[n] for n in F.CARD_FEATURES]}
    return {"card_features": dict(row), "card_vector": []}


def card_features_in(hand_over: Mapping[str, Any]) -> dict[str, float]:
    """The card features a hand-over carries, by name, whichever way it carries them. A vector
    of another length (from a worker with another feature list, during a rolling upgrade) raises:
    the terminal stage then decides that transaction without features, and says so."""
    vector = hand_over.get("card_vector")
    if vector:
        return dict(zip(F.CARD_FEATURES, vector, strict=True))
    return dict(hand_over["card_features"])


_V1_KINDS = ("TRANSACTION", "LABEL", "WATERMARK")
_V1_HAND_OVER = ("card_features", "card_amount_history", "card_state_stale_s", "received_at_ms",
                 "source_timestamp_ms")


def is_fraud(label: Mapping[str, Any]) -> bool:
    return label["label"] in ("FRAUD", "CHARGEBACK")


@dataclass(slots=True)
class QueueLoad:
    """The review queue as the decisions see it: the case agent's latest depth (the lane's
    ``streams.worker.review_queue`` keeps it current) and the configured capacity (0: unknown,
    so the thresholds ignore the queue)."""

    depth: int = 0
    capacity: int = 0


@dataclass(slots=True)
class Prepared:
    """A transaction observed at its terminal, with its features, waiting for its verdict."""

    tx: dict[str, Any]
    row: dict[str, float]
    context: DecisionContext
    hand_over: Mapping[str, Any]
    started: float
    waited_out: bool
    partition: int = 0  # the scoring partition it was read from (whose learning decides it)


@dataclass
class TerminalStage:
    """Terminal state and the decision chain; one per worker, fed by the terminal partitions."""

    codec: Codec
    pipeline: DecisionPipeline
    prefix: str = ""
    # What each partition has learned, and what its recent transactions were scored with so
    # their labels can teach the learners (streams.worker.learning). The lane passes one kept in
    # its terminal store; tests get one in memory.
    learning: Learning | None = None
    # Card token -> its whitelisting; the lane keeps it current (streams.worker.whitelist).
    whitelist: Mapping[str, Whitelisting] = field(default_factory=dict)
    # The review queue's load, which the thresholds adapt to; the lane keeps it current.
    review_queue: QueueLoad = field(default_factory=QueueLoad)

    def __post_init__(self) -> None:
        self.decisions = topic_name(Topic.DECISIONS, self.prefix)
        self.internal = topic_name(Topic.SCORING, self.prefix)
        self.notifications = topic_name(Topic.NOTIFICATIONS, self.prefix)
        self.evaluation_queue = topic_name(Topic.EVALUATION_QUEUE, self.prefix)
        self._drift_reported: dict[int, object] = {}
        if self.learning is None:
            self.learning = Learning(self.pipeline, Store("terminal-state", ""), SCORED_NAMES)
        self.learn: Learning = self.learning

    def decode(self, raw: bytes) -> dict[str, Any]:
        """The scoring event's body: a transaction hand-over (``is_hand_over``), a watermark
        (``is_watermark``) or a label."""
        try:
            record = self.codec.decode(raw, topic=self.internal, expect="scoring_event").record
        except DecodeError as exc:
            if exc.reason == "missing_field" and exc.field == "body":  # a v1 worker wrote it
                return self._from_v1(raw)
            raise
        body: dict[str, Any] = record["body"]
        return body

    @cached_property
    def _v1(self) -> Codec:
        """Reads scoring events of v1.x (schemas/history): v2.0 moved their fields into the
        body's records, which Avro's resolution cannot follow. Built when first needed."""
        if isinstance(self.codec, ConfluentCodec):
            return ConfluentCodec("", client=self.codec.client, schema_dir=HISTORY_DIR)
        return SingleObjectCodec(schema_dir=HISTORY_DIR)

    def _from_v1(self, raw: bytes) -> dict[str, Any]:
        """A v1.x scoring event (a kind enum, the record as Avro bytes in ``payload``) as the
        body v2.0 carries, so hand-overs a v1 worker left in the topic are still decided."""
        decoded = self._v1.decode(raw, topic=self.internal)
        old = decoded.record
        if not decoded.schema.startswith("scoring_event.") or old["kind"] not in _V1_KINDS:
            raise DecodeError("wrong_record_type", f"not a v1 scoring event: {decoded.schema}")
        if old["kind"] == "WATERMARK":
            return {"watermarks": old.get("watermarks", {})}
        payload = self.codec.decode(old["payload"], topic=self.internal,
                                    expect=old["kind"].lower()).record
        if old["kind"] == "LABEL":
            return payload
        return {"transaction": payload, "card_vector": old.get("card_vector", []),
                **{k: old[k] for k in _V1_HAND_OVER}}

    def observe(self, table: Mapping[str, Any], tx: Mapping[str, Any]) -> dict[str, Any]:
        """The state a transaction changes in its scoring partition, by key (idempotent per
        transaction id): its terminal's and, for a gateway-shaped transaction, its merchant's
        and device's (``scoring.merchant``, namespaced keys). Store each entry before the
        partition's next record reads the table."""
        terminal = tx["terminal_id"]
        t_ms = to_millis(tx["event_time"])
        updates = {terminal: F.terminal_observe_tx(table.get(terminal), tx["transaction_id"],
                                                   t_ms)}
        updates.update(M.observe_tx(table, tx, t_ms))
        return updates

    def observe_label(self, table: Mapping[str, Any],
                      label: Mapping[str, Any]) -> dict[str, Any]:
        """The state a label changes in its scoring partition, by key (idempotent per
        transaction id): its terminal's and, for a fraud label naming its merchant, the
        merchant's and device's, which count it only from its ``known_at``. The learners take
        it separately (``queue_label``)."""
        terminal = label["terminal_id"]
        t_ms = to_millis(label["transaction_time"])
        fraud = is_fraud(label)
        updates = {terminal: F.terminal_observe_label(
            table.get(terminal), label["transaction_id"], t_ms, fraud)}
        updates.update(M.observe_label(table, label, t_ms, to_millis(label["known_at"]), fraud))
        return updates

    def queue_label(self, label: Mapping[str, Any], partition: int = 0, offset: int = -1
                    ) -> None:
        """The label waits for its partition's learners until event time passes its
        ``known_at``; one read again after a crash (at or before the last offset taken in) is
        not taken twice."""
        taken = self.learn.of(partition).take_label(
            offset, to_millis(label["known_at"]), label["transaction_id"], is_fraud(label),
            str(label.get("source") or "UNKNOWN"))
        if not taken:
            metrics.LABELS_REPLAYED.inc()
            return
        self._learn_due(partition)

    def _learn_due(self, partition: int) -> None:
        """Teach every label whose known_at event time has passed to the partition's online
        learner and evaluator; an analyst's finding is also feedback on the decision made."""
        learned = self.learn.of(partition)
        due = learned.due()
        for _, tx_id, fraud, origin in due:
            seen = self.learn.take(partition, tx_id)
            if seen is None:
                learned.labels_unmatched += 1
                metrics.LABELS_UNMATCHED.inc()
                continue
            self.pipeline.record_label(seen.features, seen.score, fraud, seen.decision, learned)
            if origin == "ANALYST":  # only flagged decisions count (the evaluator's rule)
                self.pipeline.record_feedback(seen.decision, fraud, learned)
            metrics.child(metrics.LABELS_LEARNED, origin).inc()
        if due:
            self.report_learning()

    def report_learning(self) -> None:
        """What the owned partitions' learners now hold, as the learners themselves count it."""
        totals = self.learn.totals()
        metrics.ONLINE_LABELS.set(totals["online_labels"])
        metrics.EVALUATOR_LABELS.set(totals["evaluator_labels"])
        metrics.EVALUATOR_FEEDBACK.set(totals["evaluator_feedback"])
        if totals["false_positive_rate"] is not None:
            metrics.FALSE_POSITIVE_RATE.set(totals["false_positive_rate"])

    def prepare(self, table: Mapping[str, Any], hand_over: Mapping[str, Any],
                started: float, waited_out: bool = False) -> tuple[dict[str, Any], Prepared]:
        """Observe the transaction in its scoring partition and read its features: the changed
        state by key (``observe``; store it before the batch's next record reads the table) and
        what the decision needs. ``waited_out``: the watermarks never allowed it
        (streams.worker.watermarks), so its terminal history may be short; the verdict says
        so (fallback ``watermark_timeout``). A gateway-shaped transaction's row also has the
        merchant and device features, read from the state just updated; any other leaves
        them out (``scoring.merchant.has_merchant``)."""
        tx = hand_over["transaction"]
        t_ms = to_millis(tx["event_time"])
        amount = to_eur(tx["amount"], tx["currency"])
        updates = self.observe(table, tx)
        row = F.transaction_features(t_ms, amount)
        row.update(card_features_in(hand_over))
        row.update(F.terminal_features(updates[tx["terminal_id"]], t_ms))
        row.update(M.features(updates, tx, t_ms))
        stale = hand_over["card_state_stale_s"]
        context = DecisionContext(
            now_ms=t_ms,
            feature_store_ok=stale is None,
            cached_features=row if stale is not None else None,
            cached_at_ms=int(t_ms - stale * 1000) if stale is not None else None,
            amount_history=amounts_in(hand_over["card_amount_history"]),
            whitelist=self.whitelist.get(tx["card_token"]),
            review_queue_depth=self.review_queue.depth,
            review_queue_capacity=self.review_queue.capacity,
        )
        return updates, Prepared(tx, row, context, hand_over, started, waited_out)

    def decide_all(self, batch: list[Prepared]) -> list[Output]:
        """Verdicts for prepared transactions, in order: one decision-chain call for the batch
        (one model call per arm, one explanation call for what it flags)."""
        for p in batch:  # each decided with what its own partition has learned
            p.context.learned = self.learn.of(p.partition)
        decided = self.pipeline.decide_many(
            [(p.tx, p.row if p.context.feature_store_ok else None, p.context) for p in batch])
        out = []
        touched: set[int] = set()
        for p, parts in zip(batch, decided, strict=True):
            if p.waited_out:
                parts = replace(parts, fallbacks=(*parts.fallbacks, "watermark_timeout"))
            self.learn.of(p.partition).advance(p.context.now_ms)
            self.learn.remember(p.partition, p.tx["transaction_id"], p.row, parts.score,
                                parts.decision)
            touched.add(p.partition)
            out.append(self.verdict(p.tx, parts, p.row, p.started, p.hand_over))
        for q in touched:
            self._learn_due(q)
            self._report_drift(q)
        return out

    def decide_without_state(self, hand_over: Mapping[str, Any], started: float) -> Output:
        """The verdict when reading or updating terminal state raised: no features at all.

        The decision chain then runs its features_unavailable path (conservative tier) rather
        than the transaction going without a verdict; the state is left as it was.
        """
        tx = hand_over["transaction"]
        context = DecisionContext(now_ms=to_millis(tx["event_time"]), feature_store_ok=False,
                                  cached_features=None, cached_at_ms=None, amount_history=[],
                                  whitelist=self.whitelist.get(tx["card_token"]),
                                  review_queue_depth=self.review_queue.depth,
                                  review_queue_capacity=self.review_queue.capacity)
        parts = self.pipeline.decide(tx, None, context)
        return self.verdict(tx, parts, {}, started, hand_over)

    def _report_drift(self, partition: int) -> None:
        """Each partition's evaluator recomputes PSI every so many of its verdicts; publish each
        new report once (every partition's traffic is a random share of the whole)."""
        evaluator = self.learn.of(partition).evaluator
        drift = evaluator.latest_drift
        if drift is not None and drift is not self._drift_reported.get(partition):
            self._drift_reported[partition] = drift
            metrics.DRIFT_FALLBACKS.set(evaluator.drift_fallbacks)
            metrics.DRIFT_HISTORICAL.set(evaluator.drift_source == "historical")
            for name, d in drift.items():
                metrics.DRIFT_PSI.labels(name).set(d.psi)

    def verdict(self, tx: Mapping[str, Any], parts: VerdictParts, row: Mapping[str, float],
                started: float, hand_over: Mapping[str, Any]) -> Output:
        now = time.time()
        received = hand_over["received_at_ms"] / 1000.0
        record = {
            "verdict_id": verdict_id(tx["transaction_id"]),
            "transaction_id": tx["transaction_id"],
            "card_token": tx["card_token"],
            "terminal_id": tx["terminal_id"],
            "merchant_id": tx["merchant_id"], "device_id": tx.get("device_id"),
            **parts.verdict_fields(),
            "processing_latency_ms": (now - min(received, started)) * 1000.0,
            "transaction_time": tx["event_time"],
            "decided_at": from_millis(now * 1000.0),
            "is_override": False,
            "overrides_verdict_id": None,
            "decided_by": "worker",
            "features": {k: float(v) for k, v in row.items()},
            "shadow": None if parts.shadow is None else {
                "model_version": parts.shadow.model_version,
                "score": parts.shadow.probability,
                "fallbacks": list(parts.shadow.fallbacks)},
        }
        value = self.codec.encode("verdict", record, topic=self.decisions)
        metrics.child(metrics.VERDICTS, parts.decision).inc()
        if parts.rules_fired and parts.decision == "APPROVE" \
                and parts.rules_fired[-1].rule_id == WHITELIST_RULE:
            metrics.WHITELIST_APPROVALS.inc()
        for fallback in parts.fallbacks:
            metrics.child(metrics.FALLBACKS, fallback).inc()
        for check in parts.guardrails:
            if not check.passed:
                metrics.child(metrics.GUARDRAIL_FAILURES, check.name).inc()
        source_ts = hand_over["source_timestamp_ms"]
        if source_ts is not None:
            metrics.VERDICT_LATENCY.observe(max(0.0, now - source_ts / 1000.0))
        return Output(self.decisions, tx["transaction_id"].encode(), value,
                      opens_case=parts.decision == "REVIEW",
                      follow_ups=(*self._notify(record, parts.customer_message),
                                  *self._queue_evaluation(record, parts.fallbacks)))

    def resend(self, raw: bytes, partition: int) -> Output:
        """A verdict already published for this transaction (read back from the decision topic
        after a crash, ``streams.worker.lane``), sent again byte for byte with its follow-ups,
        so a duplicate equals its first; the partition remembers what it was scored with."""
        record = self.codec.decode(raw, topic=self.decisions, expect="verdict").record
        tx_id = record["transaction_id"]
        self.learn.of(partition).advance(to_millis(record["transaction_time"]))
        self.learn.remember(partition, tx_id, record["features"], record["score"],
                            record["decision"])
        metrics.VERDICTS_RESENT.inc()
        return Output(self.decisions, tx_id.encode(), raw,
                      opens_case=record["decision"] == "REVIEW",
                      follow_ups=(*self._notify(record, record["customer_message"]),
                                  *self._queue_evaluation(record, record["fallbacks"])))

    def _queue_evaluation(self, verdict: Mapping[str, Any], fallbacks: Sequence[str]
                          ) -> tuple[Output, ...]:
        """The evaluator failed on this verdict: what an offline evaluation needs goes to the
        evaluation queue, so the check and the drift sample it missed can be made up later."""
        failed = [f for f in fallbacks if f in EVALUATION_FAILURES]
        if not failed:
            return ()
        record = {"transaction_id": verdict["transaction_id"],
                  "verdict_id": verdict["verdict_id"], "score": verdict["score"],
                  "decision": verdict["decision"], "model_version": verdict["model_version"],
                  "features": verdict["features"], "failures": failed,
                  "queued_at": verdict["decided_at"]}
        value = self.codec.encode("evaluation_request", record, topic=self.evaluation_queue)
        metrics.EVALUATION_QUEUED.inc()
        return (Output(self.evaluation_queue, verdict["transaction_id"].encode(), value),)

    def _notify(self, verdict: Mapping[str, Any], message: str) -> tuple[Output, ...]:
        """Declined and reviewed payments: the customer hears why in plain words (the decision
        agent's message: no scores, no rule names). Approvals need no message."""
        kind = {"DECLINE": "PAYMENT_DECLINED", "REVIEW": "PAYMENT_UNDER_REVIEW"}.get(
            verdict["decision"])
        if kind is None:
            return ()
        record = {
            "notification_id": f"n-{verdict['verdict_id']}",
            "transaction_id": verdict["transaction_id"], "card_token": verdict["card_token"],
            "kind": kind, "message": message,
            "case_id": f"case-{verdict['verdict_id']}" if kind == "PAYMENT_UNDER_REVIEW" else None,
            "verdict_id": verdict["verdict_id"], "created_at": verdict["decided_at"]}
        value = self.codec.encode("notification", record, topic=self.notifications)
        return (Output(self.notifications, verdict["card_token"].encode(), value),)
