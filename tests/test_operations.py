"""What operators and gateways touch, against the real broker: the launcher, topics, tail, and the
simulator following the routing policy on its topic (the loop the Pilot will close)."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource

from infra.kafka.launcher import EmbeddedBroker, answers
from schemas.codec import make_codec
from streams.admin import admin_client, describe_topics, ensure_topics, free_port
from streams.config import Settings
from streams.simulator.population import build_population
from streams.simulator.producer import SimulationOptions, run_simulation
from streams.tools.tail import tail
from streams.topics import TOPICS, Topic
from tests.kafka_helpers import name, produce, read_all

pytestmark = pytest.mark.kafka


def test_embedded_broker_start_is_idempotent_and_stop_is_clean(kafka_bootstrap: str,
                                                               tmp_path: Path) -> None:
    # kafka_bootstrap first: the session broker has already resolved the jars into the cache.
    defaults = Settings.from_env()
    home = tmp_path / "home"
    (home / "kafka").mkdir(parents=True)
    shutil.copytree(defaults.home / "kafka" / defaults.kafka_version,
                    home / "kafka" / defaults.kafka_version)
    # Free ports: a fixed one may be taken by another run's broker on a shared machine, and then
    # start() would rightly reuse that broker instead of starting ours.
    port, controller = free_port(), free_port()
    broker = EmbeddedBroker(home, defaults.kafka_version, port=port, controller_port=controller)
    try:
        first = broker.start()
        again = broker.start()
        assert first.answering and again.answering
        assert first.pid is not None and first.process_alive
        assert first.pid == again.pid  # reused, not started twice
        assert broker.bootstrap == f"127.0.0.1:{port}"
        assert f"listeners=PLAINTEXT://127.0.0.1:{port}" in (broker.run_dir /
                                                            "server.properties").read_text()
    finally:
        assert broker.stop() is True
    assert not answers(broker.bootstrap, 1.0)
    assert broker.status().process_alive is False
    assert broker.stop() is False  # nothing left to stop


def test_topics_are_created_once_with_their_declared_settings(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    first = ensure_topics(settings)
    assert set(first.values()) == {"created"} and len(first) == len(TOPICS)
    assert set(ensure_topics(settings).values()) == {"exists"}
    infos = {i.name: i for i in describe_topics(settings)}
    assert infos[name(settings, Topic.ROUTING_POLICY)].partitions == 1
    assert infos[name(settings, Topic.TRANSACTIONS)].partitions == settings.default_partitions
    admin = admin_client(settings)  # kept: the futures die with the client
    resource = ConfigResource("topic", name(settings, Topic.ROUTING_POLICY))
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["cleanup.policy"].value == "compact"
    resource = ConfigResource("topic", name(settings, Topic.DEAD_LETTERS))
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["cleanup.policy"].value == "delete"
    assert int(configs["max.message.bytes"].value) >= 2 * 1024 * 1024


def test_tail_prints_decoded_events(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    ensure_topics(settings)
    codec = make_codec(None)
    topic = name(settings, Topic.ROUTING_POLICY)
    policies = [{"issuer_id": f"iss-{i}", "version": i, "weights": [{"route": "r1", "weight": 1.0}],
                 "reason": "test", "experiment_id": None, "updated_at": datetime.now(UTC)}
                for i in range(3)]
    produce(settings, [(topic, p["issuer_id"].encode(), codec.encode("routing_policy", p,
                                                                     topic=topic))
                       for p in policies])
    out = io.StringIO()
    assert tail(settings, "routing-policy", True, 3, True, out) == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [x["value"]["issuer_id"] for x in lines] == ["iss-0", "iss-1", "iss-2"]
    assert lines[0]["schema"] == "routing_policy" and lines[0]["key"] == "iss-0"
    human = io.StringIO()
    tail(settings, "routing-policy", True, 1, False, human)
    assert human.getvalue().startswith(f"{topic}[0]@0 key=iss-0 ")


def test_simulator_routes_by_the_policy_on_the_topic(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    ensure_topics(settings)
    codec = make_codec(None)
    population = build_population(11)
    issuer = population.busiest_issuer()
    primary = population.primary_route(issuer)
    other = next(r for r in population.route_ids if r != primary)
    topic = name(settings, Topic.ROUTING_POLICY)
    policy = {"issuer_id": issuer, "version": 1,
              "weights": [{"route": other, "weight": 1.0}, {"route": primary, "weight": 0.0}],
              "reason": "test: all traffic away from the primary", "experiment_id": None,
              "updated_at": datetime.now(UTC)}
    produce(settings, [(topic, issuer.encode(), codec.encode("routing_policy", policy,
                                                             topic=topic))])
    report = run_simulation(settings, SimulationOptions(scenario="normal", rate=300,
                                                        duration_s=3, seed=11))
    assert report.policies_applied == 1 and report.delivery_errors == 0
    outcomes = read_all(settings, name(settings, Topic.AUTH_OUTCOMES), until=report.outcomes)
    assert len(outcomes) == report.outcomes == report.transactions > 500
    routes = Counter()
    for r in outcomes:
        rec = codec.decode(r.value, topic=r.topic, expect="authorization_outcome").record
        if rec["issuer_id"] == issuer:
            routes[rec["route"]] += 1
    assert routes[other] > 50 and routes[primary] == 0
