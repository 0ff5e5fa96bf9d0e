"""The store's tests' PostgreSQL server: infra.postgres's (Debian's package, which `make test`
installs, as it installs chromium), failing the test when the package is missing, and one server
shared by the whole session."""

from __future__ import annotations

import atexit

import pytest

from infra import postgres
from infra.postgres import USER, PostgresMissing

__all__ = ["USER", "PostgresServer", "shared_server"]


class PostgresServer(postgres.PostgresServer):
    def __init__(self) -> None:
        try:
            super().__init__()
        except PostgresMissing as exc:
            pytest.fail(str(exc))


_SHARED: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """One server for the whole session (test modules share it; each test gets its own
    database); stopped and removed when the interpreter exits."""
    global _SHARED
    if _SHARED is None:
        server = PostgresServer()
        atexit.register(server.destroy)
        server.start()
        print(f"\n[postgres] {server.bin.parent.name} on 127.0.0.1:{server.port} "
              f"({server.root})")
        _SHARED = server
    return _SHARED
