"""What the worker does with one record, with no Kafka or Faust in sight.

The Faust agents in `streams.app` are thin shells around this: they hand over raw bytes and where
they came from, keep the card's velocity state in a table, and send whatever comes back. Keeping the
steps here lets the tests drive the whole per-record path without a broker, and keeps the order of
operations explicit: size check, decode, redact card numbers, validate, features, decide, encode.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from agents.decision import Decision, decide_rules_only
from schemas.codec import Codec, DecodeError
from schemas.pan import redact_bytes, redact_record
from scoring import velocity
from scoring.rules import RuleEngine
from streams import metrics
from streams.config import Settings
from streams.topics import Topic, topic_name
from streams.validation import Limits, Rejection, check_outcome, check_transaction

VERDICT_NAMESPACE = uuid.UUID("6f1d2c1e-8a4b-4f0e-9a57-52a4b7d1c0de")


@dataclass(frozen=True)
class Source:
    """Where a record was read from; travels into the dead letter so nothing is untraceable."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: float | None = None


@dataclass(frozen=True)
class Output:
    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Admitted:
    record: dict[str, Any]
    pan_redactions: int


class Processor:
    """Per-record logic shared by the live worker and the broker-free tests."""

    def __init__(self, settings: Settings, codec: Codec, rules: RuleEngine) -> None:
        self.settings = settings
        self.codec = codec
        self.rules = rules
        self.limits = Limits(Decimal(str(settings.max_amount)), settings.max_future_skew_s)
        prefix = settings.topic_prefix
        self.decisions_topic = topic_name(Topic.DECISIONS, prefix)
        self.dead_letter_topic = topic_name(Topic.DEAD_LETTERS, prefix)

    # -- admission: everything that can send a record to the dead-letter topic ----------------

    def admit(self, raw: bytes | None, source: Source, expect: str) -> Admitted | Output:
        """Decode, redact and validate; a rejected record comes back as its dead letter."""
        metrics.EVENTS_IN.labels(source.topic).inc()
        if raw is None:
            return self.dead_letter(b"", source, Rejection("undecodable", "record has no value"))
        if len(raw) > self.settings.max_record_bytes:
            return self.dead_letter(raw, source, Rejection(
                "oversized", f"{len(raw)} bytes exceeds the {self.settings.max_record_bytes}-byte "
                             f"limit for {expect} records"))
        try:
            decoded = self.codec.decode(raw, topic=source.topic, expect=expect)
        except DecodeError as exc:
            return self.dead_letter(raw, source, Rejection(exc.reason, str(exc)))
        record, found = redact_record(decoded.record)
        if found:
            metrics.PAN_REDACTIONS.labels(source.topic).inc(found)
        check = check_transaction if expect == "transaction" else check_outcome
        rejection = check(record, datetime.now(UTC), self.limits)
        if rejection is not None:
            return self.dead_letter(raw, source, rejection)
        return Admitted(record, found)

    def dead_letter(self, raw: bytes, source: Source, rejection: Rejection) -> Output:
        redacted, found = redact_bytes(raw)
        key, key_found = redact_bytes(source.key) if source.key is not None else (None, 0)
        if found or key_found:
            metrics.PAN_REDACTIONS.labels(source.topic).inc(found + key_found)
        error, _ = redact_record(rejection.error)
        letter = {
            "source_topic": source.topic,
            "source_partition": source.partition,
            "source_offset": source.offset,
            "source_key": key,
            "original": redacted,
            "reason": rejection.reason,
            "error": error,
            "pan_redactions": found + key_found,
            "failed_at": datetime.now(UTC),
            "original_size": len(raw),
        }
        metrics.DEAD_LETTERS.labels(rejection.reason).inc()
        value = self.codec.encode("dead_letter", letter, topic=self.dead_letter_topic)
        return Output(self.dead_letter_topic, source.topic.encode(), value)

    # -- decision -----------------------------------------------------------------------------

    @staticmethod
    def features(tx: Mapping[str, Any], history: Sequence[velocity.Entry]) -> dict[str, float]:
        event_ms = _millis(tx["event_time"])
        counts = velocity.counts(history, event_ms)
        return {
            "card_velocity_1h": float(counts["1h"]),
            "card_velocity_24h": float(counts["24h"]),
            "amount": float(tx["amount"]),
        }

    def decide(self, tx: Mapping[str, Any], history: Sequence[velocity.Entry]) -> Decision:
        features = self.features(tx, history)
        return decide_rules_only(features, self.rules.evaluate(features))

    def verdict(self, tx: Mapping[str, Any], decision: Decision, started: float,
                source: Source) -> Output:
        now = time.time()
        record = {
            "verdict_id": str(uuid.uuid5(VERDICT_NAMESPACE, tx["transaction_id"])),
            "transaction_id": tx["transaction_id"],
            "card_token": tx["card_token"],
            "decision": decision.decision,
            "score": decision.score,
            "model_version": decision.model_version,
            "arm": "NONE",
            "reasons": [{"feature": f, "value": v, "contribution": c}
                        for f, v, c in decision.reasons],
            "rules_fired": [{"rule_id": h.rule_id, "reason": h.reason}
                            for h in decision.rules_fired],
            "guardrails": [],
            "fallbacks": list(decision.fallbacks),
            "customer_message": decision.customer_message,
            "processing_latency_ms": (now - started) * 1000.0,
            "transaction_time": tx["event_time"],
            "decided_at": datetime.fromtimestamp(now, UTC),
            "is_override": False,
            "overrides_verdict_id": None,
            "decided_by": "worker",
        }
        value = self.codec.encode("verdict", record, topic=self.decisions_topic)
        metrics.VERDICTS.labels(decision.decision).inc()
        if source.timestamp_ms is not None:
            metrics.VERDICT_LATENCY.observe(max(0.0, now - source.timestamp_ms / 1000.0))
        return Output(self.decisions_topic, tx["transaction_id"].encode(), value)


def _millis(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def event_millis(record: Mapping[str, Any]) -> int:
    return _millis(record["event_time"])
