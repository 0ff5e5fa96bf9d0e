"""The case book: opening, claiming, resolving, four eyes, refusals, disputes, whitelisting.

No broker: the store is a dict, and every record the book produces is pushed through the Avro
codec, because a record the worker cannot encode is a bug found too late in production.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.cases import CaseBook, CaseError, CaseResult, priority_for
from schemas.clock import from_millis
from schemas.codec import make_codec

T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
CODEC = make_codec(None)


def verdict(n: int = 1, decision: str = "REVIEW", score: float = 0.72, amount: float = 50.0,
            blocked: bool = False, **changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "verdict_id": f"v-{n}",
        "transaction_id": f"tx-{n}",
        "card_token": f"tok_{n:04x}",
        "terminal_id": f"term-{n}",
        "decision": decision,
        "score": score,
        "model_version": "lgbm-2025-03-01",
        "arm": "CHAMPION",
        "reasons": [{"feature": "TX_AMOUNT", "value": amount, "contribution": 0.2}],
        "rules_fired": [{"rule_id": "R-velocity", "reason": "many attempts"}],
        "guardrails": [{"name": "aml_sanctions", "passed": not blocked, "detail": "checked"}],
        "fallbacks": [],
        "customer_message": "Your payment is being checked. We will let you know shortly.",
        "processing_latency_ms": 4.5,
        "transaction_time": T0 - timedelta(seconds=1),
        "decided_at": T0,
        "is_override": False,
        "overrides_verdict_id": None,
        "decided_by": "worker",
        "features": {"TX_AMOUNT": amount},
        "shadow": None,
    }
    record.update(changes)
    return record


def encodes(result: CaseResult) -> CaseResult:
    """Every record encodes, nothing carries a card number, and the store stays JSON."""
    for schema, record in result.records():
        CODEC.encode(schema, record, topic="t")
        assert "4111" not in json.dumps(record, default=str)
    return result


@pytest.fixture
def store() -> dict[str, Any]:
    return {}


@pytest.fixture
def book(store: dict[str, Any]) -> CaseBook:
    return CaseBook(store)


def opened(book: CaseBook, v: dict[str, Any]) -> str:
    result = encodes(book.open_from_verdict(v, T0))
    return str(result.cases[0]["case_id"])


def claimed(book: CaseBook, v: dict[str, Any], actor: str = "ana") -> str:
    case_id = opened(book, v)
    encodes(book.claim(case_id, actor, "analyst", "taking it", T0)).raise_for_refusal()
    return case_id


# -- opening -----------------------------------------------------------------------------------


def test_only_review_verdicts_open_cases_and_only_once(book: CaseBook,
                                                       store: dict[str, Any]) -> None:
    for decision in ("APPROVE", "DECLINE"):
        assert book.open_from_verdict(verdict(1, decision), T0) == CaseResult()
    assert book.open_from_verdict(verdict(2, arm="SHADOW"), T0) == CaseResult()
    first = encodes(book.open_from_verdict(verdict(3), T0))
    case = first.cases[0]
    assert (case["status"], case["opened_by"], case["verdict_id"], case["version"]) == (
        "OPEN", "REVIEW_VERDICT", "v-3", 1)
    assert first.audits[0]["action"] == "OPEN" and first.audits[0]["role"] == "SYSTEM"
    assert book.open_from_verdict(verdict(3), T0 + timedelta(minutes=5)) == CaseResult()
    assert book.queue_size() == 1
    json.dumps(store)  # the store must be something a Faust table can hold


def test_priority_formula_and_queue_order(book: CaseBook) -> None:
    assert priority_for(0.95, 5000) == 1
    assert priority_for(0.95, 10) == 2
    assert priority_for(0.65, 5000) == 2
    assert priority_for(0.62, 150) == 3
    assert priority_for(0.55, 10) == 4
    assert priority_for(0.55, None) == 4
    for n, score, amount in [(1, 0.55, 10), (2, 0.95, 5000), (3, 0.62, 150), (4, 0.95, 10)]:
        opened(book, verdict(n, score=score, amount=amount))
    listed = book.list()
    assert [c["case_id"] for c in listed] == ["case-v-2", "case-v-4", "case-v-3", "case-v-1"]
    assert [c["due_at"] - T0 for c in listed] == [
        timedelta(minutes=15), timedelta(hours=1), timedelta(hours=4), timedelta(hours=24)]
    assert [c["case_id"] for c in book.list(priority=3)] == ["case-v-3"]
    overdue = book.list(overdue_at=T0 + timedelta(minutes=30))
    assert [c["case_id"] for c in overdue] == ["case-v-2"]
    assert book.oldest_open_age(T0 + timedelta(minutes=7)) == timedelta(minutes=7)


# -- claiming ---------------------------------------------------------------------------------


def test_claim_race_second_claimant_refused(book: CaseBook) -> None:
    case_id = opened(book, verdict())
    seen = book.get(case_id)
    assert seen is not None
    won = encodes(book.claim(case_id, "ana", "analyst", "mine", T0, seen["version"]))
    lost = encodes(book.claim(case_id, "bob", "analyst", "mine", T0, seen["version"]))
    assert won.cases[0]["assignee"] == "ana" and won.cases[0]["version"] == 2
    assert lost.refused and lost.error is not None and lost.error.code == "CONFLICT"
    assert lost.audits[0]["outcome"] == "REFUSED" and lost.audits[0]["actor"] == "bob"
    with pytest.raises(CaseError) as caught:
        lost.raise_for_refusal()
    assert caught.value.audit is lost.audits[0]
    # without a version the claim still loses: the case is someone else's
    assert book.claim(case_id, "bob", "analyst", "mine", T0).error.code == "CONFLICT"  # type: ignore[union-attr]
    assert book.list(assignee="ana")[0]["status"] == "CLAIMED"


def test_release_by_holder_or_admin_only(book: CaseBook) -> None:
    case_id = claimed(book, verdict())
    refused = book.release(case_id, "bob", "analyst", "not mine", T0)
    assert refused.error is not None and refused.error.code == "FORBIDDEN"
    released = encodes(book.release(case_id, "boss", "admin", "ana is off sick", T0))
    assert released.cases[0]["status"] == "OPEN" and released.cases[0]["assignee"] is None
    assert released.audits[0]["status_before"] == "CLAIMED"


# -- resolving ----------------------------------------------------------------------------------


def test_confirmed_fraud_publishes_linked_override_label_audit_and_notice(book: CaseBook) -> None:
    case_id = claimed(book, verdict(7))
    later = T0 + timedelta(minutes=9)
    result = encodes(book.resolve(case_id, "ana", "analyst", "CONFIRMED_FRAUD",
                                  "cardholder denies it", later))
    (case,), (override,), (label,), (audit,), (notice,) = (
        result.cases, result.verdicts, result.labels, result.audits, result.notifications)
    assert (case["status"], case["resolution"], case["version"]) == ("RESOLVED",
                                                                     "CONFIRMED_FRAUD", 3)
    assert override["verdict_id"] == f"{case_id}-v3"
    assert override["is_override"] and override["overrides_verdict_id"] == "v-7"
    assert (override["decision"], override["decided_by"]) == ("DECLINE", "ana")
    assert override["transaction_id"] == "tx-7" and override["decided_at"] == later
    assert (label["label"], label["source"], label["transaction_id"]) == ("FRAUD", "ANALYST",
                                                                          "tx-7")
    assert label["known_at"] == later
    # The terminal, from the verdict: the fraud lane counts it in that terminal's risk.
    assert label["terminal_id"] == "term-7"
    assert (audit["action"], audit["outcome"], audit["actor"]) == ("RESOLVE", "ACCEPTED", "ana")
    assert (audit["status_before"], audit["status_after"], audit["case_version"]) == (
        "CLAIMED", "RESOLVED", 3)
    assert audit["reason"] == "cardholder denies it"
    assert audit["override_verdict_id"] == override["verdict_id"]
    assert notice["kind"] == "PAYMENT_DECLINED" and notice["verdict_id"] == override["verdict_id"]
    for text in (notice["message"], override["customer_message"]):
        assert "0.72" not in text and "R-velocity" not in text and "TX_AMOUNT" not in text
    assert book.queue_size() == 0 and book.oldest_open_age(later) is None


def test_notification_only_when_the_outcome_changes(book: CaseBook) -> None:
    # REVIEW let the payment through: approving it changes nothing for the customer
    case_id = claimed(book, verdict(1))
    approved = encodes(book.resolve(case_id, "ana", "analyst", "FALSE_POSITIVE", "known buyer",
                                    T0))
    assert approved.notifications == ()
    assert approved.labels[0]["label"] == "GENUINE"
    assert approved.labels[0]["terminal_id"] == "term-1"
    assert approved.verdicts[0]["decision"] == "APPROVE"
    # declining a reviewed payment does change it
    case_id = claimed(book, verdict(2))
    declined = encodes(book.resolve(case_id, "ana", "analyst", "DECLINE", "merchant flagged", T0))
    assert [n["kind"] for n in declined.notifications] == ["PAYMENT_DECLINED"]
    assert declined.labels == ()  # an operational decline is not a finding of fraud


# -- four eyes ---------------------------------------------------------------------------------


def test_guardrail_blocked_release_needs_two_different_analysts(book: CaseBook) -> None:
    blocked = verdict(5, "DECLINE", blocked=True)
    case_id = encodes(book.dispute("tx-5", blocked, "I made this payment", T0)).cases[0]["case_id"]
    encodes(book.claim(case_id, "ana", "analyst", "looking", T0)).raise_for_refusal()
    first = encodes(book.resolve(case_id, "ana", "analyst", "APPROVE", "id checked", T0))
    assert not first.refused and first.verdicts == () and first.notifications == ()
    assert first.audits[0]["action"] == "APPROVAL_PENDING"
    assert first.cases[0]["status"] == "OPEN"  # back on the queue for a second analyst
    assert book.pending_approval(case_id) is not None
    encodes(book.claim(case_id, "ana", "analyst", "again", T0)).raise_for_refusal()
    again = encodes(book.resolve(case_id, "ana", "analyst", "APPROVE", "really", T0))
    assert again.error is not None and again.error.code == "FOUR_EYES"
    assert again.audits[0]["outcome"] == "REFUSED" and again.audits[0]["refusal"] == "FOUR_EYES"
    assert book.get(case_id)["status"] == "CLAIMED"  # type: ignore[index]
    encodes(book.release(case_id, "ana", "analyst", "needs bob", T0)).raise_for_refusal()
    encodes(book.claim(case_id, "bob", "analyst", "second eyes", T0)).raise_for_refusal()
    second = encodes(book.resolve(case_id, "bob", "analyst", "APPROVE", "agree", T0))
    assert second.cases[0]["status"] == "RESOLVED"
    assert second.verdicts[0]["decision"] == "APPROVE"
    assert second.verdicts[0]["overrides_verdict_id"] == "v-5"
    assert [n["kind"] for n in second.notifications] == ["PAYMENT_APPROVED"]
    assert "ana" in second.audits[0]["detail"]
    assert book.pending_approval(case_id) is None


def test_declining_a_blocked_payment_needs_one_analyst(book: CaseBook) -> None:
    blocked = verdict(6, "DECLINE", blocked=True)
    case_id = book.dispute("tx-6", blocked, "not me?", T0).cases[0]["case_id"]
    book.claim(case_id, "ana", "analyst", "looking", T0)
    upheld = encodes(book.resolve(case_id, "ana", "analyst", "DECLINE", "sanctions hit", T0))
    assert upheld.cases[0]["status"] == "RESOLVED"
    # the customer asked, so they hear back even though nothing changed
    assert [n["kind"] for n in upheld.notifications] == ["DECISION_UPHELD"]


# -- refusals ----------------------------------------------------------------------------------


def test_viewer_refused_and_audited(book: CaseBook) -> None:
    case_id = claimed(book, verdict())
    result = encodes(book.resolve(case_id, "val", "viewer", "APPROVE", "looks fine", T0))
    assert result.error is not None and result.error.code == "FORBIDDEN"
    (audit,) = result.audits
    assert (audit["role"], audit["outcome"], audit["refusal"], audit["case_id"]) == (
        "VIEWER", "REFUSED", "FORBIDDEN", case_id)
    assert result.cases == () and book.get(case_id)["status"] == "CLAIMED"  # type: ignore[index]
    stranger = encodes(book.claim(case_id, "eve", "superuser", "hi", T0))
    assert stranger.error is not None and stranger.audits[0]["role"] == "UNKNOWN"


@pytest.mark.parametrize("reason", ["", "   "])
def test_missing_reason_refused(book: CaseBook, reason: str) -> None:
    case_id = claimed(book, verdict())
    result = encodes(book.resolve(case_id, "ana", "analyst", "APPROVE", reason, T0))
    assert result.error is not None and result.error.code == "MISSING_REASON"
    assert result.audits[0]["reason"] is None
    assert book.get(case_id)["version"] == 2  # type: ignore[index]


def test_unknown_case_wrong_state_and_bad_resolution(book: CaseBook) -> None:
    unknown = encodes(book.claim("case-nope", "ana", "analyst", "hi", T0))
    assert unknown.error is not None and unknown.error.code == "UNKNOWN_CASE"
    assert unknown.audits[0]["case_id"] == "case-nope"
    case_id = opened(book, verdict())
    unclaimed = encodes(book.resolve(case_id, "ana", "analyst", "APPROVE", "ok", T0))
    assert unclaimed.error is not None and unclaimed.error.code == "CONFLICT"
    book.claim(case_id, "ana", "analyst", "mine", T0)
    bad = encodes(book.resolve(case_id, "ana", "analyst", "MAYBE", "hmm", T0))
    assert bad.error is not None and bad.error.code == "INVALID"
    book.resolve(case_id, "ana", "analyst", "APPROVE", "fine", T0).raise_for_refusal()
    done = encodes(book.claim(case_id, "bob", "analyst", "late", T0))
    assert done.error is not None and done.error.code == "WRONG_STATE"


def test_card_numbers_in_free_text_are_masked(book: CaseBook) -> None:
    case_id = claimed(book, verdict())
    result = encodes(book.resolve(case_id, "ana", "analyst", "APPROVE",
                                  "customer read out 4111 1111 1111 1111", T0))
    assert "4111" not in result.cases[0]["reason"]


# -- disputes ---------------------------------------------------------------------------------


def test_dispute_opens_then_reopens_with_version_increments(book: CaseBook) -> None:
    declined = verdict(9, "DECLINE")
    opened_ = encodes(book.dispute("tx-9", declined, "I was at the shop", T0))
    case = opened_.cases[0]
    assert (case["opened_by"], case["status"], case["version"]) == ("DISPUTE", "OPEN", 1)
    assert case["priority"] <= 2 and case["due_at"] <= T0 + timedelta(hours=1)
    assert [n["kind"] for n in opened_.notifications] == ["DISPUTE_RECEIVED"]
    # a second dispute while the case is worked does not open another
    noted = encodes(book.dispute("tx-9", declined, "still waiting", T0))
    assert noted.cases == () and not noted.refused and book.queue_size() == 1
    book.claim(case["case_id"], "ana", "analyst", "mine", T0)
    upheld = encodes(book.resolve(case["case_id"], "ana", "analyst", "DECLINE", "stolen card",
                                  T0))
    override = upheld.verdicts[0]
    assert upheld.cases[0]["version"] == 3
    # the customer disputes the analyst's decline: the same case reopens
    later = T0 + timedelta(days=1)
    reopened = encodes(book.dispute("tx-9", override, "I have the receipt", later))
    again = reopened.cases[0]
    assert again["case_id"] == case["case_id"]
    assert (again["status"], again["version"], again["assignee"], again["resolution"]) == (
        "OPEN", 4, None, "NONE")
    assert again["verdict_id"] == override["verdict_id"]
    assert reopened.audits[0]["action"] == "REOPEN"
    # the original decline was already reviewed: disputing it again is superseded
    stale = encodes(book.dispute("tx-9", declined, "again", later))
    assert stale.error is not None and stale.error.code == "SUPERSEDED"
    # a later resolution overrides the override
    book.claim(case["case_id"], "bob", "analyst", "mine", later)
    final = encodes(book.resolve(case["case_id"], "bob", "analyst", "APPROVE", "receipt", later))
    assert final.verdicts[0]["overrides_verdict_id"] == override["verdict_id"]
    assert final.verdicts[0]["verdict_id"] == f"{case['case_id']}-v6"


def test_only_declines_are_disputable(book: CaseBook) -> None:
    result = encodes(book.dispute("tx-1", verdict(1, "APPROVE"), "why?", T0))
    assert result.error is not None and result.error.code == "NOT_DISPUTABLE"


# -- whitelist and commands -----------------------------------------------------------------------


def test_a_verdict_from_before_terminal_ids_makes_a_label_without_one(book: CaseBook) -> None:
    old = {k: v for k, v in verdict(3).items() if k != "terminal_id"}  # a v1.2 verdict's form
    case_id = claimed(book, old)
    result = encodes(book.resolve(case_id, "ana", "analyst", "CONFIRMED_FRAUD", "denied", T0))
    assert result.labels[0]["terminal_id"] is None  # the lane counts it as without a terminal


def test_whitelist_expires(book: CaseBook) -> None:
    until = T0 + timedelta(days=3)
    result = encodes(book.whitelist("tok_0001", "ana", "analyst", until, "travelling", T0))
    assert result.audits[0]["whitelist_until"] == until
    # What the fraud lanes decide with, published before the audit record.
    assert result.whitelists == ({"card_token": "tok_0001", "since": T0, "until": until,
                                  "actor": "ana", "reason": "travelling"},)
    assert [schema for schema, _ in result.records()] == ["whitelist", "audit"]
    assert book.is_whitelisted("tok_0001", T0 + timedelta(days=2))
    assert not book.is_whitelisted("tok_0001", until)
    assert not book.is_whitelisted("tok_0002", T0)
    viewer = encodes(book.whitelist("tok_0003", "val", "viewer", until, "hm", T0))
    assert viewer.error is not None and viewer.error.code == "FORBIDDEN"
    forever = encodes(book.whitelist("tok_0003", "ana", "analyst", T0 + timedelta(days=400),
                                     "vip", T0))
    assert forever.error is not None and forever.error.code == "INVALID"
    assert viewer.whitelists == forever.whitelists == ()  # a refusal publishes no whitelisting
    assert not book.is_whitelisted("tok_0003", T0)


def test_case_commands_apply_like_method_calls(book: CaseBook) -> None:
    case_id = opened(book, verdict())
    command = {"command_id": "c1", "command": "CLAIM", "actor": "ana", "role": "ANALYST",
               "reason": "mine", "case_id": case_id, "expected_version": 1, "resolution": None,
               "card_token": None, "until": None, "requested_at": T0}
    CODEC.encode("case_command", command, topic="t")
    assert encodes(book.apply(command, T0)).cases[0]["assignee"] == "ana"
    missing = encodes(book.apply({**command, "command": "RESOLVE", "resolution": "APPROVE",
                                  "reason": None, "expected_version": 2}, T0))
    assert missing.error is not None and missing.error.code == "MISSING_REASON"



def _scanned(store: dict[str, Any], now: datetime) -> tuple[int, timedelta | None]:
    """The queue gauges computed the slow way: every case in the store."""
    opened = [e["opened_at"] for k, e in store.items()
              if k.startswith("case:") and e["case"]["status"] != "RESOLVED"]
    age = now - from_millis(min(opened)) if opened else None
    return len(opened), age


def test_the_queue_gauges_follow_opens_resolutions_and_reopens(store: dict[str, Any]) -> None:
    book = CaseBook(store)
    later = T0 + timedelta(hours=2)
    assert (book.queue_size(), book.oldest_open_age(later)) == (0, None)
    first = claimed(book, verdict(1))
    book.open_from_verdict(verdict(2), T0 + timedelta(minutes=5))
    assert (book.queue_size(), book.oldest_open_age(later)) == _scanned(store, later) == (
        2, timedelta(hours=2))
    book.resolve(first, "ana", "analyst", "APPROVE", "known customer", later)
    assert (book.queue_size(), book.oldest_open_age(later)) == _scanned(store, later) == (
        1, timedelta(minutes=115))
    # a resolved decline disputed later reopens its case: unresolved again, counted again
    declined = verdict(3, "DECLINE")
    case = book.dispute("tx-3", declined, "I was there", T0).cases[0]
    book.claim(case["case_id"], "ana", "analyst", "mine", T0)
    override = book.resolve(case["case_id"], "ana", "analyst", "DECLINE", "stolen", T0).verdicts[0]
    assert book.queue_size() == 1
    book.dispute("tx-3", override, "receipt", later)  # reopened now: case 2 is the oldest
    assert (book.queue_size(), book.oldest_open_age(later)) == _scanned(store, later) == (
        2, timedelta(minutes=115))
    # the store changed under the book (a table recovered after a rebalance): rebuilt on request
    store.clear()
    assert book.queue_size() == 2
    book.forget_index()
    assert (book.queue_size(), book.oldest_open_age(later)) == (0, None)
