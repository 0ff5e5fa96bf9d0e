"""The durable store through the real broker, the real `rakshit api` process and real databases.

1. A decline older than the API's recent window (more verdicts behind it on its partition than
   the read model reads back) is still looked up, from the store, and disputed; the worker's case
   agent opens the dispute's case. A restarted API resumes from the positions the store
   committed instead of re-reading the topics. (SQLite, the default.)
2. PostgreSQL stopped mid-test: lookups answer from the cache, commands are refused with a 503
   naming the reason, verdicts keep arriving; once the server is back the store catches up from
   its positions (nothing lost) and commands are accepted again.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from schemas.codec import make_codec
from streams.admin import ensure_topics, free_port
from streams.api.server import FEEDS, issue_token
from streams.config import Settings
from streams.launcher import start_api, stop_process
from streams.topics import Topic
from tests.kafka_helpers import WorkerProcess, name
from tests.pg_server import PostgresServer
from tests.test_codec import RECORDS

pytestmark = [pytest.mark.kafka]

WAIT_S = 90.0
Reply = tuple[int, Any]


def verdict(tx: str, decision: str) -> dict[str, Any]:
    rec: dict[str, Any] = RECORDS["verdict"]()
    now = datetime.now(UTC)
    rec.update(verdict_id=f"v-{tx}", transaction_id=tx, decision=decision, is_override=False,
               overrides_verdict_id=None, decided_by="worker", arm="CHAMPION", guardrails=[],
               transaction_time=now - timedelta(seconds=1), decided_at=now)
    return rec


def produce_verdicts(settings: Settings, partition: int, records: list[dict[str, Any]]) -> None:
    """Verdicts onto one partition of the decision topic, in order. Idempotent: without it a
    batch retried under load (a new topic's leader not yet known) lands after later ones, and the
    first verdicts end up inside the API's window (a flake seen twice in loaded full runs)."""
    codec, topic = make_codec(None), name(settings, Topic.DECISIONS)
    producer = Producer({**settings.kafka_config(), "linger.ms": 5, "enable.idempotence": True})
    for rec in records:
        producer.produce(topic, key=rec["transaction_id"].encode(), partition=partition,
                         value=codec.encode("verdict", rec, topic=topic))
        producer.poll(0)
    assert producer.flush(30) == 0


def call(base: str, token: str, method: str, path: str, body: Any = None) -> Reply:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(what: str, probe: Callable[[], Reply], ok: Callable[[Reply], bool]) -> Reply:
    deadline = time.monotonic() + WAIT_S
    reply = probe()
    while not ok(reply):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {reply} after {WAIT_S:.0f} s")
        time.sleep(0.3)
        reply = probe()
    return reply


def _api(settings: Settings) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """`rakshit api` started, with its base URL and a viewer's and an analyst's token."""
    api, base = start_api(settings, free_port())
    return api, base, issue_token(settings, "viewer"), issue_token(settings, "analyst")


def test_a_decline_older_than_the_window_is_looked_up_and_disputed(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    ensure_topics(settings)
    window = FEEDS[Topic.DECISIONS]
    assert window is not None
    produce_verdicts(settings, 0, [verdict("tx-old", "DECLINE")]
                     + [verdict(f"tx-{i}", "APPROVE") for i in range(window + 100)])
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    api, base, viewer, analyst = _api(settings)
    try:
        status, body = wait_for("the old decline in the store",
                                lambda: call(base, viewer, "GET", "/api/verdicts/tx-old"),
                                lambda r: r[0] == 200)
        assert body["source"] == "store" and body["verdict"]["decision"] == "DECLINE"
        # The read model has read its window, and the old decline is not in it.
        _, recent = wait_for("the recent window read",
                             lambda: call(base, viewer, "GET", "/api/verdicts?limit=2000"),
                             lambda r: r[0] == 200 and len(r[1]) == 2000)
        assert "tx-old" not in {v["transaction_id"] for v in recent}

        status, body = call(base, analyst, "POST", "/api/disputes",
                            {"transaction_id": "tx-old", "reason": "I made this purchase"})
        assert status == 202, body
        _, detail = wait_for("the dispute's case",
                             lambda: call(base, viewer, "GET", "/api/cases/case-v-tx-old"),
                             lambda r: r[0] == 200)
        assert detail["case"]["opened_by"] == "DISPUTE"
        _, disputes = wait_for(
            "the dispute and its case in the store",
            lambda: call(base, viewer, "GET", "/api/disputes?transaction_id=tx-old"),
            lambda r: r[0] == 200 and bool(r[1]["disputes"]) and r[1]["disputes"][0]["case"])
        assert disputes["source"] == "store"
        assert disputes["disputes"][0]["reason"] == "I made this purchase"

        # A restart resumes from the committed positions: of everything on the topics, it
        # writes only the one verdict that arrived since (behind all the others on its
        # partition, so a feed reading from the start would have written them all first).
        stop_process(api)
        produce_verdicts(settings, 0, [verdict("tx-new", "DECLINE")])
        api, base = start_api(settings, free_port())
        wait_for("the new verdict in the store",
                 lambda: call(base, viewer, "GET", "/api/verdicts/tx-new"),
                 lambda r: r[0] == 200 and r[1]["source"] == "store")
        _, store = call(base, viewer, "GET", "/api/store")
        assert store["backend"] == "sqlite" and store["writable"] is True
        assert (store["committed_since_start"], store["behind"]) == (1, 0)
        status, body = call(base, viewer, "GET", "/api/verdicts/tx-old")
        assert status == 200 and body["source"] == "store"
    finally:
        stop_process(api)
        worker.stop()


def test_read_only_while_postgresql_is_down_and_catching_up_after(
        make_settings: Callable[..., Settings]) -> None:
    server = PostgresServer()
    server.start()
    try:
        settings = make_settings(database_url=server.create_database("rakshit"))
        ensure_topics(settings)
        produce_verdicts(settings, 0, [verdict("tx-before", "DECLINE")])
        api, base, viewer, analyst = _api(settings)
        try:
            _, body = wait_for("the decline in PostgreSQL",
                               lambda: call(base, viewer, "GET", "/api/verdicts/tx-before"),
                               lambda r: r[0] == 200 and r[1]["source"] == "store")

            wait_for("the decline in the API's recent window too",
                     lambda: call(base, viewer, "GET", "/api/verdicts?limit=10"),
                     lambda r: r[0] == 200 and any(v["transaction_id"] == "tx-before"
                                                   for v in r[1]))
            server.stop()
            status, body = call(base, viewer, "GET", "/api/verdicts/tx-before")
            assert (status, body["source"]) == (200, "cache")
            for path, payload in (("/api/disputes", {"transaction_id": "tx-before",
                                                     "reason": "mine"}),
                                  ("/api/cases/case-v-tx-before/claim", {"reason": "mine"})):
                status, body = call(base, analyst, "POST", path, payload)
                assert status == 503, (path, body)
                assert body["error"]["code"] == "READ_ONLY"
                assert "read-only mode" in body["error"]["message"]
                assert "postgresql at postgresql://rakshit:***@127.0.0.1" in body["error"][
                    "message"]
            _, store = call(base, viewer, "GET", "/api/store")
            assert store["writable"] is False and store["backend"] == "postgresql"

            produce_verdicts(settings, 1, [verdict("tx-during", "DECLINE")])
            _, body = wait_for("the cache following the topic while the store is down",
                               lambda: call(base, viewer, "GET", "/api/verdicts/tx-during"),
                               lambda r: r[0] == 200)
            assert body["source"] == "cache"

            server.start()
            wait_for("the store catching up with what it missed",
                     lambda: call(base, viewer, "GET", "/api/verdicts/tx-during"),
                     lambda r: r[0] == 200 and r[1]["source"] == "store")
            status, body = wait_for(
                "commands accepted again",
                lambda: call(base, analyst, "POST", "/api/disputes",
                             {"transaction_id": "tx-during", "reason": "I made this one"}),
                lambda r: r[0] != 503)
            assert status == 202, body
            _, body = wait_for(
                "the dispute in the store",
                lambda: call(base, viewer, "GET", "/api/disputes?transaction_id=tx-during"),
                lambda r: r[0] == 200 and r[1]["source"] == "store" and bool(r[1]["disputes"]))
            assert body["disputes"][0]["reason"] == "I made this one"
        finally:
            stop_process(api)
    finally:
        server.destroy()
