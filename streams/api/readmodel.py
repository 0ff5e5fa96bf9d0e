"""An in-memory read model of the topics the analyst API and dashboard show.

The API answers from memory, never from Kafka or the worker's tables, so a slow broker or a busy
worker cannot make the dashboard hang at 3 a.m. Whoever wires the consumers calls
:meth:`ReadModel.apply` with each decoded record; everything kept is bounded, so a long-running
API cannot grow without limit however much traffic flows past it.

Consumers may run in another thread: state changes happen under a lock, and subscribers are woken
on their own event loop with ``call_soon_threadsafe``. A slow subscriber loses its oldest events
rather than blocking ``apply`` (the dashboard can always re-fetch a section to catch up).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.routing import route_health
from agents.routing.outcomes import Outcome
from scoring.drift import SCORE as SCORE_NAME
from scoring.drift import Baseline, average_precision, drift_report, flag_precision, roc_auc

__all__ = ["HEALTH_WINDOWS", "SCHEMAS", "ReadModel", "case_row", "dispute_view", "feed",
           "jsonable", "to_datetime"]

Record = dict[str, Any]
Event = dict[str, Any]

SCHEMAS = ("verdict", "case", "hypothesis", "experiment", "routing_policy", "audit",
           "case_command", "authorization_outcome", "model_quality")
HEALTH_WINDOWS = {"1m": 60.0, "5m": 300.0, "60m": 3600.0}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A verdict's feature map is for parity checks and retraining, not for a person: keep it out of
# memory and off the wire.
_VERDICT_DROP = ("features",)


def jsonable(value: Any) -> Any:
    """Decoded Avro values as JSON: datetimes become ISO 8601 UTC strings."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _obj(value: Mapping[str, Any]) -> Record:
    out = jsonable(value)
    assert isinstance(out, dict)
    return out


def to_datetime(value: Any) -> datetime | None:
    """A record time (datetime, or epoch ms from a JSON-form record) as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _EPOCH + timedelta(milliseconds=value)
    return None


def _verdict_brief(v: Mapping[str, Any], top: int = 3) -> Record:
    """What a row of the verdict stream needs: the decision and why, in a few fields."""
    return {
        "verdict_id": v.get("verdict_id"), "transaction_id": v.get("transaction_id"),
        "card_token": v.get("card_token"), "decision": v.get("decision"),
        "score": v.get("score"), "model_version": v.get("model_version"), "arm": v.get("arm"),
        "reasons": list(v.get("reasons") or [])[:top],
        "rules_fired": [r.get("rule_id") for r in v.get("rules_fired") or []],
        "fallbacks": list(v.get("fallbacks") or []),
        "decided_at": v.get("decided_at"), "is_override": v.get("is_override", False),
        "decided_by": v.get("decided_by", "worker"),
        "overrides_verdict_id": v.get("overrides_verdict_id"),
    }


def dispute_view(command: Mapping[str, Any]) -> Record:
    """What a person looks up about a filed dispute: a DISPUTE case command without the verdict
    bytes it carries to the case agent (the verdict itself is looked up by transaction)."""
    return {name: command.get(name) for name in ("command_id", "transaction_id", "actor",
                                                  "reason", "requested_at")}


def case_row(rec: Mapping[str, Any], now: datetime, first_seen: datetime | None) -> Record:
    """A case as the queue shows it: due time, age since first seen (None if unknown) and
    whether it is overdue."""
    due = to_datetime(rec.get("due_at"))
    return {**rec, "due_at": due,
            "age_s": None if first_seen is None else (now - first_seen).total_seconds(),
            "overdue": rec.get("status") != "RESOLVED" and due is not None and due <= now}


class _Subscriber:
    __slots__ = ("dropped", "loop", "queue")

    def __init__(self, queue: asyncio.Queue[Event], loop: asyncio.AbstractEventLoop) -> None:
        self.queue, self.loop, self.dropped = queue, loop, 0

    def offer(self, event: Event) -> None:
        """Runs on the subscriber's loop: never waits, drops the oldest event when full."""
        if self.queue.full():
            try:
                self.queue.get_nowait()
                self.dropped += 1
            except asyncio.QueueEmpty:
                pass
        self.queue.put_nowait(event)


class ReadModel:
    """Latest state per key and bounded recent history of every topic the API shows."""

    def __init__(self, *, models: Callable[[], list[dict[str, Any]]] | None = None,
                 baselines: Callable[[str], Mapping[str, Baseline] | None] | None = None,
                 drift_sample: int = 2_000,
                 max_verdicts: int = 2_000, max_indexed_verdicts: int = 20_000,
                 max_per_card: int = 20, max_cards: int = 20_000,
                 max_resolved_cases: int = 5_000, max_recent: int = 200,
                 max_audit: int = 1_000, max_experiments: int = 200,
                 max_steps: int = 100, queue_size: int = 1_000) -> None:
        self._models = models
        # Drift: the features the verdicts logged (feature logging), compared with the training
        # distributions of the model that scored them. ``baselines`` maps a model version to its
        # per-feature baselines and the score's (scoring.drift.Baseline), or None if unknown.
        self._baselines = baselines
        self._feature_sample: deque[tuple[str, float, dict[str, float]]] = deque(
            maxlen=drift_sample)
        self._lock = threading.Lock()
        self._queue_size = queue_size
        self._subscribers: list[_Subscriber] = []
        self._verdicts: deque[Record] = deque(maxlen=max_verdicts)
        # Case detail must find the verdict under review long after it left the live stream.
        self._verdict_by_id: OrderedDict[str, Record] = OrderedDict()
        self._max_indexed = max_indexed_verdicts
        self._by_card: OrderedDict[str, deque[Record]] = OrderedDict()
        self._max_per_card, self._max_cards = max_per_card, max_cards
        self._cases: dict[str, Record] = {}
        self._first_seen: dict[str, datetime] = {}
        self._resolved: deque[str] = deque()
        self._max_resolved = max_resolved_cases
        self._open_hypotheses: dict[str, Record] = {}
        self._recent_hypotheses: deque[Record] = deque(maxlen=max_recent)
        self._experiments: OrderedDict[str, Record] = OrderedDict()
        self._steps: dict[str, deque[Record]] = {}
        self._max_experiments, self._max_steps = max_experiments, max_steps
        self._policies: dict[str, Record] = {}
        self._health: dict[str, dict[str, Any]] = {}
        self._newest_outcome_ms = 0
        self._audit: deque[Record] = deque(maxlen=max_audit)
        self._commands: deque[Record] = deque(maxlen=max_recent)
        self._handlers: dict[str, Callable[[Record], Record | None]] = {
            "verdict": self._verdict, "case": self._case, "hypothesis": self._hypothesis,
            "experiment": self._experiment, "routing_policy": self._policy,
            "audit": self._audit_entry, "case_command": self._command,
            "authorization_outcome": self._outcome, "model_quality": self._quality,
        }
        self._windows: dict[int, Record] = {}  # scoring partition -> its latest window

    # -- feeding -----------------------------------------------------------------------------

    def apply(self, schema: str, record: Mapping[str, Any]) -> None:
        """Fold one decoded record into the view and tell subscribers.

        An unknown schema name raises ValueError: a consumer wired to the wrong topic should fail
        loudly, not leave a dashboard section silently empty.
        """
        handler = self._handlers.get(schema)
        if handler is None:
            raise ValueError(f"unknown schema {schema!r}; expected one of {', '.join(SCHEMAS)}")
        with self._lock:
            view = handler(dict(record))
        if view is not None:
            self._publish({"type": schema, "data": jsonable(view)})

    def apply_threadsafe(self, loop: asyncio.AbstractEventLoop,
                         batch: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Apply ``(schema, record)`` pairs in order on ``loop`` (the API's), for a consumer
        running in another thread: one call per batch (each call wakes the loop)."""
        loop.call_soon_threadsafe(self._apply_all, list(batch))

    def _apply_all(self, batch: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        for schema, record in batch:
            self.apply(schema, record)

    def subscribe(self) -> asyncio.Queue[Event]:
        """A queue of live events for the calling event loop; call unsubscribe when done."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=self._queue_size)
        with self._lock:
            self._subscribers.append(_Subscriber(queue, asyncio.get_running_loop()))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s.queue is not queue]

    def broadcast(self, event: Event) -> None:
        """Send an event to every subscriber (e.g. a shutdown notice); never blocks."""
        self._publish(event)

    def _publish(self, event: Event) -> None:
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            if sub.loop is here:
                sub.offer(event)
                continue
            try:
                sub.loop.call_soon_threadsafe(sub.offer, event)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                self.unsubscribe(sub.queue)

    # -- per-schema folds (called under the lock) ------------------------------------------------

    def _verdict(self, rec: Record) -> Record:
        if not rec.get("is_override") and rec.get("features"):
            self._feature_sample.append((str(rec.get("model_version")), float(rec["score"]),
                                         dict(rec["features"])))
        for name in _VERDICT_DROP:
            rec.pop(name, None)
        brief = _verdict_brief(rec)
        if len(self._verdicts) == self._verdicts.maxlen:
            self._verdicts.popleft()
        self._verdicts.append(brief)
        vid = str(rec.get("verdict_id"))
        self._verdict_by_id[vid] = rec
        self._verdict_by_id.move_to_end(vid)
        while len(self._verdict_by_id) > self._max_indexed:
            self._verdict_by_id.popitem(last=False)
        card = str(rec.get("card_token"))
        history = self._by_card.get(card)
        if history is None:
            history = self._by_card[card] = deque(maxlen=self._max_per_card)
        history.append(brief)
        self._by_card.move_to_end(card)
        while len(self._by_card) > self._max_cards:
            self._by_card.popitem(last=False)
        return brief

    def latest_verdict(self, transaction_id: str) -> Record | None:
        """The newest verdict on a payment still indexed (an override if there is one), as
        decoded; feature values are not kept here (they stay on the decision topic)."""
        found = self.verdicts_of(transaction_id)
        return found[0] if found else None

    def verdicts_of(self, transaction_id: str) -> list[Record]:
        """Every verdict on a payment still indexed, newest first."""
        with self._lock:
            return [dict(rec) for rec in reversed(self._verdict_by_id.values())
                    if rec.get("transaction_id") == transaction_id]

    def _case(self, rec: Record) -> Record | None:
        case_id = str(rec.get("case_id"))
        old = self._cases.get(case_id)
        if old is not None and int(old.get("version", 0)) > int(rec.get("version", 0)):
            return None  # a replayed older version must not undo a newer one
        self._cases[case_id] = rec
        first = to_datetime(rec.get("updated_at"))
        if case_id not in self._first_seen and first is not None:
            self._first_seen[case_id] = first
        if rec.get("status") == "RESOLVED":
            self._resolved.append(case_id)
            while len(self._resolved) > self._max_resolved:
                gone = self._resolved.popleft()
                if self._cases.get(gone, {}).get("status") == "RESOLVED":
                    self._cases.pop(gone, None)
                    self._first_seen.pop(gone, None)
        return rec

    def _hypothesis(self, rec: Record) -> Record:
        hid = str(rec.get("hypothesis_id"))
        if rec.get("status") == "RESOLVED":
            self._open_hypotheses.pop(hid, None)
        else:
            self._open_hypotheses[hid] = rec
        self._recent_hypotheses.append(rec)
        return rec

    def _experiment(self, rec: Record) -> Record:
        eid = str(rec.get("experiment_id"))
        self._experiments[eid] = rec
        self._experiments.move_to_end(eid)
        self._steps.setdefault(eid, deque(maxlen=self._max_steps)).append(rec)
        while len(self._experiments) > self._max_experiments:
            gone, _ = self._experiments.popitem(last=False)
            self._steps.pop(gone, None)
        return rec

    def _policy(self, rec: Record) -> Record | None:
        issuer = str(rec.get("issuer_id"))
        old = self._policies.get(issuer)
        if old is not None and int(old.get("version", 0)) >= int(rec.get("version", 0)):
            return None  # stale or replayed: gateways ignore it, so must the view
        self._policies[issuer] = rec
        return rec

    def _audit_entry(self, rec: Record) -> Record:
        self._audit.append(rec)
        return rec

    def _quality(self, rec: Record) -> Record | None:
        self._windows[int(rec["partition"])] = rec
        return None  # the merged figures are read on demand (``quality``), not streamed

    def _command(self, rec: Record) -> Record:
        self._commands.append(rec)
        return rec

    def _outcome(self, rec: Record) -> Record:
        outcome = Outcome.from_record(rec)
        self._health[outcome.cell] = route_health.observe(self._health.get(outcome.cell), outcome)
        self._newest_outcome_ms = max(self._newest_outcome_ms, outcome.event_ms)
        # Per-outcome events stay tiny; the dashboard re-reads the grid for the windowed rates.
        return {"route": outcome.route, "issuer_id": outcome.issuer_id,
                "result": outcome.result, "latency_ms": outcome.latency_ms}

    # -- queries (JSON-able copies) ------------------------------------------------------------

    def cases(self, now: datetime, status: str | None = None, priority: int | None = None,
              assignee: str | None = None) -> list[Record]:
        """Cases matching every filter, most urgent first (priority, then due_at)."""
        with self._lock:
            rows = [self._case_row(c, now) for c in self._cases.values()
                    if (status is None or c.get("status") == status)
                    and (priority is None or c.get("priority") == priority)
                    and (assignee is None or c.get("assignee") == assignee)]
        rows.sort(key=lambda r: (r["priority"], r["due_at"], r["case_id"]))
        return [jsonable(r) for r in rows]

    def case(self, case_id: str, now: datetime) -> Record | None:
        """A case with the verdict under review and the customer's recent verdicts."""
        with self._lock:
            rec = self._cases.get(case_id)
            if rec is None:
                return None
            row = self._case_row(rec, now)
            verdict = self._verdict_by_id.get(str(rec.get("verdict_id")))
            history = list(self._by_card.get(str(rec.get("card_token")), ()))
            audit = [a for a in self._audit if a.get("case_id") == case_id]
        history.reverse()
        return _obj({"case": row, "verdict": verdict, "customer_history": history,
                         "audit": audit})

    def _case_row(self, rec: Record, now: datetime) -> Record:
        return case_row(rec, now, self._first_seen.get(str(rec.get("case_id"))))

    def cases_of(self, transaction_id: str) -> list[Record]:
        """The cases held for a payment (as decoded)."""
        with self._lock:
            return [dict(c) for c in self._cases.values()
                    if c.get("transaction_id") == transaction_id]

    def disputes(self, transaction_id: str | None = None, limit: int = 100) -> list[Record]:
        """Disputes among the recent case commands, newest first (see dispute_view)."""
        with self._lock:
            rows = [dispute_view(c) for c in reversed(self._commands)
                    if c.get("command") == "DISPUTE"
                    and (transaction_id is None or c.get("transaction_id") == transaction_id)]
        return rows[:limit]

    def verdicts(self, limit: int = 100) -> list[Record]:
        """The newest ``limit`` verdicts, newest first."""
        with self._lock:
            rows = list(self._verdicts)[-limit:] if limit > 0 else []
        rows.reverse()
        return [jsonable(r) for r in rows]

    def hypotheses(self, include_recent: bool = False) -> Record:
        with self._lock:
            out: Record = {"open": list(self._open_hypotheses.values())}
            if include_recent:
                out["recent"] = list(reversed(self._recent_hypotheses))
        return _obj(out)

    def experiments(self) -> list[Record]:
        """Every kept experiment's latest step and step history, most recently active first."""
        with self._lock:
            rows = [{"experiment_id": eid, "latest": rec, "steps": list(self._steps[eid])}
                    for eid, rec in self._experiments.items()]
        rows.reverse()
        return [jsonable(r) for r in rows]

    def routing_policy(self) -> list[Record]:
        with self._lock:
            rows = sorted(self._policies.values(), key=lambda p: str(p.get("issuer_id")))
        return [jsonable(r) for r in rows]

    def route_health(self, now_ms: int | None = None) -> Record:
        """Per cell summaries over 1, 5 and 60 minutes of event time.

        ``now_ms`` defaults to the newest outcome's event time, not the wall clock: a replay or a
        lagging consumer still shows the traffic it has, rather than empty windows.
        """
        with self._lock:
            now = self._newest_outcome_ms if now_ms is None else now_ms
            cells = []
            for key in sorted(self._health):
                route, _, issuer = key.partition("|")
                state = self._health[key]
                cells.append({"route": route, "issuer_id": issuer, "windows": {
                    name: route_health.summary(state, now, secs)
                    for name, secs in HEALTH_WINDOWS.items()}})
        as_of = to_datetime(now) if now else None
        return _obj({"as_of": as_of, "cells": cells})

    def audit(self, limit: int = 200) -> list[Record]:
        with self._lock:
            rows = list(self._audit)[-limit:] if limit > 0 else []
        rows.reverse()
        return [jsonable(r) for r in rows]

    def commands(self) -> list[Record]:
        with self._lock:
            rows = list(reversed(self._commands))
        return [jsonable(r) for r in rows]

    def quality(self) -> Record:
        """The model's quality on labelled traffic across the fleet: every scoring partition's
        window (whichever worker published it) merged, then AUC, AP and the flags' precision
        computed once over the union, exactly as ``scoring.metrics`` computes them offline."""
        with self._lock:
            windows = list(self._windows.values())
        scores = [s for w in windows for s in w["scores"]]
        frauds = [f for w in windows for f in w["frauds"]]
        flagged = [f for w in windows for f in w["flagged"]]
        genuine = sum(int(w["feedback_genuine"]) for w in windows)
        findings = sum(int(w["feedback_total"]) for w in windows)
        updated = max((w["updated_at"] for w in windows), default=None)
        return _obj({
            "partitions": len(windows), "labels_in_windows": len(scores),
            "frauds_in_windows": sum(frauds),
            "labels_recorded": sum(int(w["labels_recorded"]) for w in windows),
            "auc": roc_auc(scores, frauds), "average_precision": average_precision(scores, frauds),
            "precision": flag_precision(frauds, flagged),
            "false_positive_rate": genuine / findings if findings else None,
            "analyst_findings": findings, "updated_at": updated})

    def models(self) -> Record:
        """The registry's view (if a callable was given) and what recent verdicts actually used,
        which is the truth about what is serving even when the registry is unreachable."""
        with self._lock:
            used = Counter((v.get("model_version"), v.get("arm")) for v in self._verdicts)
        registry: list[dict[str, Any]] | None = None
        error: str | None = None
        if self._models is not None:
            try:
                registry = self._models()
            except Exception as exc:  # shown, not raised: the rest of the dashboard still works
                error = f"{type(exc).__name__}: {exc}"
        in_use = [{"model_version": mv, "arm": arm, "verdicts": n}
                  for (mv, arm), n in used.most_common()]
        return _obj({"registry": registry, "registry_error": error, "in_use": in_use,
                     "drift": self.drift()})

    def drift(self) -> Record | None:
        """PSI per feature (and for the score, as SCORE) over the recent verdicts of the most
        used model, against that model's training baselines; worst first."""
        if self._baselines is None:
            return None
        with self._lock:
            sample = list(self._feature_sample)
        if not sample:
            return None
        version = Counter(v for v, _, _ in sample).most_common(1)[0][0]
        try:
            baselines = self._baselines(version)
        except Exception:  # an unreadable registry: no drift, not a broken page
            baselines = None
        if not baselines:
            return {"model_version": version, "features": [], "note": "no training baselines"}
        rows = [(score, feats) for v, score, feats in sample if v == version]
        values: dict[str, list[float]] = {name: [] for name in baselines}
        for score, feats in rows:
            for name in baselines:
                if name == SCORE_NAME:
                    values[name].append(score)
                elif name in feats:
                    values[name].append(float(feats[name]))
        report = drift_report(baselines, values)
        ranked = sorted(report.values(), key=lambda d: -d.psi)
        return {"model_version": version, "verdicts": len(rows),
                "features": [{"name": d.name, "psi": round(d.psi, 4), "status": d.status,
                              "n": d.n} for d in ranked]}


def feed(model: ReadModel, records: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
    """Apply (schema, record) pairs in order: handy for tests and replays."""
    for schema, record in records:
        model.apply(schema, record)
