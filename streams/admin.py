"""Topic creation and inspection with confluent-kafka's admin client.

Faust only creates its own internal topics (changelogs); the product's topics are created here from
the one list in `streams.topics`, idempotently: an existing topic is left as it is, and a topic that
exists with fewer partitions than declared is reported, not silently used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.config import Settings
from streams.topics import TOPICS, topic_name


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    end_offsets: tuple[int, ...]

    @property
    def records(self) -> int:
        return sum(self.end_offsets)


def free_port() -> int:
    """A loopback port nobody listens on now, for a worker's metrics beside another worker."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def delete_run_topics(settings: Settings) -> None:
    """Delete a throwaway run's topics: its prefixed topics and its Faust changelogs."""
    admin = admin_client(settings)
    names = [n for n in admin.list_topics(timeout=10).topics
             if n.startswith(settings.topic_prefix) or n.startswith(settings.app_id)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result()


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers})


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    """Create every declared topic that does not exist yet; returns name -> 'created'|'exists'."""
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=timeout_s).topics
    wanted = []
    result: dict[str, str] = {}
    for spec in TOPICS:
        name = topic_name(spec.topic, settings.topic_prefix)
        partitions = spec.partitions or settings.default_partitions
        if name in existing:
            have = len(existing[name].partitions)
            result[name] = "exists" if have >= partitions else f"exists with {have} partitions"
            continue
        wanted.append(NewTopic(name, num_partitions=partitions, replication_factor=1,
                               config=spec.config()))
    if wanted:
        for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
            try:
                future.result()
                result[name] = "created"
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
                result[name] = "exists"
        wait_for_leaders(admin, [t.topic for t in wanted], timeout_s)
    return result


def wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """A created topic is usable only once every partition has a leader; callers read offsets
    straight away, so return only then."""
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        pending = [n for n in names if n not in topics
                   or not topics[n].partitions
                   or any(p.leader < 0 for p in topics[n].partitions.values())]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout_s:.0f}s: {pending}")
        time.sleep(0.1)


def describe_topics(settings: Settings, prefix_only: bool = True,
                    timeout_s: float = 10.0) -> list[TopicInfo]:
    """Partitions and end offsets per topic (the project's own topics unless prefix_only=False)."""
    admin = admin_client(settings)
    meta = admin.list_topics(timeout=timeout_s)
    ours = f"{settings.topic_prefix}rakshit."
    names = sorted(n for n in meta.topics if not prefix_only or n.startswith(ours))
    consumer = _offsets_consumer(settings)
    try:
        infos = []
        for name in names:
            parts = sorted(meta.topics[name].partitions)
            ends = [_high_watermark(consumer, name, p, timeout_s) for p in parts]
            infos.append(TopicInfo(name, len(parts), tuple(ends)))
        return infos
    finally:
        consumer.close()


def end_offsets(settings: Settings, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """Partition -> offset of the next record to be written."""
    consumer = _offsets_consumer(settings)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        return {p: _high_watermark(consumer, topic, p, timeout_s)
                for p in meta.topics[topic].partitions}
    finally:
        consumer.close()


def _offsets_consumer(settings: Settings) -> Consumer:
    return Consumer({"bootstrap.servers": settings.bootstrap_servers,
                     "group.id": "rakshit-offsets", "enable.auto.commit": False})


_NOT_READY = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART}


def _high_watermark(consumer: Consumer, topic: str, partition: int, timeout_s: float) -> int:
    """A partition created a moment ago can be in the metadata before its leader serves it;
    retry those answers briefly instead of failing the caller."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                      timeout=timeout_s)[1])
        except KafkaException as exc:
            if exc.args[0].code() not in _NOT_READY or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
