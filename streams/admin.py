"""Topic creation and inspection with confluent-kafka's admin client.

Faust only creates its own internal topics (changelogs); the product's topics are created here from
the one list in `streams.topics`, idempotently: an existing topic is left as it is, and a topic that
exists with fewer partitions than declared is reported, not silently used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from streams.config import Settings
from streams.topics import TOPICS, Topic, topic_name

# Who may do what, with RAKSHIT_KAFKA_AUTH=scram (the broker's StandardAuthorizer refuses the
# rest; "broker" and "admin" are super users). Topic -> "read", "write" or "read,write".
# Gateways produce transactions, outcomes and labels and follow the routing policy; the worker
# writes every verdict, hypothesis, experiment, policy and notification and its internal topics;
# only the API writes case commands (so the case agent may trust the actor and role inside
# them), and it writes refusal audits and reads what its pages and store show. README, "Threat
# model", shows this table; tests/test_readme.py checks the two agree.
READ, WRITE, BOTH = "read", "write", "read,write"
ACLS: dict[str, dict[Topic, str]] = {
    "gateway": {Topic.TRANSACTIONS: WRITE, Topic.AUTH_OUTCOMES: WRITE, Topic.LABELS: WRITE,
                Topic.ROUTING_POLICY: READ},
    "worker": {
        Topic.TRANSACTIONS: READ, Topic.AUTH_OUTCOMES: READ,
        # Analysts' confirmed fraud becomes a label (the case agent), read back by the lane.
        Topic.LABELS: BOTH,
        # Read back: the lane's checkpoint says where the decision topic stood.
        Topic.DECISIONS: BOTH,
        Topic.SCORING: BOTH, Topic.ROUTE_OUTCOMES: BOTH, Topic.HYPOTHESES: BOTH,
        Topic.EXPERIMENTS: WRITE, Topic.ROUTING_POLICY: WRITE, Topic.NOTIFICATIONS: WRITE,
        Topic.CASES: WRITE, Topic.WHITELIST: BOTH, Topic.REVIEW_QUEUE: BOTH,
        Topic.DEAD_LETTERS: WRITE, Topic.AUDIT: WRITE, Topic.MODEL_QUALITY: WRITE,
        Topic.EVALUATION_QUEUE: WRITE,
        # The case agent reads the API's commands; it never writes them. The lane's OPENs go to
        # the worker's own case-openings topic (streams.worker.casework).
        Topic.CASE_COMMANDS: READ, Topic.CASE_OPENINGS: BOTH,
    },
    "api": {Topic.CASE_COMMANDS: BOTH, Topic.AUDIT: BOTH, Topic.CASES: READ,
            Topic.ROUTING_POLICY: READ, Topic.HYPOTHESES: READ, Topic.EXPERIMENTS: READ,
            Topic.DECISIONS: READ, Topic.AUTH_OUTCOMES: READ, Topic.MODEL_QUALITY: READ},
}
# Consumer groups each principal may join, by name prefix (the worker's: its app id).
GROUP_PREFIXES: dict[str, tuple[str, ...]] = {
    "gateway": ("rakshit-simulator-",),
    "api": ("rakshit-api-", "rakshit-offsets"),
    # The lane's changelog readers name the group "rakshit-restore" (streams.worker.store) though
    # they never join or commit; librdkafka still looks its coordinator up.
    "worker": ("rakshit-restore",),
}


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
    return AdminClient(settings.kafka_config())


def acl_bindings(settings: Settings) -> list[AclBinding]:
    """The ACLs of ACLS for this run's topic prefix and app id."""
    bindings: list[AclBinding] = []

    def allow(principal: str, restype: ResourceType, name: str, pattern: ResourcePatternType,
              op: AclOperation) -> None:
        bindings.append(AclBinding(restype, name, pattern, f"User:{principal}", "*", op,
                                   AclPermissionType.ALLOW))

    literal, prefixed = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    for principal, topics in ACLS.items():
        # Every service may see which of the project's topics exist (and their offsets), so
        # ensure_topics finds them; seeing is not reading.
        allow(principal, ResourceType.TOPIC, f"{settings.topic_prefix}rakshit.", prefixed,
              AclOperation.DESCRIBE)
        allow(principal, ResourceType.BROKER, "kafka-cluster", literal,
              AclOperation.IDEMPOTENT_WRITE)
        for topic, ops in topics.items():
            name = topic_name(topic, settings.topic_prefix)
            for what in ops.split(","):
                allow(principal, ResourceType.TOPIC, name, literal,
                      AclOperation.READ if what == READ else AclOperation.WRITE)
        for group in GROUP_PREFIXES.get(principal, ()):
            allow(principal, ResourceType.GROUP, group, prefixed, AclOperation.READ)
    # The worker's own namespace: Faust's and the lane's changelogs and internal topics
    # (`<app id>-*`), its consumer groups and transactional ids (`<app id>*`).
    for op in (AclOperation.CREATE, AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE,
               AclOperation.DESCRIBE_CONFIGS, AclOperation.ALTER_CONFIGS):
        allow("worker", ResourceType.TOPIC, f"{settings.app_id}-", prefixed, op)
    for op in (AclOperation.READ, AclOperation.DESCRIBE):
        allow("worker", ResourceType.GROUP, settings.app_id, prefixed, op)
    for op in (AclOperation.WRITE, AclOperation.DESCRIBE):
        allow("worker", ResourceType.TRANSACTIONAL_ID, settings.app_id, prefixed, op)
    return bindings


def ensure_acls(settings: Settings, timeout_s: float = 30.0) -> int:
    """Grant ACLS for this run (creating an ACL that exists changes nothing); returns how many.
    Only a super user can; without authentication there is nothing to grant."""
    if not settings.kafka_secured:
        return 0
    bindings = acl_bindings(settings)
    admin = admin_client(settings)  # held: a collected client cancels its futures
    for future in admin.create_acls(bindings, request_timeout=timeout_s).values():
        future.result()
    return len(bindings)


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    """Create every declared topic that does not exist yet; returns name -> 'created'|'exists'.
    As the admin principal with authentication on, also grants the run's ACLs (ensure_acls)."""
    if settings.kafka_secured and settings.kafka_user == "admin":
        ensure_acls(settings, timeout_s)
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
    return Consumer({**settings.kafka_config(),
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
