"""The store's tables and every statement on them, the same SQL for SQLite and PostgreSQL.

Writes come in batches from one writer (the API's store feed), each batch in one transaction with
the topic positions it reaches, so a restart resumes exactly after the last batch that landed.
Every write is idempotent: a verdict by its verdict_id, a case only forward by its version, a
dispute by its command id. Re-reading a stretch of a topic (after a crash, or the database coming
back) therefore changes nothing that was already written.

Records are kept whole as JSON (datetimes tagged as epoch milliseconds, so they come back as the
aware datetimes the codec and the API expect); the columns beside them are only what lookups
filter and sort on. A verdict's logged features are not kept: they are for parity checks and
retraining, and stay on the decision topic.

Any error the backend calls "unavailable" (server down, connection lost, a standby refusing
writes) becomes :class:`StoreUnavailable` and the connection is dropped, to be opened again on
the next call; anything else is a bug and propagates as it is.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from schemas.clock import from_millis, to_millis
from streams.store.backends import Backend, open_backend

__all__ = ["SCHEMA_VERSION", "Batch", "Store", "StoreUnavailable", "open_store"]

Record = dict[str, Any]
T = TypeVar("T")

SCHEMA_VERSION = "1"
_VERDICT_DROP = ("features",)

_DDL = (
    "CREATE TABLE IF NOT EXISTS store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS verdicts (verdict_id TEXT PRIMARY KEY,"
    " transaction_id TEXT NOT NULL, decided_at BIGINT NOT NULL,"
    " log_partition INTEGER NOT NULL, log_offset BIGINT NOT NULL, record TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS verdicts_by_transaction"
    " ON verdicts (transaction_id, log_partition, log_offset)",
    "CREATE TABLE IF NOT EXISTS cases (case_id TEXT PRIMARY KEY, version BIGINT NOT NULL,"
    " transaction_id TEXT NOT NULL, record TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS cases_by_transaction ON cases (transaction_id)",
    "CREATE TABLE IF NOT EXISTS disputes (command_id TEXT PRIMARY KEY,"
    " transaction_id TEXT NOT NULL, requested_at BIGINT NOT NULL, record TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS disputes_by_transaction"
    " ON disputes (transaction_id, requested_at)",
    "CREATE INDEX IF NOT EXISTS disputes_by_time ON disputes (requested_at)",
    "CREATE TABLE IF NOT EXISTS positions (topic TEXT NOT NULL, log_partition INTEGER NOT NULL,"
    " next_offset BIGINT NOT NULL, PRIMARY KEY (topic, log_partition))",
)
_VERSION_ROW = ("INSERT INTO store_meta (name, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (name) DO NOTHING")
_INSERT_VERDICT = (
    "INSERT INTO verdicts (verdict_id, transaction_id, decided_at, log_partition, log_offset,"
    " record) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (verdict_id) DO NOTHING")
# A replayed older version of a case must not undo a newer one.
_UPSERT_CASE = (
    "INSERT INTO cases (case_id, version, transaction_id, record) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (case_id) DO UPDATE SET version = excluded.version,"
    " transaction_id = excluded.transaction_id, record = excluded.record"
    " WHERE excluded.version > cases.version")
_INSERT_DISPUTE = (
    "INSERT INTO disputes (command_id, transaction_id, requested_at, record)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (command_id) DO NOTHING")
# Positions only move forward: two API processes sharing one database each write everything
# below the position they commit, so the larger one is true for both.
_UPSERT_POSITION = (
    "INSERT INTO positions (topic, log_partition, next_offset) VALUES (?, ?, ?)"
    " ON CONFLICT (topic, log_partition) DO UPDATE SET next_offset = excluded.next_offset"
    " WHERE excluded.next_offset > positions.next_offset")


class StoreUnavailable(Exception):
    """The database cannot be used now (down, unreachable, refusing writes); says why."""


@dataclass
class Batch:
    """One transaction's worth of what the topics said, and how far they have been read.

    ``verdicts`` are (partition, offset, verdict record): the position orders a payment's
    verdicts, which share a key and so a partition. ``disputes`` are DISPUTE case commands
    without their carried verdict bytes, with the disputed ``verdict_id`` added. ``positions``
    maps (topic, partition) to the next offset to read.
    """

    verdicts: list[tuple[int, int, Record]] = field(default_factory=list)
    cases: list[Record] = field(default_factory=list)
    disputes: list[Record] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.verdicts) + len(self.cases) + len(self.disputes)


def _tag(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$ms": to_millis(value)}
    raise TypeError(f"cannot store a {type(value).__name__} in a record")


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$ms" in obj:
        return from_millis(obj["$ms"])
    return obj


def dump(record: Mapping[str, Any]) -> str:
    """A decoded record as JSON text, datetimes tagged so :func:`load` gives them back."""
    return json.dumps(record, default=_tag, separators=(",", ":"), sort_keys=True)


def load(text: str) -> Record:
    out = json.loads(text, object_hook=_untag)
    assert isinstance(out, dict)
    return out


def _ms(value: Any) -> int:
    return to_millis(value) if isinstance(value, datetime) else int(value)


class _Slot:
    """One connection, opened on first use and dropped when the backend says it is unusable;
    a lock serializes the threads that share it."""

    def __init__(self, backend: Backend, autocommit: bool,
                 on_connect: Callable[[Any], None]) -> None:
        self._backend, self._autocommit, self._on_connect = backend, autocommit, on_connect
        self._conn: Any = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[Any], T]) -> T:
        """``work(connection)``; on a connection kept from before that turns out broken (the
        server restarted since), once more on a new one, so one stale connection never fails a
        request the database could answer. ``work`` must be safe to repeat: one transaction."""
        with self._lock:
            while True:
                kept = self._conn is not None
                try:
                    if self._conn is None:
                        self._conn = self._open()
                    return work(self._conn)
                except self._backend.unavailable as exc:
                    self._drop()
                    if not kept:
                        raise StoreUnavailable(_describe(self._backend, exc)) from exc

    def _open(self) -> Any:
        conn = self._backend.connect(self._autocommit)
        try:
            self._on_connect(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing a broken connection may fail too; it is gone either way.
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()


def _describe(backend: Backend, exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{backend.name} at {backend.where}: {first}"


class Store:
    """Verdicts, cases and disputes, and the topic positions they were read up to."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self._writer = _Slot(backend, False, self._migrate)
        self._reader = _Slot(backend, True, self._migrate)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def where(self) -> str:
        return self.backend.where

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.backend.marker)

    def _migrate(self, conn: Any) -> None:
        """Create the tables once per process (idempotently) and check the schema version."""
        with self._migrate_lock:
            if not self._migrated:
                for statement in _DDL:
                    conn.execute(statement)
                conn.execute(self._sql(_VERSION_ROW), (SCHEMA_VERSION,))
                conn.commit()  # a no-op on an autocommit connection
                self._migrated = True
            row = conn.execute("SELECT value FROM store_meta WHERE name = 'schema_version'"
                               ).fetchone()
            conn.commit()
        if row is None or row[0] != SCHEMA_VERSION:
            found = None if row is None else row[0]
            raise StoreUnavailable(f"{self.backend.name} at {self.backend.where}: schema version "
                                   f"{found}, this API needs {SCHEMA_VERSION}")

    # -- the writer ---------------------------------------------------------------------------

    def positions(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """Where each (topic, partition) was read up to, for the given topics."""
        wanted = list(topics)

        def read(conn: Any) -> dict[tuple[str, int], int]:
            try:
                rows = conn.execute("SELECT topic, log_partition, next_offset FROM positions"
                                    ).fetchall()
            finally:
                conn.rollback()
            return {(str(t), int(p)): int(n) for t, p, n in rows if t in wanted}

        return self._writer.run(read)

    def write(self, batch: Batch) -> None:
        """Everything in ``batch`` and its positions, in one transaction."""
        verdicts = []
        for partition, offset, verdict in batch.verdicts:
            kept = {k: v for k, v in verdict.items() if k not in _VERDICT_DROP}
            verdicts.append((str(verdict["verdict_id"]), str(verdict["transaction_id"]),
                             _ms(verdict["decided_at"]), partition, offset, dump(kept)))
        cases = [(str(c["case_id"]), int(c["version"]), str(c["transaction_id"]), dump(c))
                 for c in batch.cases]
        disputes = [(str(d["command_id"]), str(d["transaction_id"]), _ms(d["requested_at"]),
                     dump(d)) for d in batch.disputes]
        positions = [(t, p, n) for (t, p), n in sorted(batch.positions.items())]

        def write(conn: Any) -> None:
            try:
                cur = conn.cursor()
                for statement, rows in ((_INSERT_VERDICT, verdicts), (_UPSERT_CASE, cases),
                                        (_INSERT_DISPUTE, disputes),
                                        (_UPSERT_POSITION, positions)):
                    if rows:
                        cur.executemany(self._sql(statement), rows)
                conn.commit()
            except BaseException:
                # A dead connection cannot roll back; the server already has.
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise

        self._writer.run(write)

    # -- lookups ------------------------------------------------------------------------------

    def _rows(self, statement: str, params: tuple[Any, ...]) -> list[Record]:
        def read(conn: Any) -> list[Record]:
            return [load(r[0]) for r in conn.execute(self._sql(statement), params).fetchall()]

        return self._reader.run(read)

    def verdicts(self, transaction_id: str) -> list[Record]:
        """Every stored verdict on a payment, newest (in log order) first: the worker's, then
        any analyst overrides."""
        return self._rows("SELECT record FROM verdicts WHERE transaction_id = ?"
                          " ORDER BY log_partition DESC, log_offset DESC", (transaction_id,))

    def latest_verdict(self, transaction_id: str) -> Record | None:
        """The decision that stands on a payment: its newest verdict (an override if any)."""
        rows = self._rows("SELECT record FROM verdicts WHERE transaction_id = ?"
                          " ORDER BY log_partition DESC, log_offset DESC LIMIT 1",
                          (transaction_id,))
        return rows[0] if rows else None

    def verdict(self, verdict_id: str) -> Record | None:
        rows = self._rows("SELECT record FROM verdicts WHERE verdict_id = ?", (verdict_id,))
        return rows[0] if rows else None

    def case(self, case_id: str) -> Record | None:
        rows = self._rows("SELECT record FROM cases WHERE case_id = ?", (case_id,))
        return rows[0] if rows else None

    def cases_of(self, transaction_id: str) -> list[Record]:
        return self._rows("SELECT record FROM cases WHERE transaction_id = ?"
                          " ORDER BY case_id", (transaction_id,))

    def disputes(self, transaction_id: str | None = None, limit: int = 100) -> list[Record]:
        """Disputes filed, newest first (of one payment when ``transaction_id`` is given), each
        with the payment's case as it stands (``case``, None until the case agent opened it)."""
        where, params = ("", (limit,)) if transaction_id is None else (
            " WHERE d.transaction_id = ?", (transaction_id, limit))
        statement = ("SELECT d.record, c.record FROM disputes d LEFT JOIN cases c"
                     f" ON c.transaction_id = d.transaction_id{where}"
                     " ORDER BY d.requested_at DESC, d.command_id LIMIT ?")

        def read(conn: Any) -> list[Record]:
            rows = conn.execute(self._sql(statement), params).fetchall()
            return [{**load(d), "case": None if c is None else load(c)} for d, c in rows]

        return self._reader.run(read)

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers now."""
        self._reader.run(lambda conn: conn.execute("SELECT 1").fetchone())

    def close(self) -> None:
        self._writer.close()
        self._reader.close()


def open_store(url: str) -> Store:
    """A store for ``url`` (connections open on first use, so a database that is down at
    start-up makes the API read-only, not absent)."""
    return Store(open_backend(url))
