"""The one configuration object.

Every command reads its settings from here, and every setting comes from an environment variable
with a safe default, so the same code runs against the embedded broker, a docker-compose cluster
or a managed one without edits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# The public fraud data set lives beside the repository and is read from there, never copied in.
HANDBOOK_DIR = Path(os.environ.get("RAKSHIT_HANDBOOK_DIR")
                    or REPO_ROOT.parent / "shared" / "data" / "handbook")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Build with :meth:`from_env`; pass explicitly, never read globals."""

    # Kafka. When bootstrap_servers is None the project runs its own embedded broker.
    external_bootstrap: str | None = None
    broker_port: int = 9092
    controller_port: int = 9093
    kafka_version: str = "4.3.1"
    home: Path = field(default_factory=lambda: REPO_ROOT / ".rakshit")
    # The model registry; None is home/models. The demo keeps its own (a champion trained on
    # the simulator's traffic) so the one serving handbook replays stays as it is.
    models_dir: Path | None = None
    schema_registry_url: str | None = None
    topic_prefix: str = ""
    default_partitions: int = 6
    # Kafka authentication: "scram" by default (SASL/SCRAM-SHA-512 with per-principal ACLs, see
    # streams.admin.ACLS and README "Threat model"), or "none" to opt out (plaintext: anyone who
    # reaches the broker may write anything). Each process names its principal
    # (RAKSHIT_KAFKA_USER: admin, worker, api or gateway; the launcher starts each service as
    # its own) and reads its password from a 0600 file (RAKSHIT_KAFKA_PASSWORD_FILE, default
    # <credentials dir>/<user>.password); the embedded broker generates every principal's file
    # once, at its first start.
    kafka_auth: str = "scram"
    kafka_user: str = "admin"
    kafka_password_file: Path | None = None
    kafka_credentials_dir: Path | None = None

    # Worker.
    app_id: str = "rakshit-worker"
    processing_guarantee: str = "at_least_once"
    metrics_port: int = 9108
    metrics_addr: str = "127.0.0.1"  # docker-compose sets 0.0.0.0 so Prometheus can scrape
    commit_interval_s: float = 1.0
    # Unresolved cases the analysts can work without delay: the review threshold rises as the
    # case book's queue fills past 70% of it (agents.fraud.decision). 0: no queue adjustment.
    review_capacity: int = 500
    # Labels a partition's online learner must have seen before the blend gives it any weight
    # (scoring.blend: full weight at 25 times this).
    online_min_labels: int = 200

    # The API's durable store (streams.store): None is SQLite under home; postgresql://... for
    # PostgreSQL.
    database_url: str | None = None

    # Input validation: what counts as absurd.
    max_record_bytes: int = 64 * 1024
    max_amount: float = 1_000_000.0
    max_future_skew_s: float = 600.0

    @property
    def bootstrap_servers(self) -> str:
        return self.external_bootstrap or f"127.0.0.1:{self.broker_port}"

    @property
    def kafka_secured(self) -> bool:
        return self.kafka_auth == "scram"

    @property
    def credentials_dir(self) -> Path:
        """Where the embedded broker keeps one password file per principal (0700, files 0600)."""
        return self.kafka_credentials_dir or self.home / "kafka-credentials"

    @property
    def password_file(self) -> Path:
        return self.kafka_password_file or self.credentials_dir / f"{self.kafka_user}.password"

    def as_principal(self, user: str) -> Settings:
        """These settings acting as another Kafka principal (its own password file)."""
        return replace(self, kafka_user=user, kafka_password_file=None)

    def kafka_password(self) -> str:
        """This principal's password, read from its file on each call; never logged."""
        try:
            return self.password_file.read_text().strip()
        except FileNotFoundError:
            raise RuntimeError(f"RAKSHIT_KAFKA_AUTH=scram but {self.password_file} does not exist "
                               "(the embedded broker writes it at its first start)") from None

    def kafka_config(self) -> dict[str, Any]:
        """The librdkafka settings every confluent-kafka client starts from: the bootstrap
        servers and, with authentication on, this principal's SASL/SCRAM login. Callers add
        their own keys: ``{**settings.kafka_config(), "group.id": ...}``."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        if self.kafka_secured:
            config.update({"security.protocol": "SASL_PLAINTEXT",
                           "sasl.mechanism": "SCRAM-SHA-512",
                           "sasl.username": self.kafka_user,
                           "sasl.password": self.kafka_password()})
        return config

    @property
    def routing_baseline(self) -> Path:
        """The gateways' static route weights (JSON: issuer -> route -> weight), written by the
        simulator and the demo; the Pilot shifts traffic from these and restores to them."""
        return self.home / "routing-baseline.json"

    @property
    def models(self) -> Path:
        """The model registry's root (RAKSHIT_MODELS_DIR, default home/models)."""
        return self.models_dir or self.home / "models"

    @property
    def features_cache(self) -> Path:
        """Where offline feature builds are cached (scoring.dataset keys them by content)."""
        return self.home / "features"

    @property
    def store_url(self) -> str:
        """Where the API keeps verdicts, cases and disputes for lookups (RAKSHIT_DATABASE_URL)."""
        return self.database_url or f"sqlite:///{self.home / 'store.sqlite3'}"

    @property
    def embedded(self) -> bool:
        return self.external_bootstrap is None

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` rebuild these settings in a child process."""
        env = {
            "RAKSHIT_BROKER_PORT": str(self.broker_port),
            "RAKSHIT_CONTROLLER_PORT": str(self.controller_port),
            "RAKSHIT_KAFKA_VERSION": self.kafka_version,
            "RAKSHIT_HOME": str(self.home),
            "RAKSHIT_TOPIC_PREFIX": self.topic_prefix,
            "RAKSHIT_PARTITIONS": str(self.default_partitions),
            "RAKSHIT_APP_ID": self.app_id,
            "RAKSHIT_PROCESSING_GUARANTEE": self.processing_guarantee,
            "RAKSHIT_METRICS_PORT": str(self.metrics_port),
            "RAKSHIT_METRICS_ADDR": self.metrics_addr,
            "RAKSHIT_COMMIT_INTERVAL_S": str(self.commit_interval_s),
            "RAKSHIT_REVIEW_CAPACITY": str(self.review_capacity),
            "RAKSHIT_ONLINE_MIN_LABELS": str(self.online_min_labels),
            "RAKSHIT_MAX_RECORD_BYTES": str(self.max_record_bytes),
            "RAKSHIT_MAX_AMOUNT": str(self.max_amount),
            "RAKSHIT_MAX_FUTURE_SKEW_S": str(self.max_future_skew_s),
            "RAKSHIT_KAFKA_AUTH": self.kafka_auth,
            "RAKSHIT_KAFKA_USER": self.kafka_user,
            "RAKSHIT_KAFKA_CREDENTIALS_DIR": str(self.credentials_dir),
        }
        if self.kafka_password_file:
            env["RAKSHIT_KAFKA_PASSWORD_FILE"] = str(self.kafka_password_file)
        if self.external_bootstrap:
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.external_bootstrap
        if self.schema_registry_url:
            env["SCHEMA_REGISTRY_URL"] = self.schema_registry_url
        if self.database_url:
            env["RAKSHIT_DATABASE_URL"] = self.database_url
        if self.models_dir:
            env["RAKSHIT_MODELS_DIR"] = str(self.models_dir)
        return env

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(_env("RAKSHIT_HOME", str(REPO_ROOT / ".rakshit")))
        auth = _env("RAKSHIT_KAFKA_AUTH", "scram").lower()
        if auth not in ("none", "scram"):
            raise ValueError(f"RAKSHIT_KAFKA_AUTH must be none or scram, not {auth!r}")
        return cls(
            external_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            broker_port=int(_env("RAKSHIT_BROKER_PORT", "9092")),
            controller_port=int(_env("RAKSHIT_CONTROLLER_PORT", "9093")),
            kafka_version=_env("RAKSHIT_KAFKA_VERSION", "4.3.1"),
            home=home,
            models_dir=Path(os.environ["RAKSHIT_MODELS_DIR"])
            if os.environ.get("RAKSHIT_MODELS_DIR") else None,
            schema_registry_url=os.environ.get("SCHEMA_REGISTRY_URL") or None,
            database_url=os.environ.get("RAKSHIT_DATABASE_URL") or None,
            topic_prefix=_env("RAKSHIT_TOPIC_PREFIX", ""),
            default_partitions=int(_env("RAKSHIT_PARTITIONS", "6")),
            app_id=_env("RAKSHIT_APP_ID", "rakshit-worker"),
            processing_guarantee=_env("RAKSHIT_PROCESSING_GUARANTEE", "at_least_once"),
            metrics_port=int(_env("RAKSHIT_METRICS_PORT", "9108")),
            metrics_addr=_env("RAKSHIT_METRICS_ADDR", "127.0.0.1"),
            commit_interval_s=float(_env("RAKSHIT_COMMIT_INTERVAL_S", "1.0")),
            review_capacity=int(_env("RAKSHIT_REVIEW_CAPACITY", "500")),
            online_min_labels=int(_env("RAKSHIT_ONLINE_MIN_LABELS", "200")),
            max_record_bytes=int(_env("RAKSHIT_MAX_RECORD_BYTES", str(64 * 1024))),
            max_amount=float(_env("RAKSHIT_MAX_AMOUNT", "1000000")),
            max_future_skew_s=float(_env("RAKSHIT_MAX_FUTURE_SKEW_S", "600")),
            kafka_auth=auth,
            kafka_user=_env("RAKSHIT_KAFKA_USER", "admin"),
            kafka_password_file=Path(os.environ["RAKSHIT_KAFKA_PASSWORD_FILE"])
            if os.environ.get("RAKSHIT_KAFKA_PASSWORD_FILE") else None,
            # Resolved here, not from a later home: a test's own home still finds the broker's.
            kafka_credentials_dir=Path(_env("RAKSHIT_KAFKA_CREDENTIALS_DIR",
                                            str(home / "kafka-credentials"))),
        )
