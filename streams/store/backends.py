"""From a database URL to connections: SQLite from the standard library, PostgreSQL by psycopg 3.

The store's SQL is the same on both (upserts with ON CONFLICT, integers and text); what differs is
how to connect, the parameter marker, and which errors mean "the database is not there" (as opposed
to a bug in a statement), so each backend names those. A PostgreSQL URL is libpq's own
(``postgresql://user:password@host:port/dbname?sslmode=...``); SQLite's is
``sqlite:///relative/path`` or ``sqlite:////absolute/path``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Backend", "open_backend", "redact_url"]

# How long a lookup or a ping may wait for PostgreSQL before the API falls back to its cache: an
# unreachable host must cost a request seconds, not the kernel's minutes of TCP retries.
CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 10_000
TCP_USER_TIMEOUT_MS = 5_000


@dataclass(frozen=True)
class Backend:
    """How to reach one database: ``connect(autocommit)`` opens a DB-API connection (readers
    ask for autocommit, the writer manages its transactions), ``marker`` is the parameter
    placeholder, ``unavailable`` the exception types that mean the database cannot be used now."""

    name: str
    where: str  # the URL without its password, for logs and the status endpoint
    connect: Callable[[bool], Any]
    marker: str
    unavailable: tuple[type[BaseException], ...]


def redact_url(url: str) -> str:
    """The URL with any password replaced, so it can be logged and shown."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _sqlite(url: str) -> Backend:
    path = Path(url.removeprefix("sqlite:///"))
    if not str(path) or str(path) == ":memory:":
        raise ValueError("RAKSHIT_DATABASE_URL: SQLite needs a file (sqlite:///path), since the "
                         "store feed and the lookups use separate connections")

    def connect(autocommit: bool) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False,
                               isolation_level=None if autocommit else "DEFERRED")
        # WAL: lookups read while the feed writes, neither waiting for the other.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return Backend("sqlite", url, connect, "?", (sqlite3.OperationalError,))


def _postgresql(url: str) -> Backend:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    given = conninfo_to_dict(url)  # raises on a malformed URL, at start-up
    defaults: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S,
                                "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
                                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                                "application_name": "rakshit-api"}
    extra = {k: v for k, v in defaults.items() if k not in given}

    def connect(autocommit: bool) -> psycopg.Connection[Any]:
        return psycopg.connect(url, autocommit=autocommit, **extra)

    # OperationalError covers refused connections and a server shutting down; InterfaceError a
    # connection already closed under us; a read-only transaction is a standby during failover.
    unavailable = (psycopg.OperationalError, psycopg.InterfaceError,
                   psycopg.errors.ReadOnlySqlTransaction)
    return Backend("postgresql", redact_url(url), connect, "%s", unavailable)


def open_backend(url: str) -> Backend:
    """The backend for ``url``; anything else is a ValueError naming the setting, at start-up."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return _sqlite(url)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return _postgresql(url)
    raise ValueError(f"RAKSHIT_DATABASE_URL: unsupported scheme {scheme!r}; use "
                     "sqlite:///path or postgresql://user:password@host:port/dbname")
