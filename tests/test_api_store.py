"""The API over the durable store (a real SQLite file) and the read model as its cache: lookups,
disputes of verdicts the cache no longer holds, and the read-only mode with the store away. No
broker: a fake sink records what is published (tests/test_store_kafka.py runs it all through
the real broker and a real PostgreSQL server)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from schemas.codec import make_codec
from streams.api.lookup import Lookups
from streams.api.readmodel import ReadModel
from streams.api.routes import create_api
from streams.store import Store, open_store
from streams.store.sql import Batch
from tests.test_api import AUTH, NOW, TA, TV, FakeSink, auth, case, verdict

Scenario = Any


def run(scenario: Scenario, store: Store, model: ReadModel | None = None) -> None:
    async def main() -> None:
        sink = FakeSink()
        m = model or ReadModel()
        app = create_api(m, sink, AUTH, lookups=Lookups(m, store),
                         clock=lambda: NOW)
        async with TestClient(TestServer(app)) as client:
            await scenario(client, sink, m)

    asyncio.run(main())


def stored(tmp_path: Path) -> Store:
    """A store holding an old decline (tx-1), its case and a dispute of it."""
    store = open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    store.write(Batch(verdicts=[(0, 0, verdict(1, "tok_old", "DECLINE"))],
                      cases=[case("case-v-1", "v-1", "tok_old", status="RESOLVED", version=3)],
                      disputes=[{"command_id": "d-1", "transaction_id": "tx-1",
                                 "actor": "customer", "reason": "mine", "requested_at": NOW}],
                      positions={("decisions", 0): 1}))
    return store


def down(tmp_path: Path) -> Store:
    """A store whose database cannot be opened (its path is a directory)."""
    (tmp_path / "gone").mkdir()
    return open_store(f"sqlite:///{tmp_path / 'gone'}")


def test_an_old_verdict_is_looked_up_and_disputed_from_the_store(tmp_path: Path) -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        resp = await client.get("/api/verdicts/tx-1", headers=auth(TV))
        assert resp.status == 200
        body = await resp.json()
        assert body["source"] == "store" and body["verdict"]["verdict_id"] == "v-1"
        assert body["verdict"]["decided_at"].endswith("+00:00")
        resp = await client.post("/api/disputes", headers=auth(TA),
                                 json={"transaction_id": "tx-1", "reason": "I bought this"})
        assert resp.status == 202
        (cmd,) = sink.commands
        carried = make_codec(None).decode(cmd["verdict"], topic="t", expect="verdict").record
        assert carried["verdict_id"] == "v-1" and carried["decision"] == "DECLINE"
        resp = await client.get("/api/verdicts/tx-404", headers=auth(TV))
        assert resp.status == 404
        resp = await client.post("/api/disputes", headers=auth(TA),
                                 json={"transaction_id": "tx-404", "reason": "why?"})
        assert resp.status == 404 and "retention" in (await resp.json())["error"]["message"]

    run(scenario, stored(tmp_path))


def test_the_cache_adds_what_the_store_has_not_written_yet(tmp_path: Path) -> None:
    model = ReadModel()
    model.apply("verdict", verdict(1, "tok_old", "DECLINE"))
    model.apply("verdict", verdict(2, "tok_old", "APPROVE", transaction_id="tx-1",
                                   is_override=True, overrides_verdict_id="v-1"))

    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        body = await (await client.get("/api/verdicts/tx-1", headers=auth(TV))).json()
        assert body["source"] == "cache"
        assert [v["verdict_id"] for v in body["history"]] == ["v-2", "v-1"]
        resp = await client.post("/api/disputes", headers=auth(TA),
                                 json={"transaction_id": "tx-1", "reason": "why?"})
        assert resp.status == 400  # the decision that stands is the analyst's approval

    run(scenario, stored(tmp_path), model)


def test_cases_and_disputes_that_left_the_cache(tmp_path: Path) -> None:
    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        body = await (await client.get("/api/cases/case-v-1", headers=auth(TV))).json()
        assert body["source"] == "store" and body["case"]["version"] == 3
        assert body["verdict"]["verdict_id"] == "v-1" and body["case"]["overdue"] is False
        body = await (await client.get("/api/disputes?transaction_id=tx-1",
                                       headers=auth(TV))).json()
        assert body["source"] == "store"
        (row,) = body["disputes"]
        assert row["command_id"] == "d-1" and row["case"]["status"] == "RESOLVED"
        for query, field in (("transaction_id=", "transaction_id"), ("limit=0", "limit"),
                             ("transaction_id=" + "x" * 201, "transaction_id"),
                             ("tx=1", "tx")):
            resp = await client.get(f"/api/disputes?{query}", headers=auth(TV))
            assert resp.status == 400 and (await resp.json())["error"]["field"] == field
        resp = await client.get("/api/verdicts/" + "x" * 201, headers=auth(TV))
        assert resp.status == 400
        assert (await resp.json())["error"]["field"] == "transaction_id"

    run(scenario, stored(tmp_path))


def test_read_only_while_the_store_is_down(tmp_path: Path) -> None:
    model = ReadModel()
    model.apply("verdict", verdict(5, "tok_new", "DECLINE"))
    model.apply("case_command", {"command_id": "d-5", "command": "DISPUTE",
                                 "transaction_id": "tx-5", "actor": "customer",
                                 "reason": "mine", "requested_at": NOW, "verdict": b"x"})

    async def scenario(client: Any, sink: FakeSink, _: ReadModel) -> None:
        body = await (await client.get("/api/verdicts/tx-5", headers=auth(TV))).json()
        assert body["source"] == "cache" and body["verdict"]["verdict_id"] == "v-5"
        body = await (await client.get("/api/disputes", headers=auth(TV))).json()
        assert body["source"] == "cache" and body["disputes"][0]["command_id"] == "d-5"
        for path, payload in (("/api/disputes", {"transaction_id": "tx-5", "reason": "mine"}),
                              ("/api/cases/case-v-5/claim", {"reason": "mine"})):
            resp = await client.post(path, headers=auth(TA), json=payload)
            assert resp.status == 503, path
            error = (await resp.json())["error"]
            assert error["code"] == "READ_ONLY"
            assert "read-only mode" in error["message"] and "gone" in error["message"]
        # A client's mistake is still a 400 naming the field, not a 503.
        resp = await client.post("/api/disputes", headers=auth(TA),
                                 json={"transaction_id": "tx-5"})
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "reason"
        status = await (await client.get("/api/store", headers=auth(TV))).json()
        assert status["backend"] == "sqlite" and status["writable"] is False
        assert "gone" in status["reason"]
        assert sink.commands == []

    run(scenario, down(tmp_path), model)
