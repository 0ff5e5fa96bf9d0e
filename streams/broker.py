"""Which Kafka the commands talk to: the embedded broker, or the cluster the environment names."""

from __future__ import annotations

from infra.kafka.launcher import BrokerError, EmbeddedBroker, answers
from streams.config import Settings


def embedded_broker(settings: Settings) -> EmbeddedBroker:
    return EmbeddedBroker(settings.home, settings.kafka_version, settings.broker_port,
                          settings.controller_port)


def ensure_broker(settings: Settings) -> bool:
    """Make sure a broker answers; returns True when this call started the embedded one."""
    if not settings.embedded:
        if not answers(settings.bootstrap_servers, 10.0):
            raise BrokerError(f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} does not "
                              "answer a metadata request")
        return False
    broker = embedded_broker(settings)
    was_up = answers(broker.bootstrap, 1.0)
    broker.start()
    return not was_up
