"""The durable store's contract, run against both backends: SQLite in a temporary file and a real
PostgreSQL server (tests/pg_server.py starts Debian's; each test gets a database of its own).

Covered: lookups give a payment's verdicts newest first, with times as aware datetimes and no
logged features; every write is idempotent (a verdict by id, a case only forward by version, a
dispute by command id) so re-reading topics changes nothing; positions land in the same
transaction as the rows, so a batch that fails leaves neither; a database that goes away raises
StoreUnavailable saying where and why, and the store works again once it is back.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streams.store import Store, StoreUnavailable, open_backend, open_store
from streams.store.backends import redact_url
from streams.store.sql import SCHEMA_VERSION, Batch
from tests.pg_server import shared_server

T0 = datetime(2026, 3, 4, 3, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        url = shared_server().create_database(f"t_{uuid.uuid4().hex[:12]}")
    opened = open_store(url)
    try:
        yield opened
    finally:
        opened.close()


def verdict(vid: str, tx: str, decision: str = "DECLINE", at: datetime = T0,
            **over: Any) -> dict[str, Any]:
    return {"verdict_id": vid, "transaction_id": tx, "card_token": "tok_a",
            "decision": decision, "score": 0.93, "reasons": [], "is_override": False,
            "overrides_verdict_id": None, "decided_by": "worker", "transaction_time": at,
            "decided_at": at, "features": {"TX_AMOUNT": 900.0}, **over}


def case(case_id: str, tx: str, version: int, status: str = "OPEN") -> dict[str, Any]:
    return {"case_id": case_id, "transaction_id": tx, "verdict_id": f"v-{tx}",
            "status": status, "version": version, "due_at": T0 + timedelta(hours=1),
            "updated_at": T0 + timedelta(minutes=version)}


def dispute(command_id: str, tx: str, at: datetime) -> dict[str, Any]:
    return {"command_id": command_id, "transaction_id": tx, "actor": "customer",
            "reason": "I bought this", "requested_at": at}


def test_a_payments_verdicts_newest_first_with_times_and_without_features(store: Store) -> None:
    override = verdict("case-v1-v3", "tx-1", "APPROVE", T0 + timedelta(hours=2),
                       is_override=True, overrides_verdict_id="v1", decided_by="ana")
    store.write(Batch(verdicts=[(2, 10, verdict("v1", "tx-1")), (2, 11, verdict("v2", "tx-2")),
                                (2, 40, override)],
                      positions={("decisions", 2): 41}))
    history = store.verdicts("tx-1")
    assert [v["verdict_id"] for v in history] == ["case-v1-v3", "v1"]
    latest = store.latest_verdict("tx-1")
    assert latest is not None and latest["decision"] == "APPROVE" and latest["is_override"]
    assert latest["decided_at"] == T0 + timedelta(hours=2)
    assert latest["decided_at"].tzinfo is not None
    assert "features" not in latest
    assert store.verdict("v2") == {k: v for k, v in verdict("v2", "tx-2").items()
                                   if k != "features"}
    assert store.latest_verdict("tx-404") is None and store.verdicts("tx-404") == []


def test_rewriting_a_stretch_of_the_topics_changes_nothing(store: Store) -> None:
    batch = Batch(verdicts=[(0, i, verdict(f"v{i}", f"tx-{i}")) for i in range(50)],
                  cases=[case("case-v1", "tx-1", 1)],
                  disputes=[dispute("cmd-1", "tx-1", T0)],
                  positions={("decisions", 0): 50, ("cases", 0): 1, ("commands", 0): 1})
    store.write(batch)
    store.write(batch)  # a restart that re-reads what landed
    assert len(store.verdicts("tx-7")) == 1
    assert len(store.disputes("tx-1")) == 1
    assert store.positions(["decisions", "cases", "commands"]) == {
        ("decisions", 0): 50, ("cases", 0): 1, ("commands", 0): 1}


def test_a_case_only_moves_forward(store: Store) -> None:
    store.write(Batch(cases=[case("case-v1", "tx-1", 1), case("case-v1", "tx-1", 2, "CLAIMED"),
                             case("case-v1", "tx-1", 3, "RESOLVED")]))
    store.write(Batch(cases=[case("case-v1", "tx-1", 2, "CLAIMED")]))  # replayed, older
    found = store.case("case-v1")
    assert found is not None and (found["version"], found["status"]) == (3, "RESOLVED")
    assert found["due_at"] == T0 + timedelta(hours=1)
    assert [c["case_id"] for c in store.cases_of("tx-1")] == ["case-v1"]
    assert store.case("case-nope") is None


def test_disputes_newest_first_with_their_case(store: Store) -> None:
    store.write(Batch(disputes=[dispute("d1", "tx-1", T0),
                                dispute("d2", "tx-2", T0 + timedelta(minutes=1)),
                                dispute("d3", "tx-1", T0 + timedelta(minutes=2))],
                      cases=[case("case-v-tx-1", "tx-1", 4, "RESOLVED")]))
    rows = store.disputes()
    assert [d["command_id"] for d in rows] == ["d3", "d2", "d1"]
    assert rows[0]["case"]["status"] == "RESOLVED" and rows[1]["case"] is None
    assert [d["command_id"] for d in store.disputes("tx-1", limit=1)] == ["d3"]
    assert rows[0]["requested_at"] == T0 + timedelta(minutes=2)


def test_positions_only_move_forward_and_are_per_topic(store: Store) -> None:
    store.write(Batch(positions={("a", 0): 10, ("a", 1): 5, ("b", 0): 7}))
    store.write(Batch(positions={("a", 0): 4}))  # another API process, behind this one
    assert store.positions(["a"]) == {("a", 0): 10, ("a", 1): 5}
    assert store.positions(["c"]) == {}


def test_a_batch_lands_whole_or_not_at_all(store: Store) -> None:
    bad = {**case("case-v9", "tx-9", 1), "version": 2**70}  # no database holds this version
    with pytest.raises(Exception) as raised:
        store.write(Batch(verdicts=[(0, 0, verdict("v9", "tx-9"))], cases=[bad],
                          positions={("decisions", 0): 1}))
    assert not isinstance(raised.value, StoreUnavailable)  # a bad row is a bug, not an outage
    assert store.verdicts("tx-9") == [] and store.positions(["decisions"]) == {}
    store.write(Batch(verdicts=[(0, 0, verdict("v9", "tx-9"))], positions={("decisions", 0): 1}))
    assert store.positions(["decisions"]) == {("decisions", 0): 1}


def test_a_store_from_another_schema_version_is_unavailable(store: Store) -> None:
    store.ping()
    with store.backend.connect(True) as conn:
        marker = store.backend.marker
        conn.execute(f"UPDATE store_meta SET value = {marker} WHERE name = 'schema_version'",
                     ("99",))
    fresh = Store(store.backend)
    with pytest.raises(StoreUnavailable, match=f"schema version 99, this API needs "
                                               f"{SCHEMA_VERSION}"):
        fresh.latest_verdict("tx-1")


def test_an_unreachable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    store = open_store(f"sqlite:///{tmp_path / 'a-directory'}")
    with pytest.raises(StoreUnavailable, match=r"sqlite at .*a-directory"):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.write(Batch(positions={("a", 0): 1}))


def test_postgresql_going_away_and_coming_back() -> None:
    server = shared_server()
    store = open_store(server.create_database(f"t_{uuid.uuid4().hex[:12]}"))
    store.write(Batch(verdicts=[(0, 0, verdict("v1", "tx-1"))], positions={("d", 0): 1}))
    assert store.latest_verdict("tx-1") is not None
    server.stop()
    try:
        with pytest.raises(StoreUnavailable, match="postgresql at postgresql://rakshit:\\*\\*\\*@"):
            store.latest_verdict("tx-1")
        with pytest.raises(StoreUnavailable):
            store.write(Batch(verdicts=[(0, 1, verdict("v2", "tx-2"))], positions={("d", 0): 2}))
        with pytest.raises(StoreUnavailable):
            store.ping()  # a new connection is refused, not only the old one broken
    finally:
        server.start()
    assert store.positions(["d"]) == {("d", 0): 1}  # the failed batch left nothing
    store.write(Batch(verdicts=[(0, 1, verdict("v2", "tx-2"))], positions={("d", 0): 2}))
    assert store.latest_verdict("tx-2") is not None
    store.close()


def test_a_connection_kept_across_a_restart_is_replaced_unnoticed() -> None:
    server = shared_server()
    store = open_store(server.create_database(f"t_{uuid.uuid4().hex[:12]}"))
    store.write(Batch(verdicts=[(0, 0, verdict("v1", "tx-1"))], positions={("d", 0): 1}))
    assert store.latest_verdict("tx-1") is not None  # both connections open now
    server.stop()
    server.start()
    assert store.latest_verdict("tx-1") is not None
    store.write(Batch(verdicts=[(0, 1, verdict("v2", "tx-2"))], positions={("d", 0): 2}))
    assert store.positions(["d"]) == {("d", 0): 2}
    store.close()


def test_urls() -> None:
    with pytest.raises(ValueError, match="RAKSHIT_DATABASE_URL: unsupported scheme 'mysql'"):
        open_backend("mysql://x/y")
    with pytest.raises(ValueError, match="RAKSHIT_DATABASE_URL"):
        open_backend("sqlite:///:memory:")
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://h/db") == "postgresql://h/db"
    assert open_backend("postgres://u@h/db").name == "postgresql"
    assert isinstance(open_backend("sqlite:///x.db").unavailable[0](), sqlite3.OperationalError)
