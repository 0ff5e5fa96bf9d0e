"""Kafka authentication and authorization against a real broker with RAKSHIT_KAFKA_AUTH=scram.

The module starts its own embedded broker with SASL/SCRAM and the StandardAuthorizer (beside the
session's, on RAKSHIT_TEST_BROKER_PORT + 10), grants the run's ACLs as the admin
principal (streams.admin.ensure_topics) and then acts as each principal. Nothing is mocked: the
refusals are the broker's.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from infra.kafka.launcher import PRINCIPALS, EmbeddedBroker
from schemas.codec import make_codec
from streams.admin import ACLS, READ, WRITE, end_offsets, ensure_topics, free_port
from streams.api.server import FEEDS
from streams.api.store_feed import STORED
from streams.config import Settings
from streams.launcher import start_api, stop_process
from streams.simulator.population import build_population
from streams.simulator.producer import SimulationOptions, run_simulation
from streams.topics import Topic, topic_name
from tests.factories import transaction
from tests.kafka_helpers import WorkerProcess, produce, read_all
from tests.test_codec import RECORDS

pytestmark = pytest.mark.kafka


@dataclass(frozen=True)
class SecuredBroker:
    broker: EmbeddedBroker
    credentials: Path


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    defaults = Settings.from_env()
    port = int(os.environ.get("RAKSHIT_TEST_BROKER_PORT", "29092")) + 10
    credentials = tmp_path_factory.mktemp("kafka") / "credentials"
    # The jar cache is the shared one under the default home; the run dir is this port's own.
    broker = EmbeddedBroker(defaults.home, defaults.kafka_version, port, port + 1,
                            auth="scram", credentials_dir=credentials)
    shutil.rmtree(broker.run_dir, ignore_errors=True)
    broker.start(timeout_s=180)
    try:
        yield SecuredBroker(broker, credentials)
    finally:
        broker.stop()


@pytest.fixture
def admin(secured_broker: SecuredBroker, tmp_path: Path) -> Settings:
    """The operator's settings for one test: its own topic prefix and app id, ACLs granted."""
    tag = uuid.uuid4().hex[:8]
    settings = replace(Settings.from_env(), external_bootstrap=secured_broker.broker.bootstrap,
                       kafka_auth="scram", kafka_user="admin", kafka_password_file=None,
                       kafka_credentials_dir=secured_broker.credentials,
                       topic_prefix=f"acl{tag}.", app_id=f"rakshit-acl-{tag}",
                       home=tmp_path / "home", metrics_port=0, default_partitions=2)
    ensure_topics(settings)  # as admin: creates the topics and grants the ACLs
    return settings


def _produce_one(settings: Settings, topic: Topic, **extra: object) -> KafkaError | None:
    """Produce one record and return the broker's answer (None: written)."""
    results: list[KafkaError | None] = []
    producer = Producer({**settings.kafka_config(), "message.timeout.ms": 8000,
                         "socket.timeout.ms": 3000, "log_level": 0, **extra})
    producer.produce(topic_name(topic, settings.topic_prefix), key=b"k", value=b"forged",
                     on_delivery=lambda err, _msg: results.append(err))
    producer.flush(20)
    assert results, "no delivery report"
    return results[0]


def _records(admin: Settings, topic: Topic) -> int:
    return sum(end_offsets(admin, topic_name(topic, admin.topic_prefix)).values())


def test_gateway_may_not_write_verdicts_or_case_commands(admin: Settings) -> None:
    gateway = admin.as_principal("gateway")
    for topic in (Topic.DECISIONS, Topic.CASE_COMMANDS, Topic.ROUTING_POLICY, Topic.AUDIT):
        err = _produce_one(gateway, topic)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, \
            f"gateway writing {topic}: {err}"
        assert _records(admin, topic) == 0
    # What a gateway is for still works.
    assert _produce_one(gateway, Topic.TRANSACTIONS) is None
    assert _records(admin, Topic.TRANSACTIONS) == 1


def test_api_may_not_write_verdicts_and_the_worker_may_not_write_transactions(
        admin: Settings) -> None:
    err = _produce_one(admin.as_principal("api"), Topic.DECISIONS)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _produce_one(admin.as_principal("api"), Topic.CASE_COMMANDS) is None
    err = _produce_one(admin.as_principal("worker"), Topic.TRANSACTIONS)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_worker_may_not_write_case_commands(admin: Settings) -> None:
    """Only the API writes case commands; the lane's OPENs go to the worker's own topic."""
    worker = admin.as_principal("worker")
    err = _produce_one(worker, Topic.CASE_COMMANDS)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _produce_one(worker, Topic.CASE_OPENINGS) is None
    for principal in ("gateway", "api"):
        err = _produce_one(admin.as_principal(principal), Topic.CASE_OPENINGS)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, principal
    assert _records(admin, Topic.CASE_COMMANDS) == 0


def test_a_forged_case_command_is_refused_and_never_reaches_the_case_book(
        admin: Settings, tmp_path: Path) -> None:
    """The case agent trusts the actor and role inside a case command because the broker takes
    case commands from the API principal alone (streams.worker.casework). A gateway's forged
    ones, an ADMIN role and an invented actor, are refused by the broker; the API's whitelisting,
    sent after them, is applied, and nothing of the forgeries reaches the case book's topics."""
    codec = make_codec(None)
    commands = topic_name(Topic.CASE_COMMANDS, admin.topic_prefix)
    decisions = topic_name(Topic.DECISIONS, admin.topic_prefix)
    now = datetime.now(UTC)
    verdict = {**RECORDS["verdict"](), "decision": "REVIEW", "is_override": False,
               "overrides_verdict_id": None, "decided_by": "worker", "arm": "CHAMPION"}

    def command(kind: str, actor: str, role: str, **extra: object) -> bytes:
        record = {"command_id": uuid.uuid4().hex, "command": kind, "actor": actor,
                  "role": role, "reason": "forged?", "case_id": None,
                  "expected_version": None, "resolution": None, "card_token": None,
                  "until": None, "transaction_id": None, "verdict": None,
                  "requested_at": now, **extra}
        return codec.encode("case_command", record, topic=commands)

    forged = [
        command("WHITELIST", "mallory", "ADMIN", card_token="tok_forged",
                until=now + timedelta(days=30)),
        command("OPEN", "mallory", "ADMIN", transaction_id=verdict["transaction_id"],
                verdict=codec.encode("verdict", verdict, topic=decisions)),
    ]
    gateway = admin.as_principal("gateway")
    results: list[KafkaError | None] = []
    producer = Producer({**gateway.kafka_config(), "message.timeout.ms": 8000,
                         "socket.timeout.ms": 3000, "log_level": 0})
    for value in forged:
        producer.produce(commands, key=b"forged", value=value,
                         on_delivery=lambda err, _msg: results.append(err))
    producer.flush(20)
    assert len(results) == len(forged)
    assert all(e is not None and e.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
               for e in results), results

    worker = WorkerProcess(admin.as_principal("worker"), tmp_path / "worker.log").start()
    try:
        produce(admin.as_principal("api"), [(commands, b"tok_real", command(
            "WHITELIST", "ana-analyst", "ANALYST", card_token="tok_real",
            until=now + timedelta(days=1)))])
        audit = read_all(admin, topic_name(Topic.AUDIT, admin.topic_prefix), until=1)
    finally:
        worker.stop()
    assert [codec.decode(r.value, topic=r.topic).record["actor"] for r in audit] == [
        "ana-analyst"]
    whitelisted = [codec.decode(r.value, topic=r.topic).record["card_token"] for r in read_all(
        admin, topic_name(Topic.WHITELIST, admin.topic_prefix), idle_s=1.0)]
    assert whitelisted == ["tok_real"]
    assert _records(admin, Topic.CASE_COMMANDS) == 1
    assert _records(admin, Topic.CASES) == 0


def test_unauthenticated_and_wrong_password_clients_cannot_produce(admin: Settings,
                                                                   tmp_path: Path) -> None:
    anonymous = replace(admin, kafka_auth="none")  # plaintext to the SASL listener
    assert _produce_one(anonymous, Topic.TRANSACTIONS) is not None
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    impostor = replace(admin, kafka_user="gateway", kafka_password_file=wrong)
    assert _produce_one(impostor, Topic.TRANSACTIONS) is not None
    # A principal the broker never heard of, with any password.
    stranger = replace(admin, kafka_user="mallory", kafka_password_file=wrong)
    assert _produce_one(stranger, Topic.TRANSACTIONS) is not None
    assert _records(admin, Topic.TRANSACTIONS) == 0


def test_credentials_are_private_and_never_logged(admin: Settings,
                                                  secured_broker: SecuredBroker,
                                                  tmp_path: Path) -> None:
    creds = secured_broker.credentials
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    passwords = {}
    for user in PRINCIPALS:
        path = creds / f"{user}.password"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        passwords[user] = path.read_text().strip()
        assert len(passwords[user]) >= 32
    assert len(set(passwords.values())) == len(PRINCIPALS)
    props = secured_broker.broker.run_dir / "server.properties"
    assert stat.S_IMODE(props.stat().st_mode) == 0o600  # it holds the broker's own password

    # The real worker, as the worker principal under its ACLs, deciding what a gateway sent.
    worker_settings = admin.as_principal("worker")
    gateway = admin.as_principal("gateway")
    codec = make_codec(None)
    tx_topic = topic_name(Topic.TRANSACTIONS, admin.topic_prefix)
    txs = [transaction(i) for i in range(50)]
    worker = WorkerProcess(worker_settings, tmp_path / "worker.log",
                           args=("--loglevel", "info")).start()
    api = None
    try:
        produce(gateway, [(tx_topic, t["card_token"].encode(),
                           codec.encode("transaction", t, topic=tx_topic)) for t in txs])
        verdicts = read_all(admin, topic_name(Topic.DECISIONS, admin.topic_prefix),
                            until=len(txs))
        # The API as the launcher starts it: as the api principal, its log in home/logs.
        api, _ = start_api(admin, free_port())
    finally:
        if api is not None:
            stop_process(api)
        worker.stop()
    assert len(verdicts) == len(txs)
    log = worker.log()
    assert log, "the worker wrote no log"
    api_log = (admin.home / "logs" / "demo-api.log").read_text(errors="replace")
    assert api_log, "the API wrote no log"
    broker_logs = [secured_broker.broker.log_file, secured_broker.broker.run_dir / "broker.out"]
    texts = [log, api_log,
             *(p.read_text(errors="replace") for p in broker_logs if p.exists())]
    for user, password in passwords.items():
        for text in texts:
            assert password not in text, f"{user}'s password is in a log"


def test_secured_start_is_idempotent_and_keeps_the_passwords(secured_broker: SecuredBroker) -> None:
    creds = secured_broker.credentials
    before = {p.name: p.read_text() for p in creds.iterdir()}
    status = secured_broker.broker.start(timeout_s=60)  # already up: reused, users re-asserted
    assert status.answering
    assert {p.name: p.read_text() for p in creds.iterdir()} == before


def test_the_simulator_as_a_gateway_follows_the_policy_the_worker_wrote(
        admin: Settings) -> None:
    """The gateway principal reads the routing policy (only the worker may write it) and
    produces its traffic; nothing it needs is refused."""
    codec = make_codec(None)
    population = build_population(11)
    issuer = population.busiest_issuer()
    primary = population.primary_route(issuer)
    other = next(r for r in population.route_ids if r != primary)
    topic = topic_name(Topic.ROUTING_POLICY, admin.topic_prefix)
    policy = {"issuer_id": issuer, "version": 1,
              "weights": [{"route": other, "weight": 1.0}, {"route": primary, "weight": 0.0}],
              "reason": "test: away from the primary", "experiment_id": None,
              "updated_at": datetime.now(UTC)}
    produce(admin.as_principal("worker"),
            [(topic, issuer.encode(), codec.encode("routing_policy", policy, topic=topic))])
    report = run_simulation(admin.as_principal("gateway"),
                            SimulationOptions(scenario="normal", rate=200, duration_s=2,
                                              seed=11))
    assert report.policies_applied == 1
    assert report.delivery_errors == 0 and report.transactions > 100
    assert _records(admin, Topic.TRANSACTIONS) == report.transactions


def _read_error(settings: Settings, topic: Topic) -> int | None:
    """Fetch partition 0 of a topic from its start: the error code, or None when it was read."""
    # A group the principal may use, so a refusal is about the topic.
    group = {"api": "rakshit-api-", "gateway": "rakshit-simulator-"}[settings.kafka_user]
    consumer = Consumer({**settings.kafka_config(), "group.id": f"{group}acl-test",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "log_level": 0})
    try:
        consumer.assign([TopicPartition(topic_name(topic, settings.topic_prefix), 0, 0)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is None or err.code() == KafkaError._PARTITION_EOF:
                return None
            return int(err.code())
        raise AssertionError(f"no answer reading {topic}")
    finally:
        consumer.close()


def test_each_service_reads_what_it_needs_and_nothing_else(admin: Settings) -> None:
    api = admin.as_principal("api")
    for topic in {*FEEDS, *STORED}:
        assert READ in ACLS["api"][topic], f"the API reads {topic} but may not"
        assert _read_error(api, topic) is None, topic
    # Raw transactions carry card tokens and amounts; the API shows verdicts, not inputs.
    assert _read_error(api, Topic.TRANSACTIONS) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    gateway = admin.as_principal("gateway")
    for topic in (Topic.DECISIONS, Topic.CASE_COMMANDS, Topic.CASES):
        assert _read_error(gateway, topic) == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic
    assert ACLS["gateway"] == {Topic.TRANSACTIONS: WRITE, Topic.AUTH_OUTCOMES: WRITE,
                               Topic.LABELS: WRITE, Topic.ROUTING_POLICY: READ}
