"""Which Kafka the commands talk to: the embedded broker, or the cluster the environment names."""

from __future__ import annotations

from infra.kafka.launcher import ADMIN_USER, BrokerError, EmbeddedBroker, answers
from streams.config import Settings


def embedded_broker(settings: Settings) -> EmbeddedBroker:
    """The embedded broker these settings name; with RAKSHIT_KAFKA_AUTH=scram it listens with
    SASL/SCRAM only and generates the principals' password files in settings.credentials_dir."""
    return EmbeddedBroker(settings.home, settings.kafka_version, settings.broker_port,
                          settings.controller_port, auth=settings.kafka_auth,
                          credentials_dir=settings.credentials_dir)


def ensure_broker(settings: Settings, with_parent: bool = False) -> bool:
    """Make sure a broker answers; returns True when this call started the embedded one
    (``with_parent``: one that stops when this process goes, however it goes).
    With authentication on and the admin principal, the run's ACLs are granted too. A service
    principal (worker, api, gateway) only joins a broker: managing the embedded one takes the
    broker's own password, which is the operator's to use."""
    service = settings.kafka_secured and settings.kafka_user != ADMIN_USER
    if not settings.embedded or service:
        if not answers(settings.bootstrap_servers, 10.0, settings.kafka_config()):
            who = (f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}" if not settings.embedded
                   else f"the broker at {settings.bootstrap_servers}")
            hint = (f" to {settings.kafka_user}'s login (is it started? `rakshit broker start` "
                    "starts it as the operator)" if service else "")
            raise BrokerError(f"{who} does not answer a metadata request{hint}")
        return False
    broker = embedded_broker(settings)
    was_up = broker.status().answering
    broker.start(with_parent=with_parent)
    if settings.kafka_secured and settings.kafka_user == "admin":
        from streams.admin import ensure_acls

        ensure_acls(settings)
    return not was_up
