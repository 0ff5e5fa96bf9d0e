"""The case agent's stream glue: case commands in; cases, whitelistings, overrides, labels,
notifications and audit records out. Plain code over bytes (no Faust), so tests drive it without a
broker.

The worker is the only writer of case state, and it applies commands in the order of one
partition's log; `now` is each command's requested_at, so a replay decides exactly as before.

Commands come from two topics, each with one writer the broker enforces (streams.admin.ACLS,
with RAKSHIT_KAFKA_AUTH=scram, the default):

- ``case-commands``: only the API principal may write it. The API authenticated the analyst
  (a bearer token), checked the role and set the actor from the token, never from the request
  body; so the actor and role inside such a command are trusted here because the broker took it
  from the API alone. A gateway's forged command (an ADMIN role, an invented actor) is refused
  by the broker and never reaches this code (tests/test_kafka_acl.py). An OPEN found here is
  refused (audited as an unknown command): opening a case from a verdict is the lane's alone.
- ``case-openings``: only the worker writes it, the fraud lane's OPEN per REVIEW verdict
  (command id ``open-<transaction id>``, so a redelivered OPEN opens nothing twice). Nothing but
  an OPEN is taken from it.

With RAKSHIT_KAFKA_AUTH=none there is no such guarantee: any local process may write either.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agents.cases import CaseBook, CaseResult
from schemas.codec import Codec
from streams.topics import Topic, topic_name
from streams.worker import metrics
from streams.worker.admission import Output

GAUGE_EVERY_S = 5.0
REINDEX_EVERY_S = 60.0
# The review queue's depth goes to every fraud lane at most this often (streams.worker.app calls
# ``queue_depth`` on a timer as well, so the last change of a burst is not held back).
DEPTH_EVERY_S = 1.0
QUEUE_KEY = b"review-queue"

# Where each record a case action produces goes, and what it is keyed by.
ROUTES: dict[str, tuple[Topic, str]] = {
    "case": (Topic.CASES, "case_id"),
    "whitelist": (Topic.WHITELIST, "card_token"),
    "verdict": (Topic.DECISIONS, "transaction_id"),
    "label": (Topic.LABELS, "card_token"),
    "notification": (Topic.NOTIFICATIONS, "card_token"),
    "audit": (Topic.AUDIT, "actor"),
}


def open_command(verdict: bytes, transaction_id: str, at: datetime) -> dict[str, Any]:
    """The OPEN command the worker sends for a REVIEW verdict (idempotent per verdict)."""
    return {"command_id": f"open-{transaction_id}", "command": "OPEN", "actor": "worker",
            "role": "ADMIN", "reason": "the verdict asks for a review", "case_id": None,
            "expected_version": None, "resolution": None, "card_token": None, "until": None,
            "transaction_id": transaction_id, "verdict": verdict, "requested_at": at}


def dispute_command(verdict: bytes, transaction_id: str, reason: str,
                    at: datetime) -> dict[str, Any]:
    """A customer's dispute of a declined payment, as the channel that received it sends it."""
    return {"command_id": uuid.uuid4().hex, "command": "DISPUTE", "actor": "customer",
            "role": "UNKNOWN", "reason": reason, "case_id": None, "expected_version": None,
            "resolution": None, "card_token": None, "until": None,
            "transaction_id": transaction_id, "verdict": verdict, "requested_at": at}


@dataclass
class CaseStage:
    codec: Codec
    prefix: str
    store: MutableMapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.book = CaseBook(self.store)
        self._gauged = float("-inf")
        self._indexed = float("-inf")
        self.commands = topic_name(Topic.CASE_COMMANDS, self.prefix)
        self.openings = topic_name(Topic.CASE_OPENINGS, self.prefix)
        self.decisions = topic_name(Topic.DECISIONS, self.prefix)
        self.review_queue = topic_name(Topic.REVIEW_QUEUE, self.prefix)
        self._published_depth: int | None = None
        self._published_at = float("-inf")
        self._depth_changed = False

    def open_case(self, verdict_output: Output, at: datetime) -> Output:
        """Ask the case agent to open a case for a REVIEW verdict the terminal stage produced
        (on the worker's own case-openings topic: only the API writes case-commands)."""
        tx_id = verdict_output.key.decode()
        record = open_command(verdict_output.value, tx_id, at)
        return Output(self.openings, tx_id.encode(),
                      self.codec.encode("case_command", record, topic=self.openings))

    def on_command(self, raw: bytes, topic: str | None = None) -> list[Output]:
        """Apply one command read from ``topic`` (case-commands when not said): an OPEN only
        from case-openings, anything else only from case-commands (see the module's doc)."""
        topic = topic or self.commands
        cmd = self.codec.decode(raw, topic=topic, expect="case_command").record
        now: datetime = cmd["requested_at"]
        kind = cmd["command"]
        if topic == self.openings and kind != "OPEN":
            raise ValueError(f"{kind} command {cmd['command_id']} on {topic}, which carries "
                             "the fraud lane's OPEN commands only")
        if kind == "OPEN" and topic == self.openings:
            verdict = self._verdict(cmd)
            amount = verdict.get("features", {}).get("TX_AMOUNT")
            result = self.book.open_from_verdict(verdict, now, amount)
        elif kind == "DISPUTE":
            result = self.book.dispute(cmd["transaction_id"] or "", self._verdict(cmd),
                                       cmd["reason"] or "", now)
        else:  # an OPEN here is refused as an unknown command, audited
            result = self.book.apply(cmd, now)
        metrics.CASE_ACTIONS.labels(kind, "refused" if result.refused else "accepted").inc()
        # The queue gauges read the case book's index of unresolved cases; every few seconds is
        # often enough for a gauge.
        if time.monotonic() - self._gauged >= GAUGE_EVERY_S:
            self._gauged = time.monotonic()
            if self._gauged - self._indexed >= REINDEX_EVERY_S:
                self._indexed = self._gauged
                self.book.forget_index()  # a rebalance may have recovered the table under it
            metrics.CASE_QUEUE.set(self.book.queue_size())
            oldest = self.book.oldest_open_age(now)
            metrics.CASE_OLDEST_S.set(oldest.total_seconds() if oldest else 0.0)
        self._depth_changed = True
        return [*self.outputs(result), *self.queue_depth()]

    def queue_depth(self) -> list[Output]:
        """The queue's depth for the fraud lanes, whose thresholds rise as it fills: when a
        command since the last one may have changed it, at most every ``DEPTH_EVERY_S``.

        Only a command marks it: after a restart the topic's last record is still the book's
        depth, and a count taken while the table is being recovered would be wrong."""
        now = time.monotonic()
        if not self._depth_changed or now - self._published_at < DEPTH_EVERY_S:
            return []
        self._depth_changed = False
        depth = self.book.queue_size()
        if depth == self._published_depth:
            return []
        self._published_depth, self._published_at = depth, now
        record = {"depth": depth, "measured_at": datetime.now(UTC)}
        return [Output(self.review_queue, QUEUE_KEY,
                       self.codec.encode("review_queue", record, topic=self.review_queue))]

    def _verdict(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        if not cmd["verdict"]:
            raise ValueError(f"{cmd['command']} command {cmd['command_id']} carries no verdict")
        return self.codec.decode(cmd["verdict"], topic=self.decisions, expect="verdict").record

    def outputs(self, result: CaseResult) -> list[Output]:
        out = []
        for schema, record in result.records():
            topic, key_field = ROUTES[schema]
            name = topic_name(topic, self.prefix)
            key = str(record.get(key_field) or schema).encode()
            out.append(Output(name, key, self.codec.encode(schema, record, topic=name)))
        return out
