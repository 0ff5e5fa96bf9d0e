"""Shared fixtures. Integration tests get a real Kafka broker, started once per session.

Which broker, in order: the cluster named by KAFKA_BOOTSTRAP_SERVERS; testcontainers' Kafka module
when a Docker engine answers; otherwise the project's own embedded broker (Maven Central jars) on
127.0.0.1. The choice is printed, so a CI log says what the tests ran against.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from infra.kafka.launcher import EmbeddedBroker
from streams.admin import free_port as admin_free_port
from streams.config import Settings

if TYPE_CHECKING:
    import lightgbm as lgb

    from agents.fraud.risk_scorer import BoosterScorer

# The machine is shared and noisy: judge properties by their examples, not by how fast a loaded
# core draws them.
settings.register_profile("shared-machine", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-machine")



def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        print(f"\n[kafka] using KAFKA_BOOTSTRAP_SERVERS={external}")
        yield external
        return
    if _docker_engine():
        from testcontainers.kafka import KafkaContainer

        # testcontainers' Kafka has no SASL listener: these tests run without authentication
        # (tests/test_kafka_acl.py starts its own secured embedded broker either way).
        os.environ["RAKSHIT_KAFKA_AUTH"] = "none"

        with KafkaContainer("apache/kafka:4.3.1").with_kraft() as container:
            bootstrap = container.get_bootstrap_server()
            print(f"\n[kafka] testcontainers apache/kafka:4.3.1 at {bootstrap}")
            yield bootstrap
        return
    print("\n[kafka] no KAFKA_BOOTSTRAP_SERVERS and no Docker engine: starting the embedded "
          "broker from Maven Central jars")
    defaults = Settings.from_env()
    port = int(os.environ.get("RAKSHIT_TEST_BROKER_PORT", "29092"))
    broker = EmbeddedBroker(defaults.home, defaults.kafka_version, port, port + 1,
                            auth=defaults.kafka_auth, credentials_dir=defaults.credentials_dir)
    shutil.rmtree(broker.run_dir, ignore_errors=True)  # a fresh log dir: no state between runs
    status = broker.start(timeout_s=180)
    print(f"[kafka] {status.describe()}")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def make_settings(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test: its own topic prefix and app id, so tests share the broker safely."""

    def factory(**overrides: object) -> Settings:
        tag = uuid.uuid4().hex[:8]
        base = replace(Settings.from_env(), external_bootstrap=kafka_bootstrap,
                       topic_prefix=f"t{tag}.", app_id=f"rakshit-test-{tag}",
                       home=tmp_path / "home", metrics_port=0, default_partitions=3)
        return replace(base, **overrides)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def free_port() -> int:
    return admin_free_port()


# The fraud agents' model (tests/fraud_helpers.py), trained once per test module that asks for it;
# imported lazily, so tests without a model do not load LightGBM.

@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    from tests.fraud_helpers import train

    return train()


@pytest.fixture(scope="module")
def scorer(booster: lgb.Booster) -> BoosterScorer:
    from agents.fraud.risk_scorer import BoosterScorer

    return BoosterScorer(booster, "gbm-test-1")


@pytest.fixture(scope="module")
def pool() -> list[dict[str, float]]:
    from tests.fraud_helpers import synthetic_pool

    return synthetic_pool()
