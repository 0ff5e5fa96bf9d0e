"""`rakshit bench faults`' six faults, each done to the processes of one run (:class:`Stage`).

Each returns the wall times (time.time()) of its start and its end, the end being the moment the
component is back in service: the broker answers a metadata request again, the replacement
worker reports ready (its readiness gauge: tables recovered, partitions assigned), the restarted
API answers its page, the database accepts connections. Every wait is bounded.

The worker keeps its tables in memory and rebuilds them from their changelogs at every start
(streams.worker.app: store="memory://"; streams.worker.store), so ``state-loss`` deletes what a
worker does keep on disk, its Faust data directory (RAKSHIT_HOME/worker/<app id>), and shows a
replacement needs nothing of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from infra.kafka.launcher import answers
from infra.postgres import PostgresServer
from streams.admin import free_port
from streams.broker import embedded_broker
from streams.config import Settings
from streams.launcher import start_api, start_worker, stop_process, wait_until_ready

BROKER_DOWN_S = 5.0  # broker-kill: how long the broker stays dead before its restart
PAUSE_S = 15.0  # broker-pause: SIGSTOP to SIGCONT
DB_DOWN_S = 15.0  # db-stop: the database stopped this long
COMMANDS_PER_S = 5.0  # api-kill, db-stop: analysts' commands while the API or its store fails
BACK_WITHIN_S = 180.0  # any component not back in service by then fails the fault


@dataclass
class Stage:
    """What one fault's run has running: the worker, and for the API faults the API (on a
    fixed port, so a restart answers where the analysts' client sends) and its database."""

    settings: Settings
    tag: str
    worker: subprocess.Popen[bytes] | None = None
    worker_log: str = ""
    workers_started: int = 0
    api: subprocess.Popen[bytes] | None = None
    api_port: int = 0
    pg: PostgresServer | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/"

    def start_worker(self) -> None:
        """A worker (its own metrics port each time), returned once ready."""
        self.workers_started += 1
        member = replace(self.settings, metrics_port=free_port())
        self.worker, self.worker_log = start_worker(
            member, f"{self.tag}-worker-{self.workers_started}.log")
        wait_until_ready(member, self.worker, timeout_s=BACK_WITHIN_S)

    def start_api(self) -> None:
        self.api, _ = start_api(self.settings, self.api_port)

    def processes(self) -> list[subprocess.Popen[bytes] | None]:
        return [self.worker, self.api]


def kill9(proc: subprocess.Popen[bytes] | None) -> None:
    """kill -9 of a launcher child's whole process group, then forget it."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    stop_process(proc)  # only deregisters: it has exited


def _broker_pid(stage: Stage) -> int:
    if not stage.settings.embedded:
        raise RuntimeError("broker faults need the embedded broker (KAFKA_BOOTSTRAP_SERVERS "
                           "names another cluster)")
    pid = embedded_broker(stage.settings).status().pid
    if pid is None:
        raise RuntimeError("the embedded broker's pid file is missing")
    return pid


def _until_answers(settings: Settings) -> float:
    deadline = time.monotonic() + BACK_WITHIN_S
    while not answers(settings.bootstrap_servers, 2.0, settings.kafka_config()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the broker did not answer within {BACK_WITHIN_S:.0f}s")
        time.sleep(0.2)
    return time.time()


def broker_kill(stage: Stage) -> tuple[float, float]:
    pid = _broker_pid(stage)
    os.kill(pid, signal.SIGKILL)
    start = time.time()
    try:
        time.sleep(BROKER_DOWN_S)
    finally:  # interrupted or not, the broker is left running
        embedded_broker(stage.settings).start(timeout_s=BACK_WITHIN_S)
    return start, _until_answers(stage.settings)


def broker_pause(stage: Stage) -> tuple[float, float]:
    pid = _broker_pid(stage)
    os.kill(pid, signal.SIGSTOP)
    start = time.time()
    try:
        time.sleep(PAUSE_S)
    finally:
        os.kill(pid, signal.SIGCONT)
    return start, _until_answers(stage.settings)


def worker_kill(stage: Stage) -> tuple[float, float]:
    kill9(stage.worker)
    start = time.time()
    stage.start_worker()
    return start, time.time()


def state_loss(stage: Stage) -> tuple[float, float]:
    kill9(stage.worker)
    start = time.time()
    shutil.rmtree(stage.settings.home / "worker" / stage.settings.app_id, ignore_errors=True)
    stage.start_worker()
    return start, time.time()


def api_kill(stage: Stage) -> tuple[float, float]:
    kill9(stage.api)
    start = time.time()
    stage.start_api()
    return start, time.time()


def db_stop(stage: Stage) -> tuple[float, float]:
    assert stage.pg is not None
    stage.pg.stop()
    start = time.time()
    time.sleep(DB_DOWN_S)
    stage.pg.start()
    return start, time.time()


FAULTS: dict[str, Callable[[Stage], tuple[float, float]]] = {
    "broker-kill": broker_kill,
    "broker-pause": broker_pause,
    "worker-kill": worker_kill,
    "state-loss": state_loss,
    "api-kill": api_kill,
    "db-stop": db_stop,
}
API_FAULTS = ("api-kill", "db-stop")


def api_get(stage: Stage, path: str, timeout_s: float = 5.0) -> Any:
    request = urllib.request.Request(stage.api_url + path.lstrip("/"), headers={
        "Authorization": f"Bearer {stage.tokens['viewer']}"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def store_caught_up(stage: Stage, within: int) -> bool:
    """The API accepts commands and its store is at most ``within`` records behind the topics
    (the feed writes a batch every half second or so, so a live store is never exactly 0)."""
    try:
        status = api_get(stage, "api/store")
    except (OSError, ValueError):
        return False
    behind = status.get("behind")
    return bool(status.get("writable")) and behind is not None and behind <= within


class Commands(threading.Thread):
    """An analyst's client: a whitelisting (a case command, applied by the worker's case agent)
    of a fresh card token at ``rate`` per second, each sent once. ``accepted`` maps the tokens
    the API answered 202 for to their command id; ``refused`` counts the other answers."""

    def __init__(self, stage: Stage, rate: float = COMMANDS_PER_S) -> None:
        super().__init__(name="fault-commands", daemon=True)
        self.stage, self.rate = stage, rate
        self.stop_event = threading.Event()
        self.sent = 0
        self.accepted: dict[str, str] = {}
        self.refused: Counter[str] = Counter()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop_event.wait(max(0.0, started + self.sent / self.rate
                                           - time.monotonic())):
            token = f"fault-{self.stage.tag}-{self.sent:06d}"
            self.sent += 1
            body = json.dumps({"card_token": token, "reason": "bench faults",
                               "until": (datetime.now(UTC) + timedelta(days=1)).isoformat()})
            request = urllib.request.Request(
                self.stage.api_url + "api/whitelist", data=body.encode(), method="POST",
                headers={"Authorization": f"Bearer {self.stage.tokens['analyst']}",
                         "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    self.accepted[token] = json.loads(response.read())["command_id"]
            except urllib.error.HTTPError as exc:
                self.refused[str(exc.code)] += 1
            except (OSError, ValueError) as exc:
                self.refused[type(exc).__name__] += 1


def stored_verdict_ids(database_url: str) -> set[str]:
    """Every verdict id the API's store holds."""
    from streams.store import open_backend

    conn = open_backend(database_url).connect(True)
    try:
        return {str(row[0]) for row in conn.execute("SELECT verdict_id FROM verdicts")}
    finally:
        conn.close()


def store_url(stage: Stage, run_dir: Path) -> str:
    """db-stop: a database on a PostgreSQL server of the run's own; api-kill: SQLite in the run's
    directory (its own, not RAKSHIT_HOME's shared store.sqlite3)."""
    if stage.pg is not None:
        return stage.pg.create_database(stage.tag.replace("-", "_"))
    return f"sqlite:///{run_dir / 'store.sqlite3'}"
