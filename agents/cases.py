"""The fraud-analyst case book: REVIEW verdicts and customer disputes become cases that analysts
claim, release and resolve; resolutions become override verdicts, labels and notifications, and
whitelistings become records the fraud lanes decide with (they cannot read this book).

Plain Python with no Kafka or Faust: state lives in a ``MutableMapping[str, dict]`` handed in (a
Faust table in the worker, a dict in tests) holding JSON values only, and every entry is written
back by assignment, never mutated in place, because a table only persists what is assigned. The
worker is the single writer, so commands are applied in log order: when two analysts race for one
case, the second one in the log loses, whatever the wall clocks said.

Methods never perform I/O. Each returns a :class:`CaseResult` listing what to publish (case,
whitelisting, verdict, label, audit and notification records, shaped exactly like their Avro
schemas, times as UTC datetimes). A label names the transaction's terminal (copied from the
verdict), so an analyst's finding counts towards the terminal's risk as an issuer's does. A
refused command changes nothing, but is *not* silent: its result carries a :class:`CaseError`
(``raise_for_refusal`` raises it) and an audit record of the refusal, so the API can both answer
the analyst and publish the attempt for the auditors.

Free text (analysts' reasons, customers' dispute wording) is passed through ``redact_text``: a
customer who types their card number into a dispute must not put it on a topic.
"""

from __future__ import annotations

import builtins
import copy
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agents.fraud.decision import CUSTOMER_MESSAGES
from schemas.clock import from_millis, to_millis
from schemas.pan import redact_text

__all__ = [
    "APPROVING",
    "DISPUTE_MAX_PRIORITY",
    "MAX_WHITELIST",
    "RESOLUTIONS",
    "ROLES",
    "SLA",
    "CaseBook",
    "CaseError",
    "CaseResult",
    "guardrail_blocked",
    "priority_for",
]

Record = dict[str, Any]

# Priority 1 is the most urgent. Points for risk and for money at stake add up (see priority_for).
SLA: dict[int, timedelta] = {
    1: timedelta(minutes=15),
    2: timedelta(hours=1),
    3: timedelta(hours=4),
    4: timedelta(hours=24),
}
# A dispute is a customer with a declined payment waiting for an answer: never below priority 2.
DISPUTE_MAX_PRIORITY = 2
MAX_WHITELIST = timedelta(days=90)  # whitelisting is a stopgap, not a permanent exemption

ROLES = ("viewer", "analyst", "admin")
_WRITERS = frozenset({"analyst", "admin"})
RESOLUTIONS = ("APPROVE", "DECLINE", "CONFIRMED_FRAUD", "FALSE_POSITIVE")
APPROVING = frozenset({"APPROVE", "FALSE_POSITIVE"})  # resolutions that let the payment through
_LABELS = {"CONFIRMED_FRAUD": "FRAUD", "FALSE_POSITIVE": "GENUINE"}

# Plain words only: no score, rule or feature may reach a cardholder.
_NOTICES = {
    "DISPUTE_RECEIVED": "We have received your query about a declined payment. "
                        "We are looking into it and will get back to you shortly.",
    "APPROVE": "We have checked your payment and approved it. You can try it again now.",
    "FALSE_POSITIVE": "We have checked your payment and approved it. You can try it again now.",
    "DECLINE": "We have checked a recent payment on your card and could not complete it. "
               "Please contact your card issuer if you have questions.",
    "CONFIRMED_FRAUD": "We believe a recent payment on your card was not made by you, so we have "
                       "stopped it. Please contact your card issuer.",
    "UPHELD": "We have looked again at your declined payment and the decision stands. "
              "Please contact your card issuer if you have questions.",
}

_VERDICT_TIMES = ("transaction_time", "decided_at")
_CASE_TIMES = ("due_at", "updated_at")


class CaseError(Exception):
    """A refused command. ``code`` matches the audit schema's RefusalCode; ``audit`` is the record
    of the refusal, which the caller should publish even though it raises."""

    def __init__(self, code: str, message: str, audit: Record | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.audit = audit


@dataclass(frozen=True)
class CaseResult:
    """What one call produced, to be published by the caller (the book does no I/O)."""

    cases: tuple[Record, ...] = ()
    whitelists: tuple[Record, ...] = ()
    verdicts: tuple[Record, ...] = ()
    labels: tuple[Record, ...] = ()
    audits: tuple[Record, ...] = ()
    notifications: tuple[Record, ...] = ()
    error: CaseError | None = None

    @property
    def refused(self) -> bool:
        return self.error is not None

    def raise_for_refusal(self) -> None:
        if self.error is not None:
            raise self.error

    def records(self) -> builtins.list[tuple[str, Record]]:
        """(schema name, record) pairs in publishing order: state first, then what it caused."""
        groups = (("case", self.cases), ("whitelist", self.whitelists),
                  ("verdict", self.verdicts), ("label", self.labels),
                  ("notification", self.notifications), ("audit", self.audits))
        return [(name, rec) for name, recs in groups for rec in recs]


# -- pure helpers -------------------------------------------------------------------------------

def _ms(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("times must be timezone-aware (UTC)")
    return to_millis(when)


def _convert_times(record: Mapping[str, Any], times: tuple[str, ...], kind: type,
                   convert: Callable[[Any], Any]) -> Record:
    out = copy.deepcopy(dict(record))
    for name in times:
        if isinstance(out.get(name), kind):
            out[name] = convert(out[name])
    return out


def _to_json(record: Mapping[str, Any], times: tuple[str, ...]) -> Record:
    """Datetimes as epoch ms, so the store holds plain JSON."""
    return _convert_times(record, times, datetime, _ms)


def _from_json(record: Mapping[str, Any], times: tuple[str, ...]) -> Record:
    return _convert_times(record, times, int, from_millis)


def _clean(text: str | None) -> str | None:
    """Strip and mask card numbers; None when nothing is left."""
    if text is None or not text.strip():
        return None
    return redact_text(text.strip())[0]


def priority_for(score: float, amount_eur: float | None) -> int:
    """Queue priority 1 (most urgent) .. 4 from risk and money at stake.

    Points: score < 0.6 -> 0, < 0.8 -> 1, < 0.9 -> 2, else 3; amount (EUR) < 100 -> 0,
    < 1000 -> 1, else 2 (unknown amount -> 0). Priority 1 at 4+ points, 2 at 3, 3 at 2, else 4.
    So a near-certain fraud on a large amount is worked first, and a borderline score on a coffee
    last; either high risk or high value alone lifts a case one step.
    """
    score_points = 0 if score < 0.6 else 1 if score < 0.8 else 2 if score < 0.9 else 3
    amount = amount_eur if amount_eur is not None and math.isfinite(amount_eur) else 0.0
    amount_points = 0 if amount < 100 else 1 if amount < 1000 else 2
    points = score_points + amount_points
    return 1 if points >= 4 else 2 if points == 3 else 3 if points == 2 else 4


def guardrail_blocked(verdict: Mapping[str, Any]) -> bool:
    """A DECLINE with any failed guardrail check: releasing it takes two analysts.

    The verdict does not say which failed check demanded the block, so any failure on a decline
    counts; erring towards a second pair of eyes is the safe direction.
    """
    failed = any(not g.get("passed", True) for g in verdict.get("guardrails") or ())
    return verdict.get("decision") == "DECLINE" and failed


def _outcome(decision: str) -> str:
    """What the customer experienced: REVIEW lets the payment through while an analyst looks."""
    return "declined" if decision == "DECLINE" else "approved"


def _decision_for(resolution: str) -> str:
    return "APPROVE" if resolution in APPROVING else "DECLINE"


def _audit_id(fields: Mapping[str, Any]) -> str:
    """From the content, so the same attempt re-applied after a restart keeps its id."""
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return "aud-" + hashlib.sha256(blob).hexdigest()[:20]


@dataclass(frozen=True)
class _Ctx:
    """Who is asking and why, carried into every audit record of one call."""

    actor: str
    role: str  # the audit schema's AuditRole symbol
    action: str
    reason: str | None
    now: datetime


class CaseBook:
    """Cases, whitelist and indexes in one store; see the module docstring.

    Store keys: ``case:<case_id>`` (the case record plus the verdict under review and any pending
    first approval), ``txn:<transaction_id>`` (the transaction's case id, for disputes) and
    ``wl:<card_token>`` (a whitelisting).
    """

    def __init__(self, store: MutableMapping[str, Any]) -> None:
        self._store = store
        # Unresolved case id -> opened_at (ms): the queue gauges read it instead of every case
        # ever opened. Built by one scan on first use (the store may be a recovered table),
        # then kept by the two places that write a case.
        self._unresolved: dict[str, int] | None = None

    # -- opening ---------------------------------------------------------------------------------

    def open_from_verdict(self, verdict: Mapping[str, Any], now: datetime,
                          amount_eur: float | None = None) -> CaseResult:
        """Open a case for a REVIEW verdict; anything else, or a re-delivered one, is a no-op.

        ``amount_eur`` defaults to the verdict's logged TX_AMOUNT feature (already in euros).
        Shadow verdicts are never acted on, so they open nothing either.
        """
        if verdict.get("decision") != "REVIEW" or verdict.get("arm") == "SHADOW":
            return CaseResult()
        case_id = f"case-{verdict['verdict_id']}"
        if self._entry(case_id) is not None:
            return CaseResult()  # idempotent: the case id is derived from the verdict id
        if amount_eur is None:
            amount_eur = (verdict.get("features") or {}).get("TX_AMOUNT")
        priority = priority_for(float(verdict["score"]), amount_eur)
        case = self._new_case(case_id, verdict, priority, "REVIEW_VERDICT", now)
        ctx = _Ctx(str(verdict.get("decided_by") or "worker"), "SYSTEM", "OPEN", None, now)
        self._save(case, verdict, now, opened_at=now)
        audit = self._audit(ctx, case=case, before=None,
                            detail=f"opened for a payment sent to review, priority {priority}")
        return CaseResult(cases=(self._case_out(case),), audits=(audit,))

    def dispute(self, transaction_id: str, verdict: Mapping[str, Any], reason: str,
                now: datetime) -> CaseResult:
        """The customer disputes the decline ``verdict`` (the latest decision on the payment).

        Opens a DISPUTE case, or reopens the transaction's resolved case (version + 1). A dispute
        of a decision an analyst already replaced is refused as SUPERSEDED, which also makes a
        re-delivered dispute harmless; one for a case still being worked is noted, not duplicated.
        """
        ctx = _Ctx("customer", "CUSTOMER", "DISPUTE", _clean(reason), now)
        scope: dict[str, Any] = {"transaction_id": transaction_id,
                                 "card_token": verdict.get("card_token"),
                                 "verdict_id": verdict.get("verdict_id")}
        if ctx.reason is None:
            return self._refuse(ctx, "MISSING_REASON", "a dispute needs the customer's reason",
                                **scope)
        if verdict.get("transaction_id") != transaction_id or verdict.get("decision") != "DECLINE":
            return self._refuse(ctx, "NOT_DISPUTABLE",
                                "only a declined payment's latest verdict can be disputed",
                                **scope)
        index = self._store.get(f"txn:{transaction_id}")
        entry = self._entry(index["case_id"]) if index else None
        priority = min(priority_for(float(verdict["score"]),
                                    (verdict.get("features") or {}).get("TX_AMOUNT")),
                       DISPUTE_MAX_PRIORITY)
        if entry is None:
            case = self._new_case(f"case-{verdict['verdict_id']}", verdict, priority, "DISPUTE",
                                  now)
            detail = "opened for the customer's dispute of a declined payment"
            before = None
        else:
            before = entry["case"]
            current = before["verdict_id"] if before["status"] != "RESOLVED" else entry.get(
                "override_id")
            if current != verdict["verdict_id"]:
                return self._refuse(ctx, "SUPERSEDED", "the disputed decision was already "
                                    "replaced by an analyst's review", case=before)
            if before["status"] != "RESOLVED":
                audit = self._audit(ctx, case=before, before=before,
                                    detail="dispute noted; the case is already being worked")
                return CaseResult(audits=(audit,), notifications=(
                    self._notice(before, "DISPUTE_RECEIVED", None, now),))
            case = {**before, "status": "OPEN", "assignee": None, "resolution": "NONE",
                    "reason": None, "opened_by": "DISPUTE", "verdict_id": verdict["verdict_id"],
                    "priority": priority, "due_at": _ms(now + SLA[priority]),
                    "updated_at": _ms(now), "version": before["version"] + 1}
            ctx = _Ctx(ctx.actor, ctx.role, "REOPEN", ctx.reason, now)
            detail = "reopened: the customer disputes the analyst's decline"
        self._save(case, verdict, now, opened_at=now)
        audit = self._audit(ctx, case=case, before=before, detail=detail)
        return CaseResult(cases=(self._case_out(case),), audits=(audit,),
                          notifications=(self._notice(case, "DISPUTE_RECEIVED", None, now),))

    # -- analyst commands ----------------------------------------------------------------------

    def claim(self, case_id: str, actor: str, role: str, reason: str, now: datetime,
              expected_version: int | None = None) -> CaseResult:
        """Take a case off the queue. A case claimed by someone else, or changed since the
        version the analyst saw, is a CONFLICT: of two simultaneous claims only one wins."""
        ctx, entry, refusal = self._check("CLAIM", case_id, actor, role, reason, now,
                                          expected_version)
        if refusal is not None:
            return refusal
        assert entry is not None
        case = entry["case"]
        if case["status"] == "RESOLVED":
            return self._refuse(ctx, "WRONG_STATE", "the case is already resolved", case=case)
        if case["status"] == "CLAIMED":
            if case["assignee"] == actor:
                return CaseResult()  # already yours: a re-delivered claim changes nothing
            return self._refuse(ctx, "CONFLICT", f"already claimed by {case['assignee']}",
                                case=case)
        return self._change(ctx, entry, {"status": "CLAIMED", "assignee": actor}, "claimed")

    def release(self, case_id: str, actor: str, role: str, reason: str, now: datetime,
                expected_version: int | None = None) -> CaseResult:
        """Put a claimed case back on the queue: the holder may, and an admin may for anyone."""
        ctx, entry, refusal = self._check("RELEASE", case_id, actor, role, reason, now,
                                          expected_version)
        if refusal is not None:
            return refusal
        assert entry is not None
        case = entry["case"]
        if case["status"] != "CLAIMED":
            return self._refuse(ctx, "WRONG_STATE", "only a claimed case can be released",
                                case=case)
        if case["assignee"] != actor and role != "admin":
            return self._refuse(ctx, "FORBIDDEN", f"claimed by {case['assignee']}; only they or "
                                "an admin can release it", case=case)
        return self._change(ctx, entry, {"status": "OPEN", "assignee": None}, "released")

    def resolve(self, case_id: str, actor: str, role: str, resolution: str, reason: str,
                now: datetime, expected_version: int | None = None) -> CaseResult:
        """Decide the case. The holder of the claim may (an admin without claiming).

        Approving a guardrail-blocked payment takes two different analysts: the first approval is
        recorded as pending and the case goes back on the queue; the same analyst approving
        again is refused (FOUR_EYES). Declining needs one analyst: blocking is the safe way.
        """
        ctx, entry, refusal = self._check("RESOLVE", case_id, actor, role, reason, now,
                                          expected_version)
        if refusal is not None:
            return refusal
        assert entry is not None
        case = entry["case"]
        if resolution not in RESOLUTIONS:
            allowed = ", ".join(RESOLUTIONS)
            return self._refuse(ctx, "INVALID", f"resolution must be one of {allowed}", case=case)
        scope: dict[str, Any] = {"case": case, "resolution": resolution}
        if case["status"] == "RESOLVED":
            return self._refuse(ctx, "WRONG_STATE", "the case is already resolved", **scope)
        if role != "admin" and (case["status"] != "CLAIMED" or case["assignee"] != actor):
            holder = case["assignee"] or "nobody"
            return self._refuse(ctx, "CONFLICT", f"claim the case first (claimed by {holder})",
                                **scope)
        pending = entry.get("pending")
        if resolution in APPROVING and guardrail_blocked(entry["verdict"]):
            if pending is None:
                return self._first_approval(ctx, entry, resolution)
            if pending["actor"] == actor:
                return self._refuse(ctx, "FOUR_EYES", "releasing a guardrail-blocked payment "
                                    "needs a second, different analyst", **scope)
        return self._resolve(ctx, entry, resolution)

    def whitelist(self, card_token: str, actor: str, role: str, until: datetime, reason: str,
                  now: datetime) -> CaseResult:
        """Trust a card from ``now`` until ``until`` (at most MAX_WHITELIST ahead).

        The result's ``whitelists`` record is what the fraud lanes decide with (published to the
        compacted whitelist topic); ``is_whitelisted`` answers from this book."""
        ctx = _Ctx(actor, _audit_role(role), "WHITELIST", _clean(reason), now)
        scope: dict[str, Any] = {"card_token": card_token, "whitelist_until": until}
        if role not in _WRITERS:
            return self._refuse(ctx, "FORBIDDEN", f"role {role!r} cannot whitelist", **scope)
        if ctx.reason is None:
            return self._refuse(ctx, "MISSING_REASON", "a whitelisting needs a reason", **scope)
        if not now < until <= now + MAX_WHITELIST:
            return self._refuse(ctx, "INVALID", "the end must be in the future and within "
                                f"{MAX_WHITELIST.days} days", **scope)
        self._store[f"wl:{card_token}"] = {"until": _ms(until), "actor": actor,
                                           "reason": ctx.reason, "at": _ms(now)}
        audit = self._audit(ctx, detail=f"card whitelisted until {until.isoformat()}", **scope)
        record = {"card_token": card_token, "since": now, "until": until, "actor": actor,
                  "reason": ctx.reason}
        return CaseResult(whitelists=(record,), audits=(audit,))

    def apply(self, command: Mapping[str, Any], now: datetime) -> CaseResult:
        """Apply a ``case_command`` record (what the API publishes for the worker)."""
        role = str(command.get("role", "UNKNOWN")).lower()
        args = (command.get("actor", ""), role)
        reason = command.get("reason") or ""
        kind = command.get("command")
        expected = command.get("expected_version")
        if kind == "CLAIM":
            return self.claim(command.get("case_id") or "", *args, reason, now, expected)
        if kind == "RELEASE":
            return self.release(command.get("case_id") or "", *args, reason, now, expected)
        if kind == "RESOLVE":
            return self.resolve(command.get("case_id") or "", *args,
                                command.get("resolution") or "NONE", reason, now, expected)
        if kind == "WHITELIST" and command.get("until") is not None:
            return self.whitelist(command.get("card_token") or "", *args, command["until"],
                                  reason, now)
        ctx = _Ctx(str(args[0]), _audit_role(role), "UNKNOWN", _clean(reason), now)
        return self._refuse(ctx, "INVALID", f"unknown or incomplete command {kind!r}",
                            case_id=command.get("case_id"), card_token=command.get("card_token"))

    # -- queries --------------------------------------------------------------------------------

    def is_whitelisted(self, card_token: str, now: datetime) -> bool:
        entry = self._store.get(f"wl:{card_token}")
        return entry is not None and _ms(now) < entry["until"]

    def get(self, case_id: str) -> Record | None:
        entry = self._entry(case_id)
        return None if entry is None else self._case_out(entry["case"])

    def pending_approval(self, case_id: str) -> Record | None:
        """The first approval of a guardrail-blocked case awaiting a second analyst, if any."""
        entry = self._entry(case_id)
        pending = None if entry is None else entry.get("pending")
        return None if pending is None else {**pending, "at": from_millis(pending["at"])}

    def queue_size(self) -> int:
        """Cases not yet resolved (open or claimed)."""
        return len(self._open_index())

    def oldest_open_age(self, now: datetime) -> timedelta | None:
        """How long the longest-waiting unresolved case has been open (None if none is)."""
        opened = self._open_index().values()
        return now - from_millis(min(opened)) if opened else None

    def forget_index(self) -> None:
        """Rebuild the unresolved index from the store on next use (the store changed under
        this book: a table recovered after a rebalance)."""
        self._unresolved = None

    def _open_index(self) -> dict[str, int]:
        if self._unresolved is None:
            self._unresolved = {e["case"]["case_id"]: e["opened_at"] for e in self._entries()
                                if e["case"]["status"] != "RESOLVED"}
        return self._unresolved

    def _indexed(self, entry: Mapping[str, Any]) -> None:
        """Keep the unresolved index in step with a case just written."""
        if self._unresolved is None:
            return  # built from the store on first use, this write included
        case = entry["case"]
        if case["status"] == "RESOLVED":
            self._unresolved.pop(case["case_id"], None)
        else:
            self._unresolved[case["case_id"]] = entry["opened_at"]

    def list(self, status: str | None = None, priority: int | None = None,
             assignee: str | None = None, overdue_at: datetime | None = None,
             ) -> builtins.list[Record]:
        """Cases matching every filter given, most urgent first (priority, then due_at).

        ``overdue_at`` keeps unresolved cases whose due_at is at or before that time.
        """
        limit = None if overdue_at is None else _ms(overdue_at)
        cases = [
            e["case"] for e in self._entries()
            if (status is None or e["case"]["status"] == status)
            and (priority is None or e["case"]["priority"] == priority)
            and (assignee is None or e["case"]["assignee"] == assignee)
            and (limit is None or (e["case"]["status"] != "RESOLVED"
                                   and e["case"]["due_at"] <= limit))
        ]
        cases.sort(key=lambda c: (c["priority"], c["due_at"], c["case_id"]))
        return [self._case_out(c) for c in cases]

    # -- internals --------------------------------------------------------------------------------

    def _entry(self, case_id: str) -> Record | None:
        entry = self._store.get(f"case:{case_id}")
        return None if entry is None else copy.deepcopy(dict(entry))

    def _entries(self) -> Iterator[Record]:
        for key, value in list(self._store.items()):
            if key.startswith("case:"):
                yield value

    @staticmethod
    def _new_case(case_id: str, verdict: Mapping[str, Any], priority: int, origin: str,
                  now: datetime) -> Record:
        return {"case_id": case_id, "transaction_id": verdict["transaction_id"],
                "card_token": verdict["card_token"], "status": "OPEN", "priority": priority,
                "due_at": _ms(now + SLA[priority]), "assignee": None, "resolution": "NONE",
                "reason": None, "opened_by": origin, "verdict_id": verdict["verdict_id"],
                "updated_at": _ms(now), "version": 1}

    def _save(self, case: Record, verdict: Mapping[str, Any], now: datetime,
              opened_at: datetime) -> None:
        entry = {"case": case, "verdict": _to_json(verdict, _VERDICT_TIMES), "pending": None,
                 "override_id": None, "opened_at": _ms(opened_at)}
        self._store[f"case:{case['case_id']}"] = entry
        self._store[f"txn:{case['transaction_id']}"] = {"case_id": case["case_id"]}
        self._indexed(entry)

    @staticmethod
    def _case_out(case: Mapping[str, Any]) -> Record:
        return _from_json(case, _CASE_TIMES)

    def _check(self, action: str, case_id: str, actor: str, role: str, reason: str,
               now: datetime, expected_version: int | None,
               ) -> tuple[_Ctx, Record | None, CaseResult | None]:
        """The checks every case command shares, in order: role, reason, case, version."""
        ctx = _Ctx(actor, _audit_role(role), action, _clean(reason), now)
        entry = self._entry(case_id)
        case = None if entry is None else entry["case"]
        where: dict[str, Any] = {"case": case} if case else {"case_id": case_id}
        if role not in _WRITERS:
            verb = action.lower()
            return ctx, None, self._refuse(ctx, "FORBIDDEN", f"role {role!r} cannot {verb} cases",
                                           **where)
        if ctx.reason is None:
            return ctx, None, self._refuse(ctx, "MISSING_REASON", "a reason is required", **where)
        if entry is None:
            return ctx, None, self._refuse(ctx, "UNKNOWN_CASE", f"no case {case_id!r}", **where)
        if expected_version is not None and expected_version != entry["case"]["version"]:
            return ctx, None, self._refuse(
                ctx, "CONFLICT", f"the case changed: you saw version {expected_version}, it is "
                f"now version {entry['case']['version']}", **where)
        return ctx, entry, None

    def _change(self, ctx: _Ctx, entry: Record, changes: Mapping[str, Any], detail: str,
                entry_changes: Mapping[str, Any] | None = None, **extra: Any) -> CaseResult:
        """Apply ``changes`` as the next version, store it, and audit it."""
        before = entry["case"]
        case = {**before, **changes, "updated_at": _ms(ctx.now), "version": before["version"] + 1}
        stored = {**entry, **(entry_changes or {}), "case": case}
        self._store[f"case:{case['case_id']}"] = stored
        self._indexed(stored)
        audit = self._audit(ctx, case=case, before=before, detail=detail, **extra)
        return CaseResult(cases=(self._case_out(case),), audits=(audit,))

    def _first_approval(self, ctx: _Ctx, entry: Record, resolution: str) -> CaseResult:
        pending = {"actor": ctx.actor, "resolution": resolution, "reason": ctx.reason,
                   "at": _ms(ctx.now)}
        ctx = _Ctx(ctx.actor, ctx.role, "APPROVAL_PENDING", ctx.reason, ctx.now)
        return self._change(
            ctx, entry,
            {"status": "OPEN", "assignee": None,
             "reason": f"awaiting a second analyst's approval (first: {ctx.actor})"},
            "first approval of a guardrail-blocked payment; a different analyst must approve too",
            resolution=resolution, entry_changes={"pending": pending})

    def _resolve(self, ctx: _Ctx, entry: Record, resolution: str) -> CaseResult:
        before = entry["case"]
        original = _from_json(entry["verdict"], _VERDICT_TIMES)
        version = before["version"] + 1
        decision = _decision_for(resolution)
        override_id = f"{before['case_id']}-v{version}"
        pending = entry.get("pending")
        detail = f"resolved {resolution}"
        if pending is not None and resolution in APPROVING:
            detail += f", second approval after {pending['actor']}"
        result = self._change(
            ctx, entry, {"status": "RESOLVED", "resolution": resolution, "reason": ctx.reason},
            detail, resolution=resolution, override_verdict_id=override_id,
            entry_changes={"pending": None, "override_id": override_id})
        case = result.cases[0]
        verdict = {**original, "verdict_id": override_id, "decision": decision,
                   "arm": "NONE", "customer_message": CUSTOMER_MESSAGES[decision],
                   "processing_latency_ms": 0.0, "decided_at": ctx.now, "is_override": True,
                   "overrides_verdict_id": original["verdict_id"], "decided_by": ctx.actor,
                   "shadow": None}
        labels: tuple[Record, ...] = ()
        if resolution in _LABELS:
            labels = ({"transaction_id": original["transaction_id"],
                       "card_token": original["card_token"],
                       "terminal_id": original.get("terminal_id"),
                       # Verdicts before v1.5 carry no merchant: the label then goes by
                       # terminal, which is right for handbook traffic (merchant = terminal).
                       "merchant_id": original.get("merchant_id") or original.get("terminal_id"),
                       "device_id": original.get("device_id"),
                       "label": _LABELS[resolution], "fraud_scenario": None,
                       "transaction_time": original["transaction_time"], "known_at": ctx.now,
                       "source": "ANALYST"},)
        notices: tuple[Record, ...] = ()
        changed = _outcome(decision) != _outcome(original["decision"])
        if changed or before["opened_by"] == "DISPUTE":
            kind = resolution if changed else "UPHELD"
            notices = (self._notice(case, kind, override_id, ctx.now),)
        return CaseResult(cases=result.cases, verdicts=(verdict,), labels=labels,
                          audits=result.audits, notifications=notices)

    @staticmethod
    def _notice(case: Mapping[str, Any], kind: str, verdict_id: str | None,
                now: datetime) -> Record:
        symbol = {"APPROVE": "PAYMENT_APPROVED", "FALSE_POSITIVE": "PAYMENT_APPROVED",
                  "DECLINE": "PAYMENT_DECLINED", "CONFIRMED_FRAUD": "PAYMENT_DECLINED",
                  "UPHELD": "DECISION_UPHELD"}.get(kind, kind)
        return {"notification_id": f"{case['case_id']}-v{case['version']}-{symbol.lower()}",
                "transaction_id": case["transaction_id"], "card_token": case["card_token"],
                "kind": symbol, "message": _NOTICES[kind], "case_id": case["case_id"],
                "verdict_id": verdict_id, "created_at": now}

    def _audit(self, ctx: _Ctx, *, detail: str, case: Mapping[str, Any] | None = None,
               before: Mapping[str, Any] | None = None, refusal: str | None = None,
               **fields: Any) -> Record:
        record: Record = {
            "occurred_at": ctx.now, "actor": ctx.actor, "role": ctx.role, "action": ctx.action,
            "outcome": "REFUSED" if refusal else "ACCEPTED", "refusal": refusal,
            "reason": ctx.reason, "detail": detail, "case_id": None, "transaction_id": None,
            "card_token": None, "status_before": None, "status_after": None,
            "case_version": None, "resolution": None, "verdict_id": None,
            "override_verdict_id": None, "whitelist_until": None}
        if case is not None:
            record.update(case_id=case["case_id"], transaction_id=case["transaction_id"],
                          card_token=case["card_token"], status_after=case["status"],
                          case_version=case["version"], verdict_id=case["verdict_id"])
            record["status_before"] = before["status"] if before is not None else None
        record.update(fields)
        return {"audit_id": _audit_id({**record, "occurred_at": _ms(ctx.now)}), **record}

    def _refuse(self, ctx: _Ctx, code: str, message: str, *,
                case: Mapping[str, Any] | None = None, **fields: Any) -> CaseResult:
        """A refusal: nothing stored, an audit record, and the error to raise or report."""
        audit = self._audit(ctx, case=case, before=case, refusal=code, detail=message,
                            **{k: v for k, v in fields.items() if v is not None})
        return CaseResult(audits=(audit,), error=CaseError(code, message, audit))


def _audit_role(role: str) -> str:
    return role.upper() if role in ROLES else "UNKNOWN"
