"""Structural checks of the docker-compose stack, its Dockerfile and its monitoring config.

Nothing here needs a Docker engine: the files are parsed and cross-checked against each other and
against the real `rakshit` CLI parser, so a typo in a command, a listener, a port binding, a
scrape target or a PromQL metric name fails here rather than at `docker compose up`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "infra" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = GRAFANA / "dashboards" / "rakshit.json"

PROJECT_SERVICES = {"credentials", "topics", "worker", "simulator", "api"}
# The project services that talk to Kafka, and the principal each logs in as.
PRINCIPALS = {"topics": "admin", "worker": "worker", "api": "api", "simulator": "gateway"}
EXPECTED_SERVICES = {"kafka", *PROJECT_SERVICES, "postgres", "prometheus", "grafana"}

# Every metric the worker exports (streams/worker/metrics.py), as Prometheus names.
HISTOGRAM = "rakshit_verdict_latency_seconds"
def _worker_metrics() -> set[str]:
    """Every series name streams.worker.metrics exposes (a counter's gets its _total suffix)."""
    from prometheus_client.metrics import MetricWrapperBase

    from streams.worker import metrics

    return {obj._name + ("_total" if obj._type == "counter" else "")
            for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)}


WORKER_METRICS = _worker_metrics()
def _histograms() -> set[str]:
    from prometheus_client.metrics import Histogram

    from streams.worker import metrics

    return {obj._name for obj in vars(metrics).values() if isinstance(obj, Histogram)}


HISTOGRAM_SERIES = {name + suffix: name for name in _histograms()
                    for suffix in ("_bucket", "_sum", "_count")}

# Words in a PromQL expression that are not metric names.
PROMQL_WORDS = {
    # aggregations and their modifiers
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio", "by", "without",
    # binary operators and vector matching
    "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool", "atan2",
    "offset",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_quantile", "histogram_count", "histogram_sum", "histogram_fraction",
    "histogram_avg", "holt_winters", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate",
    "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp",
    "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "quantile_over_time", "stddev_over_time", "stdvar_over_time",
    "last_over_time", "present_over_time",
    # literals
    "inf", "nan",
}


# ---------------------------------------------------------------------------------------------
# loading


def _load_yaml(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose.get("services")
    assert isinstance(svcs, dict) and svcs, "docker-compose.yml has no services"
    return svcs


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    assert DASHBOARD.is_file(), f"{DASHBOARD.relative_to(ROOT)} is missing"
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either compose syntax (mapping or KEY=VALUE list)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) for item in raw)
        return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}; the short list syntax means service_started."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def _is_project_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if build is None:
        return False
    context = build if isinstance(build, str) else build.get("context", ".")
    return (COMPOSE.parent / context).resolve() == ROOT


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    out: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        match = re.fullmatch(r"([A-Za-z0-9_]+)://([^:]*):(\d+)", item)
        assert match, f"unparseable listener {item!r}"
        out[match.group(1)] = (match.group(2), int(match.group(3)))
    return out


def _volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) for every volume; short 'src:dst[:mode]' or long syntax."""
    mounts = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            assert len(parts) >= 2, f"anonymous volume {vol!r}"
            mounts.append((parts[0], parts[1]))
        else:
            mounts.append((str(vol.get("source", "")), str(vol["target"])))
    return mounts


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path, for bind mounts (sources that are paths)."""
    return {target: (COMPOSE.parent / source).resolve()
            for source, target in _volume_mounts(service)
            if source.startswith((".", "/"))}


# ---------------------------------------------------------------------------------------------
# compose: services and commands


def test_compose_parses_and_has_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= EXPECTED_SERVICES, f"missing: {EXPECTED_SERVICES - set(services)}"


def test_project_services_use_the_project_image(services: dict[str, dict[str, Any]]) -> None:
    project = {name for name, svc in services.items() if _is_project_image(svc)}
    assert project == PROJECT_SERVICES
    images = {services[name].get("image") for name in project}
    assert len(images) == 1, f"project services should share one image tag, got {images}"


def _cli_parser() -> Any:
    from streams.cli import build_parser

    return build_parser()


@pytest.mark.parametrize("name", sorted(PROJECT_SERVICES))
def test_project_command_is_a_valid_rakshit_invocation(
        services: dict[str, dict[str, Any]], name: str) -> None:
    cmd = services[name].get("command")
    assert isinstance(cmd, list), f"{name}: command must be a list, got {cmd!r}"
    assert all(isinstance(arg, str) for arg in cmd), f"{name}: every argument must be a string"
    assert cmd and cmd[0] == "rakshit", f"{name}: command must start with 'rakshit': {cmd}"
    assert "entrypoint" not in services[name], f"{name}: the command names the program itself"
    parser = _cli_parser()
    try:
        parser.parse_args(cmd[1:])
    except SystemExit as exc:  # argparse exits on a bad argument
        pytest.fail(f"{name}: `{' '.join(cmd)}` is rejected by streams.cli (exit {exc.code})")


def test_project_commands_are_the_intended_ones(services: dict[str, dict[str, Any]]) -> None:
    assert services["credentials"]["command"][:2] == ["rakshit", "credentials"]
    assert services["topics"]["command"] == ["rakshit", "topics", "--create", "--users"]
    assert services["worker"]["command"] == ["rakshit", "worker"]
    sim = services["simulator"]["command"]
    assert sim[:2] == ["rakshit", "simulate"]
    opts = dict(zip(sim[2::2], sim[3::2], strict=True))
    assert opts == {"--scenario": "normal", "--rate": "50", "--duration": "0"}


def test_simulator_runs_until_stopped(services: dict[str, dict[str, Any]]) -> None:
    parser = _cli_parser()
    args = parser.parse_args(services["simulator"]["command"][1:])
    assert args.duration == 0
    assert args.scenario == "normal"
    assert args.rate == 50


def test_project_services_use_the_internal_listener(services: dict[str, dict[str, Any]]) -> None:
    advertised = _listeners(_env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"])
    internal = {f"{host}:{port}" for host, port in advertised.values() if host == "kafka"}
    for name in PRINCIPALS:
        bootstrap = _env(services[name]).get("KAFKA_BOOTSTRAP_SERVERS")
        assert bootstrap == "kafka:9092", f"{name}: KAFKA_BOOTSTRAP_SERVERS={bootstrap!r}"
        assert bootstrap in internal, f"{name}: {bootstrap} is not an advertised listener"


def test_worker_serves_metrics_to_other_containers(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    env = _env(worker)
    assert env.get("RAKSHIT_METRICS_PORT") == "9108"
    # streams.config defaults the metrics address to 127.0.0.1, unreachable from Prometheus.
    assert env.get("RAKSHIT_METRICS_ADDR") == "0.0.0.0"
    assert "9108" in {str(p) for p in worker.get("expose") or []}


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for dep in _depends_on(svc):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert _depends_on(services["kafka"]) == {"credentials": "service_completed_successfully"}
    assert services["credentials"].get("restart", "no") == "no", "credentials is a one-shot"
    assert _depends_on(services["topics"]) == {"kafka": "service_healthy"}
    assert _depends_on(services["worker"])["topics"] == "service_completed_successfully"
    assert _depends_on(services["simulator"])["worker"] == "service_started"
    assert services["topics"].get("restart", "no") == "no", "topics is a one-shot"


# ---------------------------------------------------------------------------------------------
# compose: kafka


def test_kafka_is_a_single_node_kraft_broker_and_controller(
        services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    # The same Kafka release the embedded broker and the tests run.
    from streams.config import Settings

    assert kafka["image"] == f"apache/kafka:{Settings().kafka_version}"
    env = _env(kafka)

    node_id = env["KAFKA_NODE_ID"]
    assert node_id == "1"
    roles = {r.strip() for r in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert roles == {"broker", "controller"}

    voters = [v.strip() for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",") if v.strip()]
    assert len(voters) == 1, f"single node: one voter, got {voters}"
    match = re.fullmatch(r"(\d+)@([^:]+):(\d+)", voters[0])
    assert match, f"unparseable quorum voter {voters[0]!r}"
    voter_id, voter_host, voter_port = match.group(1), match.group(2), int(match.group(3))
    assert voter_id == node_id
    assert voter_host in {"kafka", kafka.get("hostname")}

    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":", 1)
                     for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller_names = {n.strip() for n in env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")}

    assert controller_names == {"CONTROLLER"}
    assert controller_names <= set(listeners)
    assert listeners["CONTROLLER"][1] == voter_port, "voter port must be the controller listener"
    assert not controller_names & set(advertised), "the controller listener must not be advertised"
    assert set(listeners) <= set(protocols), "every listener needs a security protocol"
    assert set(advertised) <= set(listeners), "every advertised listener must be a listener"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in set(advertised) - controller_names

    # Containers use kafka:9092, the host localhost:29092.
    assert ("kafka", 9092) in advertised.values()
    assert ("localhost", 29092) in advertised.values()
    assert listeners["CLIENT"][1] == 9092
    assert listeners["CLIENT_HOST"][1] == 29092

    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env.get(key) == "1", f"{key} must be 1 on a single node"
    assert env.get("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS") == "0"

    # The image's start script requires a cluster id in KRaft mode: 16 bytes, base64url.
    cluster_id = env["CLUSTER_ID"]
    try:
        raw = base64.urlsafe_b64decode(cluster_id + "==")
    except (binascii.Error, ValueError):
        pytest.fail(f"CLUSTER_ID {cluster_id!r} is not base64url")
    assert len(cluster_id) == 22 and len(raw) == 16, f"CLUSTER_ID {cluster_id!r}"


def _protocols(env: dict[str, str]) -> dict[str, str]:
    pairs = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    return dict(item.split(":", 1) for item in pairs)


def _subpath_mounts(service: dict[str, Any]) -> dict[str, tuple[str, str, bool]]:
    """target -> (volume, subpath, read_only) for long-syntax volume mounts with a subpath."""
    return {str(v["target"]): (str(v["source"]), str((v.get("volume") or {}).get("subpath")),
                               bool(v.get("read_only")))
            for v in service.get("volumes") or []
            if isinstance(v, dict) and (v.get("volume") or {}).get("subpath")}


def test_kafka_takes_sasl_logins_only_and_enforces_the_acls(
        services: dict[str, dict[str, Any]]) -> None:
    """The same security as the embedded broker (infra/kafka/launcher.py)."""
    from infra.kafka.launcher import ADMIN_USER, BROKER_USER

    env = _env(services["kafka"])
    listeners = _listeners(env["KAFKA_LISTENERS"])
    assert {_protocols(env)[name] for name in listeners} == {"SASL_PLAINTEXT"}
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer")
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert set(env["KAFKA_SUPER_USERS"].split(";")) == {f"User:{BROKER_USER}",
                                                        f"User:{ADMIN_USER}"}
    # Clients log in with SCRAM on the listeners they are given; PLAIN is the broker's own.
    assert "SCRAM-SHA-512" in env["KAFKA_LISTENER_NAME_CLIENT_SASL_ENABLED_MECHANISMS"]
    assert env["KAFKA_LISTENER_NAME_CLIENT__HOST_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_LISTENER_NAME_CONTROLLER_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    # No password in this file: the broker's is read from its own volume subpath.
    for key, value in env.items():
        if key.endswith("PLAIN_SASL_JAAS_CONFIG"):
            # "$$" is compose's escape: Kafka sees ${file:...}, its FileConfigProvider's syntax.
            assert value == "$${file:/run/rakshit-kafka/jaas.properties:plain}", key
    assert env["KAFKA_CONFIG_PROVIDERS_FILE_CLASS"].endswith("FileConfigProvider")
    assert _subpath_mounts(services["kafka"])["/run/rakshit-kafka"] == (
        "kafka-credentials", "broker", True)
    check = " ".join(services["kafka"]["healthcheck"]["test"])
    assert "--command-config /run/rakshit-kafka/client.properties" in check


def test_each_service_logs_in_as_its_own_principal_and_only_set_up_is_admin(
        services: dict[str, dict[str, Any]]) -> None:
    from streams.admin import ACLS
    from streams.launcher import SERVICE_PRINCIPALS

    for name, principal in PRINCIPALS.items():
        env = _env(services[name])
        assert env.get("RAKSHIT_KAFKA_AUTH") == "scram", name
        assert env.get("RAKSHIT_KAFKA_USER") == principal, name
    admins = {name for name, svc in services.items()
              if _env(svc).get("RAKSHIT_KAFKA_USER", "admin" if name in PRINCIPALS else None)
              == "admin"}
    assert admins == {"topics"}, "only the set-up step may be admin"
    assert set(PRINCIPALS.values()) - {"admin"} == set(SERVICE_PRINCIPALS.values()) == set(ACLS)
    # Each service sees its own password alone: a read-only subpath of the credentials volume.
    for name, principal in PRINCIPALS.items():
        if principal == "admin":
            continue
        env = _env(services[name])
        mounts = _subpath_mounts(services[name])
        target = env["RAKSHIT_KAFKA_PASSWORD_FILE"].rsplit("/", 1)[0]
        assert mounts[target] == ("kafka-credentials", f"services/{principal}", True), name
        whole = [dst for src, dst in _volume_mounts(services[name])
                 if src == "kafka-credentials" and dst not in mounts]
        assert not whole, f"{name} mounts every password at {whole}"
    # The set-up step reads every password file (it registers the SCRAM logins).
    topics = services["topics"]
    assert ("kafka-credentials", _env(topics)["RAKSHIT_KAFKA_CREDENTIALS_DIR"]) in \
        _volume_mounts(topics)


def test_the_credentials_step_writes_what_the_mounts_expect(tmp_path: Path) -> None:
    """`rakshit credentials` (the compose step) writes the files the containers' mounts and
    settings name, each 0600, and the broker's JAAS line carries the broker's password."""
    import stat

    from infra.kafka.launcher import compose_credentials

    written = compose_credentials(tmp_path / "creds")
    names = {str(p.relative_to(tmp_path / "creds")) for p in written}
    assert names == {"broker/jaas.properties", "broker/client.properties",
                     *(f"services/{p}/password" for p in ("worker", "api", "gateway"))}
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent
    broker = (tmp_path / "creds" / "broker.password").read_text().strip()
    jaas = (tmp_path / "creds" / "broker" / "jaas.properties").read_text()
    assert jaas.startswith("plain=") and f'password="{broker}"' in jaas
    for principal in ("worker", "api", "gateway"):
        assert (tmp_path / "creds" / "services" / principal / "password").read_text() == \
            (tmp_path / "creds" / f"{principal}.password").read_text()


def test_kafka_healthcheck_and_data_volume(compose: dict[str, Any],
                                           services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    test = kafka["healthcheck"]["test"]
    text = test if isinstance(test, str) else " ".join(test)
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in text
    assert "--bootstrap-server localhost:9092" in text

    env = _env(kafka)
    named = set(compose.get("volumes") or {})
    data_mounts = {src for src, dst in _volume_mounts(kafka) if dst == env["KAFKA_LOG_DIRS"]}
    assert data_mounts and data_mounts <= named, "Kafka's log dir must be a named volume"


def test_every_named_volume_is_declared(compose: dict[str, Any],
                                        services: dict[str, dict[str, Any]]) -> None:
    named = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for source, _ in _volume_mounts(svc):
            if not source.startswith((".", "/")):
                assert source in named, f"{name}: volume {source!r} is not declared"


# ---------------------------------------------------------------------------------------------
# compose: the API's PostgreSQL store


def test_the_api_uses_the_postgres_service_as_its_store(
        compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    from urllib.parse import urlsplit

    from streams.store import open_backend

    postgres, api = services["postgres"], services["api"]
    # The major release the store's tests run against (Debian's package: tests/pg_server.py).
    assert postgres["image"] == "postgres:15"
    db = _env(postgres)
    url = _env(api)["RAKSHIT_DATABASE_URL"]
    assert open_backend(url).name == "postgresql"
    parts = urlsplit(url)
    assert (parts.hostname, parts.port or 5432) == ("postgres", 5432)
    assert (parts.username, parts.password, parts.path.lstrip("/")) == (
        db["POSTGRES_USER"], db["POSTGRES_PASSWORD"], db["POSTGRES_DB"])
    assert _depends_on(api)["postgres"] == "service_healthy"
    check = " ".join(postgres["healthcheck"]["test"])
    assert "pg_isready" in check and db["POSTGRES_USER"] in check
    data = {src for src, dst in _volume_mounts(postgres) if dst == "/var/lib/postgresql/data"}
    assert data and data <= set(compose.get("volumes") or {}), "the data dir is a named volume"
    assert not postgres.get("ports"), "the database is reached from the compose network only"


# ---------------------------------------------------------------------------------------------
# compose: ports and mounts


def _published(port: Any) -> tuple[str | None, str]:
    """(host_ip, text) for one `ports` entry in short or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip"), json.dumps(port)
    text = str(port)
    spec = text.split("/", 1)[0]
    parts = spec.rsplit(":", 2)
    return (parts[0] if len(parts) == 3 else None), text


def test_every_published_port_binds_localhost(services: dict[str, dict[str, Any]]) -> None:
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            host_ip, text = _published(port)
            assert host_ip == "127.0.0.1", f"{name}: port {text} is not bound to 127.0.0.1"
            published += 1
    assert published >= 3  # kafka, prometheus, grafana


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    assert services["kafka"]["ports"] == ["127.0.0.1:29092:29092"]
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]


def test_bind_mount_sources_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for target, source in _bind_mounts(svc).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert ROOT in source.parents or source == ROOT, f"{name}: {source} is outside the repo"


def test_prometheus_mounts_its_config(services: dict[str, dict[str, Any]]) -> None:
    mounts = _bind_mounts(services["prometheus"])
    assert mounts.get("/etc/prometheus/prometheus.yml") == PROMETHEUS.resolve()


def test_prometheus_mounts_the_rule_files_its_config_loads(
        services: dict[str, dict[str, Any]]) -> None:
    """Each rule_files entry, resolved as Prometheus does (relative to the config's directory),
    is the same file in the container as beside the config in the repo."""
    import posixpath

    mounts = _bind_mounts(services["prometheus"])
    rule_files = _load_yaml(PROMETHEUS).get("rule_files") or []
    assert rule_files, "prometheus.yml loads no alerting rules"
    for entry in rule_files:
        in_container = posixpath.normpath(posixpath.join("/etc/prometheus", entry))
        assert mounts.get(in_container) == (PROMETHEUS.parent / entry).resolve(), entry
        assert (PROMETHEUS.parent / entry).is_file(), entry


def test_grafana_mounts_provisioning_and_dashboards(services: dict[str, dict[str, Any]]) -> None:
    mounts = _bind_mounts(services["grafana"])
    provisioning = mounts.get("/etc/grafana/provisioning")
    assert provisioning == (GRAFANA / "provisioning").resolve()
    assert (provisioning / "datasources" / DATASOURCES.name).is_file()
    assert (provisioning / "dashboards" / DASHBOARD_PROVIDERS.name).is_file()

    providers = _load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert len(providers) >= 1
    for provider in providers:
        assert provider["type"] == "file"
        path = provider["options"]["path"]
        assert path == "/var/lib/grafana/dashboards"
        assert mounts.get(path) == DASHBOARD.parent.resolve(), f"{path} is not mounted"
        assert any(mounts[path].glob("*.json")), f"no dashboards under {mounts[path]}"


def test_grafana_allows_anonymous_viewers(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["grafana"])
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED", "").lower() == "true"
    assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer"


# ---------------------------------------------------------------------------------------------
# prometheus


def test_prometheus_scrapes_the_worker_every_5s(services: dict[str, dict[str, Any]]) -> None:
    config = _load_yaml(PROMETHEUS)
    default_interval = (config.get("global") or {}).get("scrape_interval", "1m")
    jobs = [job for job in config["scrape_configs"]
            if any("worker:9108" in (sc.get("targets") or [])
                   for sc in job.get("static_configs") or [])]
    assert jobs, "no scrape job targets worker:9108"
    for job in jobs:
        assert job.get("scrape_interval", default_interval) == "5s"
        assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "9108" in {str(p) for p in services["worker"].get("expose") or []}


# ---------------------------------------------------------------------------------------------
# grafana


def test_datasource_points_at_the_prometheus_service(services: dict[str, dict[str, Any]]) -> None:
    datasources = _load_yaml(DATASOURCES)["datasources"]
    prom = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prom) == 1
    assert prom[0]["url"] == "http://prometheus:9090"
    assert prom[0].get("uid"), "dashboards refer to the datasource by uid"
    assert "prometheus" in services


def _all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_all_panels(panel.get("panels") or []))  # collapsed rows nest panels
    return out


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"]
            for panel in _all_panels(dashboard["panels"])
            for target in panel.get("targets") or []
            if target.get("expr")]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (histogram series folded to the histogram)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # range and subquery selectors
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana variables
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = re.sub(r"(?<![\w:])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?", " ", s)  # numbers
    names = set()
    for token in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if token.lower() in PROMQL_WORDS:
            continue
        names.add(HISTOGRAM_SERIES.get(token, token))
    return names


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(rakshit_verdict_latency_seconds_bucket'
        '{topic=~"rakshit.*"}[$__rate_interval])))') == {HISTOGRAM}
    assert metric_names("sum by (topic) (rakshit_consumer_lag) or vector(0)") == {
        "rakshit_consumer_lag"}
    assert metric_names("rate(foo_total[5m]) / on (x) group_left bar") == {"foo_total", "bar"}
    assert metric_names("sum(rate(rakshit_events_in_total_count[1m]))") == {
        "rakshit_events_in_total_count"}  # only the histogram's series are folded


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "rakshit-pay"
    assert dashboard["title"] == "Rakshit Pay: pipeline"
    assert dashboard["schemaVersion"] == 39
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"


def test_dashboard_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel.get("id") for panel in _all_panels(dashboard["panels"])]
    assert all(isinstance(i, int) for i in ids), f"every panel needs an integer id: {ids}"
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"


def test_dashboard_queries_only_worker_metrics(dashboard: dict[str, Any]) -> None:
    exprs = _exprs(dashboard)
    assert exprs, "the dashboard has no queries"
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - WORKER_METRICS
        assert not unknown, f"{expr!r} refers to {sorted(unknown)}, not a worker metric"
        used |= names
    assert used == WORKER_METRICS, f"no panel for {sorted(WORKER_METRICS - used)}"


def test_dashboard_queries_have_the_intended_shape(dashboard: dict[str, Any]) -> None:
    exprs = [re.sub(r"\s+", "", e) for e in _exprs(dashboard)]

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    for metric, label in (("rakshit_events_in_total", "topic"),
                          ("rakshit_events_out_total", "topic"),
                          ("rakshit_dead_letters_total", "reason"),
                          ("rakshit_pan_redactions_total", "topic"),
                          ("rakshit_verdicts_total", "decision")):
        assert has(rf"sumby\({label}\)\((?:rate|increase)\({metric}\["), f"{metric} by {label}"
    for q in ("0.5", "0.99"):
        pattern = rf"histogram_quantile\({re.escape(q)},sumby\(le\)\(rate\({HISTOGRAM}_bucket\["
        assert has(pattern), f"p{q} of {HISTOGRAM}"
    assert has(r"sumby\(topic\)\(rakshit_consumer_lag\)")
    # Counters are only ever read through rate()/increase(), never as raw totals.
    for e in exprs:
        for metric in re.findall(r"rakshit_\w+_total\b", e):
            assert re.search(rf"(?:rate|increase)\({metric}\[", e), f"raw counter in {e}"


def test_dashboard_panels_use_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    uid = _load_yaml(DATASOURCES)["datasources"][0]["uid"]
    for panel in _all_panels(dashboard["panels"]):
        if panel.get("type") == "row":
            continue
        refs = [panel.get("datasource"), *(t.get("datasource") for t in panel["targets"])]
        for ref in refs:
            if ref is not None:
                assert ref == {"type": "prometheus", "uid": uid}, f"{panel['title']}: {ref}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{panel['title']} overflows"


# ---------------------------------------------------------------------------------------------
# image


def test_dockerfile_installs_the_project() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    instructions = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    bases = [i.split()[1] for i in instructions if i.upper().startswith("FROM ")]
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    bases = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), b)
             for b in bases]
    assert bases and all(b == "python:3.11-slim" for b in bases), bases
    assert re.search(r"\bpip install \.(\s|$)", text), "the image must `pip install .`"
    # Compose commands name the program, so an ENTRYPOINT of rakshit would run `rakshit rakshit`.
    assert not any(i.upper().startswith("ENTRYPOINT") for i in instructions)
    cmd = [i for i in instructions if i.upper().startswith("CMD")]
    assert cmd and json.loads(cmd[-1][3:].strip())[0] == "rakshit"

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["rakshit"] == "streams.cli:main"
    assert pyproject["project"]["requires-python"] == ">=3.11"


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for required in (".git", ".venv", ".rakshit", "artifacts", "**/__pycache__",
                     ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert required in entries, f".dockerignore lacks {required}"
    for needed in ("pyproject.toml", "streams", "schemas", "README.md"):
        assert needed not in entries, f".dockerignore excludes {needed}, which the build needs"
