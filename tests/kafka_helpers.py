"""Real-broker plumbing for the integration tests: a worker process, a producer, a reader."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.config import Settings
from streams.launcher import spawn, stop_process, wait_for_group
from streams.topics import Topic, topic_name


class WorkerProcess:
    """`rakshit worker` as its own OS process, so a test can kill -9 it like production would."""

    def __init__(self, settings: Settings, log_path: Path, args: Sequence[str] = ()) -> None:
        self.settings = settings
        self.log_path = log_path
        self.args = tuple(args)  # more `rakshit worker` options, e.g. ("--passthrough", "raw")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> WorkerProcess:
        self.proc = spawn(self.settings, self.log_path, "worker", "--loglevel", "warn", *self.args)
        if wait:
            wait_for_group(self.settings, self.settings.app_id, self.proc)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def producer(settings: Settings) -> Producer:
    return Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 2,
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
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers,
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
