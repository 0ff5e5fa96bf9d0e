"""Settings for Kafka authentication, without a broker: what each client is configured with."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from infra.kafka.launcher import PRINCIPALS, ensure_credentials
from streams.config import Settings


def test_without_auth_the_config_is_the_bootstrap_alone() -> None:
    settings = replace(Settings(), kafka_auth="none")
    assert settings.kafka_config() == {"bootstrap.servers": settings.bootstrap_servers}


def test_scram_config_names_the_principal_and_reads_its_file(tmp_path: Path) -> None:
    files = ensure_credentials(tmp_path / "creds")
    settings = Settings(kafka_auth="scram", kafka_credentials_dir=tmp_path / "creds")
    config = settings.as_principal("gateway").kafka_config()
    assert config["security.protocol"] == "SASL_PLAINTEXT"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "gateway"
    assert config["sasl.password"] == files["gateway"].read_text().strip()
    assert stat.S_IMODE((tmp_path / "creds").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files.values())
    assert set(files) == set(PRINCIPALS)
    # Generated once: a second call keeps every password.
    again = ensure_credentials(tmp_path / "creds")
    assert {u: f.read_text() for u, f in again.items()} == \
        {u: f.read_text() for u, f in files.items()}


def test_a_missing_password_file_says_where_it_looked(tmp_path: Path) -> None:
    settings = Settings(kafka_auth="scram", kafka_credentials_dir=tmp_path)
    with pytest.raises(RuntimeError, match=r"worker\.password"):
        settings.as_principal("worker").kafka_config()


def test_auth_settings_survive_the_trip_to_a_child_process(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    settings = Settings(kafka_auth="scram", kafka_user="api",
                        kafka_credentials_dir=tmp_path / "creds",
                        kafka_password_file=tmp_path / "api.pw")
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    child = Settings.from_env()
    assert (child.kafka_auth, child.kafka_user) == ("scram", "api")
    assert child.credentials_dir == tmp_path / "creds"
    assert child.password_file == tmp_path / "api.pw"
    monkeypatch.setenv("RAKSHIT_KAFKA_AUTH", "sometimes")
    with pytest.raises(ValueError, match="RAKSHIT_KAFKA_AUTH"):
        Settings.from_env()


def test_authentication_is_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAKSHIT_KAFKA_AUTH", raising=False)
    monkeypatch.delenv("RAKSHIT_KAFKA_USER", raising=False)
    assert Settings().kafka_auth == Settings.from_env().kafka_auth == "scram"
    assert Settings.from_env().kafka_user == "admin"  # the operator; services get their own
    monkeypatch.setenv("RAKSHIT_KAFKA_AUTH", "none")  # the documented opt-out
    assert not Settings.from_env().kafka_secured


def test_each_service_runs_as_its_own_principal(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """The launcher's one mapping (streams.launcher.as_service), which start_worker, start_api,
    the demo's and the benchmarks' traffic and `rakshit worker/api/simulate/replay` use."""
    from streams.cli import _service
    from streams.launcher import SERVICE_PRINCIPALS, as_service

    operator = Settings(kafka_auth="scram", kafka_credentials_dir=tmp_path,
                        kafka_password_file=tmp_path / "admin.password")
    for service, principal in SERVICE_PRINCIPALS.items():
        settings = as_service(operator, service)
        assert settings.kafka_user == principal
        assert settings.password_file == tmp_path / f"{principal}.password"
        assert "RAKSHIT_KAFKA_PASSWORD_FILE" not in settings.to_env()  # the dir, not a password
    # Settings that name another principal already are kept; without auth nothing changes.
    worker = operator.as_principal("worker")
    assert as_service(worker, "api") is worker
    plain = replace(operator, kafka_auth="none")
    assert as_service(plain, "worker") is plain
    # By hand: RAKSHIT_KAFKA_USER, when set, says who a command runs as.
    monkeypatch.delenv("RAKSHIT_KAFKA_USER", raising=False)
    assert _service(operator, "gateway").kafka_user == "gateway"
    monkeypatch.setenv("RAKSHIT_KAFKA_USER", "admin")
    assert _service(operator, "gateway") is operator
