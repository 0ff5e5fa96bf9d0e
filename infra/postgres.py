"""A real PostgreSQL server on this machine: Debian's postgresql package, a fresh cluster made by
initdb in a temporary directory, on a free loopback port, with password authentication over TCP
as production uses it.

The store's tests (tests/pg_server.py wraps this for pytest) and `rakshit bench faults` (which
stops the database under a running API) both need one without Docker. PostgreSQL refuses to run
as root, so as root the server runs as the package's ``postgres`` user (``runuser``). ``stop()``
and ``start()`` take the database away and bring it back; the data directory survives both.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

USER = "rakshit"


class PostgresMissing(RuntimeError):
    """Debian's PostgreSQL server package is not installed."""


def bin_dir() -> Path:
    """The newest installed major release's binaries."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise PostgresMissing("Debian's PostgreSQL server is missing: `make test` installs it "
                              "(apt-get install postgresql)")
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self, port: int | None = None) -> None:
        from streams.admin import free_port

        self.bin = bin_dir()
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(12)
        self.root = Path(tempfile.mkdtemp(prefix="rakshit-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                  "--no-locale")
        pwfile.unlink()

    def _run(self, program: str, *args: str) -> None:
        cmd = [*self.as_user, str(self.bin / program), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n"
                               f"{done.stderr}\n{log}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        """A fast shutdown, as an operator or a failover would do it: open connections end."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(RuntimeError):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
