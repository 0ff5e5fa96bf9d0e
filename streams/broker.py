"""Which Kafka the commands talk to: the embedded broker, or the cluster the environment names."""

from __future__ import annotations

from infra.kafka.launcher import BrokerError, EmbeddedBroker, answers
from streams.config import Settings


def embedded_broker(settings: Settings) -> EmbeddedBroker:
    """The embedded broker these settings name; with RAKSHIT_KAFKA_AUTH=scram it listens with
    SASL/SCRAM only and generates the principals' password files in settings.credentials_dir."""
    return EmbeddedBroker(settings.home, settings.kafka_version, settings.broker_port,
                          settings.controller_port, auth=settings.kafka_auth,
                          credentials_dir=settings.credentials_dir)


def ensure_broker(settings: Settings) -> bool:
    """Make sure a broker answers; returns True when this call started the embedded one.
    With authentication on and the admin principal, the run's ACLs are granted too."""
    if not settings.embedded:
        if not answers(settings.bootstrap_servers, 10.0, settings.kafka_config()):
            raise BrokerError(f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} does not "
                              "answer a metadata request")
        return False
    broker = embedded_broker(settings)
    was_up = broker.status().answering
    broker.start()
    if settings.kafka_secured and settings.kafka_user == "admin":
        from streams.admin import ensure_acls

        ensure_acls(settings)
    return not was_up
