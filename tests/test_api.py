"""The analyst API over an in-memory read model: auth and its audit trail, commands, validation,
reads, live events and the OpenAPI document. No broker: a fake sink records what is published."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from schemas.codec import make_codec
from streams.api.readmodel import ReadModel
from streams.api.routes import Auth, create_api

NOW = datetime(2025, 3, 4, 3, 0, tzinfo=UTC)
AUTH = Auth.in_memory()
TV = AUTH.store.issue("victor", "viewer")
TA = AUTH.store.issue("alice", "analyst")
TADM = AUTH.store.issue("root", "admin")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class FakeSink:
    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.audits: list[dict[str, Any]] = []

    async def command(self, record: dict[str, Any]) -> None:
        self.commands.append(record)

    async def audit(self, record: dict[str, Any]) -> None:
        self.audits.append(record)


def verdict(i: int, card: str, decision: str = "APPROVE", **over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "verdict_id": f"v-{i}", "transaction_id": f"tx-{i}", "card_token": card,
        "decision": decision, "score": 0.1 * (i % 10), "model_version": "gbm-1.2.0",
        "arm": "CHAMPION",
        "reasons": [{"feature": "TX_AMOUNT", "value": 900.0, "contribution": 0.31},
                    {"feature": "CARD_TX_COUNT_1D", "value": 7.0, "contribution": 0.12}],
        "rules_fired": [{"rule_id": "R-VELOCITY", "reason": "7 payments in a day"}],
        "guardrails": [{"name": "sanctions", "passed": True, "detail": "no match"}],
        "fallbacks": [], "customer_message": "Your payment is being checked.",
        "processing_latency_ms": 4.2, "transaction_time": NOW - timedelta(seconds=60 - i),
        "decided_at": NOW - timedelta(seconds=59 - i), "is_override": False,
        "overrides_verdict_id": None, "decided_by": "worker",
        "features": {"TX_AMOUNT": 900.0}, "shadow": None,
    }
    rec.update(over)
    return rec


def case(case_id: str, verdict_id: str, card: str, *, status: str = "OPEN", priority: int = 2,
         due: timedelta = timedelta(minutes=30), assignee: str | None = None,
         version: int = 1) -> dict[str, Any]:
    return {"case_id": case_id, "transaction_id": "tx-" + verdict_id[2:], "card_token": card,
            "status": status, "priority": priority, "due_at": NOW + due, "assignee": assignee,
            "resolution": "NONE", "reason": None, "opened_by": "REVIEW_VERDICT",
            "verdict_id": verdict_id, "updated_at": NOW - timedelta(minutes=5),
            "version": version}


def policy(issuer: str, version: int, weights: dict[str, float]) -> dict[str, Any]:
    return {"issuer_id": issuer, "version": version,
            "weights": [{"route": r, "weight": w} for r, w in weights.items()],
            "reason": f"v{version}", "experiment_id": None, "updated_at": NOW}


def hypothesis(hid: str, status: str = "OPEN") -> dict[str, Any]:
    return {"hypothesis_id": hid, "status": status, "route": "acq-2", "issuer_id": "issuer-b",
            "scope": "ROUTE_ISSUER", "suspected_cause": "ROUTE_DEGRADED", "confidence": 0.93,
            "confidence_meaning": "posterior probability of a lower success rate",
            "evidence": {"attempts": 400, "successes": 300, "baseline_rate": 0.97,
                         "observed_rate": 0.75, "statistic": 5.1, "threshold": 3.0,
                         "p95_latency_ms": None},
            "since": NOW - timedelta(minutes=3), "created_at": NOW}


def experiment(step: str, share: float) -> dict[str, Any]:
    return {"experiment_id": "exp-1", "hypothesis_id": "h-1", "step": step,
            "issuer_id": "issuer-b", "from_route": "acq-2", "to_route": "acq-1",
            "share": share, "guardrail": None,
            "arms": [{"route": "acq-1", "attempts": 50, "successes": 49, "rate": 0.98}],
            "statistic": None, "reason": "probe the healthy route", "at": NOW}


def outcome(i: int, route: str, result: str) -> dict[str, Any]:
    return {"transaction_id": f"tx-o{i}", "card_token": "tok_x", "route": route,
            "issuer_id": "issuer-b", "result": result, "response_code": "00",
            "latency_ms": 120, "attempt": 1, "event_time": NOW - timedelta(seconds=i % 50)}


def fed_model() -> ReadModel:
    model = ReadModel(models=lambda: [{"version": "gbm-1.2.0", "role": "champion"}])
    for i in range(5):
        model.apply("verdict", verdict(i, "tok_alice"))
    model.apply("verdict", verdict(9, "tok_alice", "REVIEW"))
    model.apply("verdict", verdict(10, "tok_bob", "REVIEW"))
    model.apply("case", case("case-v-9", "v-9", "tok_alice", priority=2))
    model.apply("case", case("case-v-10", "v-10", "tok_bob", priority=1,
                             due=timedelta(minutes=-1), status="CLAIMED", assignee="alice"))
    model.apply("hypothesis", hypothesis("h-1"))
    model.apply("hypothesis", hypothesis("h-2"))
    model.apply("hypothesis", hypothesis("h-2", "RESOLVED"))
    model.apply("experiment", experiment("STARTED", 0.05))
    model.apply("experiment", experiment("EXPANDED", 0.25))
    model.apply("routing_policy", policy("issuer-b", 3, {"acq-1": 0.75, "acq-2": 0.25}))
    model.apply("routing_policy", policy("issuer-b", 2, {"acq-2": 1.0}))  # stale: ignored
    for i in range(40):
        model.apply("authorization_outcome",
                    outcome(i, "acq-2", "APPROVED" if i % 4 else "TIMEOUT"))
        model.apply("authorization_outcome", outcome(i, "acq-1", "APPROVED"))
    return model


Scenario = Callable[[TestClient[web.Request, web.Application], FakeSink, ReadModel],
                    Awaitable[None]]


def run(scenario: Scenario, model: ReadModel | None = None, heartbeat_s: float = 15.0) -> None:
    async def main() -> None:
        sink = FakeSink()
        m = model or fed_model()
        app = create_api(m, sink, AUTH, clock=lambda: NOW,
                         heartbeat_s=heartbeat_s)
        async with TestClient(TestServer(app)) as client:
            await scenario(client, sink, m)

    asyncio.run(main())


def test_records_follow_the_avro_schemas() -> None:
    codec = make_codec(None)
    for schema, rec in [("verdict", verdict(1, "tok_a")), ("case", case("c", "v-1", "tok_a")),
                        ("hypothesis", hypothesis("h")), ("experiment", experiment("HELD", 0.1)),
                        ("routing_policy", policy("i", 1, {"r": 1.0})),
                        ("authorization_outcome", outcome(1, "r", "APPROVED"))]:
        assert codec.encode(schema, rec, topic="t")


def test_no_token_is_401_and_audited() -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        resp = await client.get("/api/cases")
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "UNAUTHENTICATED"
        resp = await client.post("/api/cases/case-v-9/claim", headers=auth("nope"),
                                 json={"reason": "x"})
        assert resp.status == 401
        assert [a["actor"] for a in sink.audits] == ["anonymous", "anonymous"]
        last = sink.audits[-1]
        assert (last["outcome"], last["refusal"], last["action"]) == ("REFUSED", "FORBIDDEN",
                                                                     "CLAIM")
        assert last["case_id"] == "case-v-9"
        make_codec(None).encode("audit", last, topic="t")
        assert sink.commands == []

    run(scenario)


def test_viewer_reads_but_cannot_resolve() -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        resp = await client.get("/api/cases", headers=auth(TV))
        assert resp.status == 200
        resp = await client.post("/api/cases/case-v-9/resolve", headers=auth(TV),
                                 json={"reason": "looks fine", "resolution": "APPROVE"})
        assert resp.status == 403
        body = await resp.json()
        assert body["error"]["code"] == "FORBIDDEN" and "viewer" in body["error"]["message"]
        (entry,) = sink.audits
        assert (entry["actor"], entry["role"], entry["action"]) == ("victor", "VIEWER", "RESOLVE")
        assert entry["outcome"] == "REFUSED" and entry["refusal"] == "FORBIDDEN"
        make_codec(None).encode("audit", entry, topic="t")
        resp = await client.get("/api/audit", headers=auth(TA))  # admin only
        assert resp.status == 403 and len(sink.audits) == 2
        assert sink.commands == []

    run(scenario)


def test_analyst_resolve_publishes_a_command_as_the_token_user() -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        resp = await client.post("/api/cases/case-v-10/resolve", headers=auth(TA),
                                 json={"reason": "customer confirmed 4111 1111 1111 1111",
                                       "resolution": "FALSE_POSITIVE", "expected_version": 1})
        assert resp.status == 202
        (cmd,) = sink.commands
        assert (await resp.json()) == {"command_id": cmd["command_id"]}
        assert cmd["actor"] == "alice" and cmd["role"] == "ANALYST"
        assert cmd["command"] == "RESOLVE" and cmd["case_id"] == "case-v-10"
        assert cmd["resolution"] == "FALSE_POSITIVE" and cmd["expected_version"] == 1
        assert "4111" not in cmd["reason"]  # card numbers are masked before publishing
        assert cmd["requested_at"] == NOW
        make_codec(None).encode("case_command", cmd, topic="t")
        # The actor can never be chosen by the body: sending one is refused, not ignored.
        resp = await client.post("/api/cases/case-v-10/claim", headers=auth(TA),
                                 json={"reason": "mine", "actor": "mallory"})
        assert resp.status == 400
        assert (await resp.json())["error"]["field"] == "actor"
        assert len(sink.commands) == 1 and sink.audits == []

    run(scenario)


def test_whitelist_command_encodes() -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        until = (NOW + timedelta(days=7)).isoformat()
        resp = await client.post("/api/whitelist", headers=auth(TADM),
                                 json={"card_token": "tok_alice", "until": until,
                                       "reason": "travelling abroad"})
        assert resp.status == 202
        (cmd,) = sink.commands
        assert cmd["command"] == "WHITELIST" and cmd["until"] == NOW + timedelta(days=7)
        assert cmd["actor"] == "root" and cmd["role"] == "ADMIN" and cmd["case_id"] is None
        make_codec(None).encode("case_command", cmd, topic="t")

    run(scenario)


def test_validation_errors_name_the_field() -> None:
    cases: list[tuple[str, str, Any, str]] = [
        ("POST", "/api/cases/c/resolve", {"reason": "x", "resolution": "MAYBE"}, "resolution"),
        ("POST", "/api/cases/c/claim", {"reason": "   "}, "reason"),
        ("POST", "/api/cases/c/claim", {}, "reason"),
        ("POST", "/api/cases/c/claim", {"reason": "x", "expected_version": "2"},
         "expected_version"),
        ("POST", "/api/cases/c/claim", "{not json", "body"),
        ("POST", "/api/whitelist", {"card_token": "tok", "reason": "x",
                                    "until": (NOW - timedelta(hours=1)).isoformat()}, "until"),
        ("POST", "/api/whitelist", {"card_token": "tok", "reason": "x",
                                    "until": "2025-03-05T00:00:00"}, "until"),
        ("POST", "/api/whitelist", {"card_token": "4111111111111111", "reason": "x",
                                    "until": (NOW + timedelta(days=1)).isoformat()},
         "card_token"),
        ("GET", "/api/cases?status=PENDING", None, "status"),
        ("GET", "/api/cases?priority=high", None, "priority"),
        ("GET", "/api/cases?priority=9", None, "priority"),
        ("GET", "/api/cases?stauts=OPEN", None, "stauts"),
        ("GET", "/api/verdicts?limit=0", None, "limit"),
        ("GET", "/api/hypotheses?all=yes", None, "all"),
    ]

    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        for method, path, body, field in cases:
            kwargs: dict[str, Any] = {"headers": auth(TA)}
            if isinstance(body, str):
                kwargs["data"] = body
            elif body is not None:
                kwargs["json"] = body
            resp = await client.request(method, path, **kwargs)
            assert resp.status == 400, (path, body)
            error = (await resp.json())["error"]
            assert error["field"] == field and error["message"].startswith(field), error
        assert sink.commands == [] and sink.audits == []

    run(scenario)


def test_case_list_filters_and_order() -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        rows = await (await client.get("/api/cases", headers=auth(TV))).json()
        assert [r["case_id"] for r in rows] == ["case-v-10", "case-v-9"]  # priority 1 first
        assert rows[0]["overdue"] is True and rows[1]["overdue"] is False
        assert rows[0]["age_s"] == 300.0
        for query, expected in [("status=OPEN", ["case-v-9"]), ("assignee=alice", ["case-v-10"]),
                                ("priority=2", ["case-v-9"]), ("status=RESOLVED", [])]:
            rows = await (await client.get(f"/api/cases?{query}", headers=auth(TV))).json()
            assert [r["case_id"] for r in rows] == expected, query

    run(scenario)


def test_case_detail_has_verdict_and_customer_history() -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        resp = await client.get("/api/cases/case-v-9", headers=auth(TV))
        assert resp.status == 200
        body = await resp.json()
        assert body["case"]["status"] == "OPEN"
        assert body["verdict"]["verdict_id"] == "v-9"
        assert body["verdict"]["rules_fired"][0]["rule_id"] == "R-VELOCITY"
        assert body["verdict"]["guardrails"][0]["name"] == "sanctions"
        assert "features" not in body["verdict"]
        history = [v["verdict_id"] for v in body["customer_history"]]
        assert history == ["v-9", "v-4", "v-3", "v-2", "v-1", "v-0"]  # newest first, own card
        resp = await client.get("/api/cases/nope", headers=auth(TV))
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "NOT_FOUND"

    run(scenario)


def test_reads_of_the_other_sections() -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        async def get(path: str, token: str = TV) -> Any:
            resp = await client.get(path, headers=auth(token))
            assert resp.status == 200, path
            return await resp.json()

        (pol,) = await get("/api/routing-policy")
        assert pol["version"] == 3 and pol["weights"][0] == {"route": "acq-1", "weight": 0.75}
        hyp = await get("/api/hypotheses")
        assert [h["hypothesis_id"] for h in hyp["open"]] == ["h-1"] and "recent" not in hyp
        assert len((await get("/api/hypotheses?all=1"))["recent"]) == 3
        (exp,) = await get("/api/experiments")
        assert exp["latest"]["step"] == "EXPANDED" and len(exp["steps"]) == 2
        health = await get("/api/route-health")
        cells = {c["route"]: c["windows"] for c in health["cells"]}
        assert cells["acq-1"]["1m"]["success_rate"] == 1.0
        assert 0.7 < cells["acq-2"]["5m"]["success_rate"] < 0.8
        verdicts = await get("/api/verdicts?limit=2")
        assert [v["verdict_id"] for v in verdicts] == ["v-10", "v-9"]
        models = await get("/api/models")
        assert models["registry"][0]["version"] == "gbm-1.2.0"
        assert models["in_use"][0]["model_version"] == "gbm-1.2.0"
        assert await get("/api/audit", TADM) == []

    run(scenario)


def test_event_stream_delivers_after_apply() -> None:
    async def scenario(client: Any, sink: FakeSink, model: ReadModel) -> None:
        ticket = await client.post("/api/events/ticket", headers=auth(TV))
        assert ticket.status == 200
        resp = await client.get("/api/events", params={"ticket": (await ticket.json())["ticket"]})
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"retry:")
        assert await resp.content.readuntil(b"\n\n") == b": heartbeat\n\n"
        model.apply("routing_policy", policy("issuer-z", 1, {"acq-9": 1.0}))
        chunk = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        event = json.loads(chunk.decode().removeprefix("data: "))
        assert event["type"] == "routing_policy" and event["data"]["issuer_id"] == "issuer-z"
        resp.close()

    run(scenario, heartbeat_s=0.2)


def test_apply_from_another_thread_reaches_subscribers() -> None:
    async def main() -> None:
        model = ReadModel()
        queue = model.subscribe()
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(model.apply, "hypothesis", hypothesis("h-9"))
        await asyncio.to_thread(model.apply_threadsafe, loop,
                                [("audit", {"audit_id": "a"}), ("audit", {"audit_id": "b"})])
        first = await asyncio.wait_for(queue.get(), 2)
        second = await asyncio.wait_for(queue.get(), 2)
        third = await asyncio.wait_for(queue.get(), 2)
        assert (first["type"], second["type"]) == ("hypothesis", "audit")
        assert (second["data"]["audit_id"], third["data"]["audit_id"]) == ("a", "b")  # in order
        assert first["data"]["since"].endswith("+00:00")  # datetimes are JSON-able

    asyncio.run(main())


def test_slow_subscriber_loses_oldest_events() -> None:
    async def main() -> None:
        model = ReadModel(queue_size=2)
        queue = model.subscribe()
        for i in range(5):
            model.apply("verdict", verdict(i, "tok"))
        assert [queue.get_nowait()["data"]["verdict_id"] for _ in range(2)] == ["v-3", "v-4"]

    asyncio.run(main())


def test_openapi_lists_exactly_the_served_routes() -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        resp = await client.get("/openapi.json", headers=auth(TV))
        doc = await resp.json()
        assert doc["openapi"].startswith("3.1")
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        served = {(r.method, r.resource.canonical) for r in client.app.router.routes()
                  if r.resource is not None}
        assert documented == served
        resolve = doc["paths"]["/api/cases/{case_id}/resolve"]["post"]
        assert resolve["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "ResolveBody")
        assert {"202", "400", "401", "403"} <= set(resolve["responses"])

    run(scenario)


def test_dashboard_page_is_public_and_has_the_test_ids() -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        resp = await client.get("/")
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
        for needle in ['id="token-input"', 'id="token-save"', 'data-testid="hypotheses"',
                       'data-testid="experiments"', 'data-testid="verdicts"',
                       'data-testid="cases"', '"claim-"', '"resolve-"',
                       'id="resolve-resolution"', 'id="resolve-reason"', 'id="resolve-submit"',
                       'id="error"', "/api/events/ticket", "/api/events?ticket="]:
            assert needle in page, needle
        assert "http://" not in page and "https://" not in page  # offline: nothing external
        assert sink.audits == []

    run(scenario)


def test_unknown_route_is_a_json_error() -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        resp = await client.get("/api/nothing", headers=auth(TV))
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "NOT_FOUND"

    run(scenario)


def test_dispute_of_a_decline_carries_the_verdict_to_the_case_worker() -> None:
    async def scenario(client: Any, sink: FakeSink, model: ReadModel) -> None:
        model.apply("verdict", verdict(20, "tok_carol", "DECLINE"))
        resp = await client.post("/api/disputes", headers=auth(TA),
                                 json={"transaction_id": "tx-20", "reason": "I bought this"})
        assert resp.status == 202
        (cmd,) = sink.commands
        assert (cmd["command"], cmd["transaction_id"], cmd["actor"]) == ("DISPUTE", "tx-20",
                                                                          "alice")
        codec = make_codec(None)
        carried = codec.decode(cmd["verdict"], topic="t", expect="verdict").record
        assert carried["verdict_id"] == "v-20" and carried["decision"] == "DECLINE"
        codec.encode("case_command", cmd, topic="t")
        approved = await client.post("/api/disputes", headers=auth(TA),
                                     json={"transaction_id": "tx-1", "reason": "why?"})
        assert approved.status == 400
        assert (await approved.json())["error"]["field"] == "transaction_id"
        unknown = await client.post("/api/disputes", headers=auth(TA),
                                    json={"transaction_id": "tx-404", "reason": "why?"})
        assert unknown.status == 404
        viewer = await client.post("/api/disputes", headers=auth(TV),
                                   json={"transaction_id": "tx-20", "reason": "mine"})
        assert viewer.status == 403 and len(sink.commands) == 1

    run(scenario)
