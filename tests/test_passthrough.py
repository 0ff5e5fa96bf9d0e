"""The raw passthrough (the benchmark's ceiling) against a real broker: every record forwarded
byte for byte, readiness reported, and its offsets committed when it stops."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.admin import end_offsets, ensure_topics
from streams.config import Settings
from streams.launcher import wait_until_ready
from streams.topics import Topic
from tests.kafka_helpers import WorkerProcess, name, produce, read_all

pytestmark = pytest.mark.kafka

N = 2_000


def _committed(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer({**settings.kafka_config(),
                         "group.id": settings.app_id, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in end_offsets(settings, topic)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def test_raw_passthrough_forwards_every_record_unchanged(
        make_settings: Callable[..., Settings], tmp_path: Path, free_port: int) -> None:
    settings = make_settings(metrics_port=free_port, commit_interval_s=0.5)
    ensure_topics(settings)
    source = name(settings, Topic.TRANSACTIONS)
    decisions = name(settings, Topic.DECISIONS)
    rng = random.Random(11)
    # Arbitrary bytes, not Avro: the passthrough must not look inside. Keys repeat (as card
    # tokens do) so partitions get several records each; values vary in length.
    sent = [(f"card-{i % 97:03d}".encode(), rng.randbytes(rng.randint(1, 600)) + i.to_bytes(4))
            for i in range(N)]

    worker = WorkerProcess(settings, tmp_path / "raw.log", args=("--passthrough", "raw")).start()
    try:
        assert worker.proc is not None
        wait_until_ready(settings, worker.proc, timeout_s=60)  # the rakshit_worker_ready gauge
        produce(settings, [(source, key, value) for key, value in sent])
        records = read_all(settings, decisions, until=N)
        extra = read_all(settings, decisions, idle_s=2.0)  # nothing more arrives
    finally:
        worker.stop()

    assert worker.proc.returncode == 0, worker.log()  # SIGTERM: a clean stop
    assert len(records) == N, worker.log()
    assert Counter((r.key, r.value) for r in records) == Counter(sent)
    assert len(extra) == N
    # A clean stop commits everything forwarded: a restart would forward nothing again.
    assert _committed(settings, source) == end_offsets(settings, source)
