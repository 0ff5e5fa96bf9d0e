"""The case agent's glue (streams/worker/casework.py) without a broker: a REVIEW verdict's
OPEN command opens a case, analysts' commands in log order decide it, and each record lands on its
topic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.codec import make_codec
from streams.topics import Topic, topic_name
from streams.worker import casework
from streams.worker.admission import Output
from streams.worker.casework import DEPTH_EVERY_S, QUEUE_KEY, CaseStage, dispute_command
from tests.test_codec import RECORDS

CODEC = make_codec(None)
T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def review_verdict(decision: str = "REVIEW") -> dict[str, Any]:
    v: dict[str, Any] = RECORDS["verdict"]()
    v.update(decision=decision, is_override=False, overrides_verdict_id=None, decided_by="worker",
             arm="CHAMPION")
    return v


def command(kind: str, actor: str, role: str, case_id: str, at: datetime,
            **extra: Any) -> bytes:
    record = {"command_id": f"{kind}-{actor}-{at.timestamp()}", "command": kind, "actor": actor,
              "role": role, "reason": "checked with the cardholder", "case_id": case_id,
              "expected_version": None, "resolution": None, "card_token": None, "until": None,
              "transaction_id": None, "verdict": None, "requested_at": at} | extra
    return CODEC.encode("case_command", record, topic="t.rakshit.case-commands")


def decoded(outs: list[Output]) -> list[tuple[str, dict[str, Any]]]:
    return [(o.topic, CODEC.decode(o.value, topic=o.topic).record) for o in outs]


def opened(stage: CaseStage, verdict: dict[str, Any]) -> str:
    raw = CODEC.encode("verdict", verdict, topic=stage.decisions)
    out = stage.open_case(Output(stage.decisions, verdict["transaction_id"].encode(), raw,
                                 opens_case=True), T0)
    # The worker's own topic: only the API writes case-commands (streams.admin.ACLS).
    assert out.topic == topic_name(Topic.CASE_OPENINGS, "t.")
    records = decoded(stage.on_command(out.value, out.topic))
    cases = [r for t, r in records if t.endswith(".cases")]
    assert len(cases) == 1 and cases[0]["status"] == "OPEN"
    assert stage.on_command(out.value, out.topic) == []  # a re-delivered OPEN opens nothing twice
    return str(cases[0]["case_id"])


def test_a_review_verdict_opens_a_case_that_analysts_resolve_in_log_order() -> None:
    stage = CaseStage(CODEC, "t.")
    verdict = review_verdict()
    case_id = opened(stage, verdict)
    first = decoded(stage.on_command(command("CLAIM", "alice", "ANALYST", case_id, T0)))
    second = decoded(stage.on_command(command("CLAIM", "bob", "ANALYST", case_id,
                                              T0 + timedelta(milliseconds=1))))
    assert [r["status"] for t, r in first if t.endswith(".cases")] == ["CLAIMED"]
    refusals = [r for t, r in second if t.endswith(".audit")]
    assert refusals and refusals[0]["outcome"] == "REFUSED" and refusals[0]["actor"] == "bob"
    assert not [r for t, r in second if t.endswith(".cases")]  # bob did not win the case
    done = decoded(stage.on_command(command("RESOLVE", "alice", "ANALYST", case_id,
                                            T0 + timedelta(minutes=3),
                                            resolution="CONFIRMED_FRAUD")))
    topics = {t.rsplit(".", 1)[-1] for t, _ in done}
    assert {"cases", "decisions", "labels", "audit"} <= topics
    override = next(r for t, r in done if t.endswith(".decisions"))
    assert override["is_override"] and override["overrides_verdict_id"] == verdict["verdict_id"]
    assert override["decided_by"] == "alice" and override["decision"] == "DECLINE"
    label = next(r for t, r in done if t.endswith(".labels"))
    assert label["label"] == "FRAUD" and label["transaction_id"] == verdict["transaction_id"]
    # The verdict's terminal survives the trip through the OPEN command's Avro bytes.
    assert label["terminal_id"] == verdict["terminal_id"] == "term-0042"


def test_a_whitelisting_is_published_keyed_by_card_for_the_fraud_lanes() -> None:
    stage = CaseStage(CODEC, "t.")
    until = T0 + timedelta(days=7)
    outs = stage.on_command(command("WHITELIST", "alice", "ANALYST", "", T0,
                                    card_token="tok_9f2c1ab7", until=until))
    (out,) = [o for o in outs if o.topic == topic_name(Topic.WHITELIST, "t.")]
    assert out.key == b"tok_9f2c1ab7"  # compacted: the latest whitelisting per card is in force
    record = CODEC.decode(out.value, topic=out.topic, expect="whitelist").record
    assert (record["actor"], record["since"], record["until"]) == ("alice", T0, until)


def test_a_viewer_cannot_resolve_and_the_attempt_is_audited() -> None:
    stage = CaseStage(CODEC, "t.")
    case_id = opened(stage, review_verdict())
    outs = decoded(stage.on_command(command("RESOLVE", "victor", "VIEWER", case_id, T0,
                                            resolution="APPROVE")))
    assert [(r["actor"], r["outcome"], r["refusal"]) for t, r in outs] == [
        ("victor", "REFUSED", "FORBIDDEN")]


def test_an_open_on_case_commands_is_refused_and_audited() -> None:
    """Opening a case from a verdict is the fraud lane's alone (case-openings, the worker's
    topic): an OPEN on case-commands, which the API writes, opens nothing."""
    stage = CaseStage(CODEC, "t.")
    verdict = review_verdict()
    raw = CODEC.encode("verdict", verdict, topic=stage.decisions)
    out = stage.open_case(Output(stage.decisions, verdict["transaction_id"].encode(), raw,
                                 opens_case=True), T0)
    outs = decoded(stage.on_command(out.value, stage.commands))
    assert not [r for t, r in outs if t.endswith(".cases")]
    assert [(r["outcome"], r["refusal"]) for t, r in outs if t.endswith(".audit")] == [
        ("REFUSED", "INVALID")]
    # And the lane's topic carries nothing but OPENs.
    with pytest.raises(ValueError, match="OPEN commands only"):
        stage.on_command(command("CLAIM", "mallory", "ADMIN", "case-x", T0), stage.openings)


def test_a_dispute_of_a_decline_opens_a_case() -> None:
    stage = CaseStage(CODEC, "t.")
    verdict = review_verdict("DECLINE")
    raw = CODEC.encode("verdict", verdict, topic=stage.decisions)
    cmd = dispute_command(raw, verdict["transaction_id"], "I made this payment", T0)
    outs = decoded(stage.on_command(CODEC.encode("case_command", cmd, topic=stage.commands)))
    cases = [r for t, r in outs if t.endswith(".cases")]
    assert cases and cases[0]["opened_by"] == "DISPUTE"
    assert any(t.endswith(".notifications") for t, _ in outs)


def test_the_queue_depth_goes_to_the_fraud_lanes_when_it_changes_at_most_each_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The lanes' thresholds read it (streams.worker.review_queue); a burst of cases makes one
    record now and, through the app's timer calling ``queue_depth``, one for where it ended."""
    clock = [1_000.0]
    monkeypatch.setattr(casework.time, "monotonic", lambda: clock[0])
    stage = CaseStage(CODEC, "t.")
    assert stage.queue_depth() == []  # nothing changed since start: the topic still holds it

    def open_one(i: int) -> list[Output]:
        verdict = {**review_verdict(), "transaction_id": f"tx-{i}", "verdict_id": f"v-{i}"}
        raw = CODEC.encode("verdict", verdict, topic=stage.decisions)
        out = stage.open_case(Output(stage.decisions, f"tx-{i}".encode(), raw, opens_case=True),
                              T0)
        return stage.on_command(out.value, out.topic)

    def depths(outs: list[Output]) -> list[int]:
        return [r["depth"] for t, r in decoded(outs) if t == "t.rakshit.review-queue"]

    first = open_one(1)
    assert depths(first) == [1]
    assert [o.key for o in first if o.topic == "t.rakshit.review-queue"] == [QUEUE_KEY]
    assert depths(open_one(2)) == depths(open_one(3)) == []  # within the second: held back
    assert stage.queue_depth() == []
    clock[0] += DEPTH_EVERY_S
    assert depths(stage.queue_depth()) == [3]  # the timer sends where the burst ended
    assert stage.queue_depth() == []
    clock[0] += DEPTH_EVERY_S
    assert depths(open_one(3)) == []  # a repeated OPEN: the depth did not change
