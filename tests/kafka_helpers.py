"""Real-broker plumbing for the integration tests: a worker process, a producer, a reader."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.config import REPO_ROOT, Settings
from streams.launcher import spawn_service, stop_process, wait_for_group
from streams.topics import Topic, topic_name


class WorkerProcess:
    """`rakshit worker` as its own OS process, so a test can kill -9 it like production would.
    It logs in as the worker principal (streams.launcher.spawn_service), so a test also proves
    the worker needs nothing its ACLs do not grant."""

    def __init__(self, settings: Settings, log_path: Path, args: Sequence[str] = ()) -> None:
        self.settings = settings
        self.log_path = log_path
        self.args = tuple(args)  # more `rakshit worker` options, e.g. ("--passthrough", "raw")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> WorkerProcess:
        self.proc = spawn_service(self.settings, "worker", self.log_path, "worker", "--loglevel",
                                  "warn", *self.args)
        if wait:
            wait_for_group(self.settings, self.settings.app_id, self.proc)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        stop_process(self.proc)  # only forgets it: the launcher keeps the running ones

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def producer(settings: Settings) -> Producer:
    return Producer({**settings.kafka_config(), "linger.ms": 2,
                     "enable.idempotence": True, "message.max.bytes": 2_000_000})


def produce(settings: Settings, records: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    p = producer(settings)
    n = 0
    for topic, key, value in records:
        while True:
            try:
                p.produce(topic, key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    remaining = p.flush(30)
    assert remaining == 0, f"{remaining} records not delivered"
    return n


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def read_all(settings: Settings, topic: str, until: int | None = None,
             timeout_s: float = 60.0, idle_s: float = 3.0) -> list[Record]:
    """Everything on a topic as a read_committed consumer sees it.

    Stops when `until` records arrived, or (with until=None) after idle_s without new records.
    """
    c = Consumer({**settings.kafka_config(),
                  "group.id": f"test-reader-{time.time_ns()}", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    meta = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if until is not None and len(out) >= until:
                break
            if until is None and time.monotonic() - last > idle_s:
                break
            for m in c.consume(num_messages=5000, timeout=0.2):
                if m.error():
                    continue
                last = time.monotonic()
                out.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value() or b""))
    finally:
        c.close()
    return out


def name(settings: Settings, topic: Topic) -> str:
    return topic_name(topic, settings.topic_prefix)


# -- processes as a person or a service manager runs them (tests/test_process_lifecycle.py) ----

def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a `rakshit` command needs to run with ``settings``."""
    env = {**os.environ, **settings.to_env(), **extra}
    if settings.external_bootstrap is None:
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env


def rakshit(*args: str, out: Path, err: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m streams.cli *args`` in its own session (a signal to the test reaches it only
    when sent to it), its stdout and stderr in files."""
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], cwd=REPO_ROOT,
                                env=env, stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for_line(path: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float,
                  also: Path | None = None) -> str:
    """The first line of ``path`` containing ``text``, once written; fails when ``proc`` ends
    first or the time runs out, showing what it wrote."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        written = path.read_text(errors="replace") if path.exists() else ""
        for line in written.splitlines():
            if text in line:
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    said = also.read_text(errors="replace")[-3000:] if also and also.exists() else ""
    raise AssertionError(f"no line with {text!r} (exit {proc.poll()}):\n"
                         f"{(path.read_text(errors='replace') if path.exists() else '')[-3000:]}"
                         f"\n{said}")


def pid_alive(pid: int) -> bool:
    """True while any thread of process ``pid`` runs. A zombie waiting for its parent to reap
    it has stopped; but a main thread that has ended shows as a zombie too while the process's
    other threads still run (and hold its sockets)."""
    try:
        tasks = [t.name for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    for task in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[0] != "Z":
            return True
    return False


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 2).close()
    except OSError:
        return False
    return True
