"""The alerting rules (infra/prometheus/alerts.yml), checked by Prometheus's own tools.

- `promtool check rules`, `promtool check config` and `promtool test rules` on
  infra/prometheus/alerts_test.yml: every alert is shown firing and not firing on made-up series.
- The rules' shape: a severity, a summary, a description and a runbook on every alert, only
  metrics the worker exports, and a firing and a quiet unit test for each.
- A real Prometheus server (Debian's `prometheus`) scrapes a real worker that decided real
  transactions from the broker: PromQL returns its verdict counts, the rules load healthy, their
  recording rules see the worker's histogram, and a stopped worker makes RakshitWorkerDown pend.

`make test` installs Debian's prometheus package (/usr/bin/prometheus and /usr/bin/promtool);
without it these tests skip and say why.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.codec import make_codec
from streams.admin import ensure_topics
from streams.admin import free_port as any_free_port
from streams.config import Settings
from streams.launcher import wait_until_ready
from streams.topics import Topic
from tests.factories import transaction
from tests.kafka_helpers import WorkerProcess, name, produce, read_all
from tests.test_compose import WORKER_METRICS, metric_names

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULES_TEST = PROMETHEUS_DIR / "alerts_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
WORKER_JOB = "rakshit-worker"
SEVERITIES = {"page", "ticket"}


def _tool(program: str) -> str:
    path = shutil.which(program) or (f"/usr/bin/{program}"
                                     if Path(f"/usr/bin/{program}").exists() else None)
    if path is None:
        reason = (f"{program} is not installed (Debian package `prometheus`; `make test` installs "
                  "it): the alerting rules are not checked")
        print(f"\n[alerts] SKIPPED: {reason}")
        pytest.skip(reason)
    return path


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"`{' '.join(args)}` failed ({proc.returncode}):\n{out}"
    return out


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


# ---------------------------------------------------------------------------------------------
# promtool


def test_promtool_checks_the_rules_and_the_config() -> None:
    promtool = _tool("promtool")
    out = _run(promtool, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(_rules())} rules found" in out, out
    # The compose config names the rules file relative to itself; promtool checks both.
    out = _run(promtool, "check", "config", str(CONFIG))
    assert "SUCCESS" in out and RULES.name in out, out


def test_promtool_unit_tests_pass() -> None:
    promtool = _tool("promtool")
    # promtool resolves rule_files relative to the test file.
    out = _run(promtool, "test", "rules", str(RULES_TEST))
    assert "SUCCESS" in out and "FAILED" not in out, out


# ---------------------------------------------------------------------------------------------
# the rules' shape


def test_every_alert_can_be_acted_on() -> None:
    alerts = _alerts()
    assert len(alerts) >= 12
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names)), "alert names must be unique"
    for alert in alerts:
        where = alert["alert"]
        assert where.startswith("Rakshit"), where
        assert alert["labels"]["severity"] in SEVERITIES, where
        notes = alert["annotations"]
        for key in ("summary", "description", "runbook"):
            assert len(notes.get(key, "").split()) >= 5, f"{where}: {key} says too little"


def test_the_rules_cover_what_the_issue_asks_for() -> None:
    alerts = {a["alert"]: a for a in _alerts()}
    slo = [a for a in alerts.values() if a["labels"].get("slo") == "verdict-latency"]
    # The SRE workbook's four burn rates over their long and short windows, two paging.
    thresholds: dict[tuple[str, ...], tuple[str, str]] = {}
    for alert in slo:
        found = tuple(sorted(set(re.findall(r"ratio_rate(\w+)", alert["expr"]))))
        thresholds[found] = (alert["labels"]["severity"], alert["expr"])
    assert set(thresholds) == {("1h", "5m"), ("30m", "6h"), ("1d", "2h"), ("3d", "6h")}
    for windows, burn, severity in ((("1h", "5m"), "14.4", "page"), (("30m", "6h"), "6", "page"),
                                    (("1d", "2h"), "3", "ticket"), (("3d", "6h"), "1", "ticket")):
        got_severity, expr = thresholds[windows]
        assert got_severity == severity, windows
        assert expr.count(f"({burn} * 0.01)") == 2, f"{windows}: burn rate {burn} on both windows"
    recorded = {r["record"]: r["expr"] for r in _rules() if "record" in r}
    for record, expr in recorded.items():
        assert 'rakshit_verdict_latency_seconds_bucket{le="0.1"}' in expr, record
    exprs = " ".join(a["expr"] for a in alerts.values())
    for metric in ("rakshit_dead_letters_total", "rakshit_consumer_lag", "rakshit_worker_ready",
                   "rakshit_active_experiments", "rakshit_experiment_steps_total"):
        assert metric in exprs, metric
    assert f'up{{job="{WORKER_JOB}"}}' in exprs
    assert "absent(rakshit_worker_ready)" in exprs


def test_rules_select_only_worker_metrics() -> None:
    recorded = {r["record"] for r in _rules() if "record" in r}
    known = WORKER_METRICS | recorded | {"up"}
    for rule in _rules():
        names = metric_names(rule["expr"])
        assert names, rule
        unknown = names - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"


def test_each_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [RULES.name]
    fires: Counter[str] = Counter()
    quiet: Counter[str] = Counter()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test") or []:
            (fires if check.get("exp_alerts") else quiet)[check["alertname"]] += 1
    for alert in _alerts():
        assert fires[alert["alert"]], f"no unit test where {alert['alert']} fires"
        assert quiet[alert["alert"]], f"no unit test where {alert['alert']} stays quiet"
    assert set(fires) | set(quiet) <= {a["alert"] for a in _alerts()}


# ---------------------------------------------------------------------------------------------
# a real Prometheus server scraping a real worker


class PrometheusServer:
    """/usr/bin/prometheus on a loopback port, its data in a temporary directory."""

    def __init__(self, binary: str, workdir: Path, targets: list[str]) -> None:
        self.port = any_free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                       "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": WORKER_JOB, "metrics_path": "/metrics",
                                "static_configs": [{"targets": targets}]}],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = workdir / "prometheus.log"
        self.cmd = [binary, f"--config.file={self.config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> PrometheusServer:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log_text()}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout_s:.0f} s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as resp:
            body = json.loads(resp.read().decode())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def wait_for(self, what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.5)
        raise AssertionError(f"prometheus: {what} not seen within {timeout_s:.0f} s "
                             f"(last answer {last!r})\n{self.log_text()[-3000:]}")


@pytest.fixture
def prometheus_binary() -> str:
    return _tool("prometheus")


@pytest.fixture
def prometheus_factory(prometheus_binary: str, tmp_path: Path
                       ) -> Iterator[Callable[[list[str]], PrometheusServer]]:
    started: list[PrometheusServer] = []

    def start(targets: list[str]) -> PrometheusServer:
        server = PrometheusServer(prometheus_binary, tmp_path / "prometheus", targets)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def _value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if result else None


@pytest.mark.kafka
def test_prometheus_scrapes_a_running_worker_and_counts_its_verdicts(
        make_settings: Callable[..., Settings], tmp_path: Path, free_port: int,
        prometheus_factory: Callable[[list[str]], PrometheusServer]) -> None:
    settings = make_settings(metrics_port=free_port)
    ensure_topics(settings)
    codec = make_codec(None)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    assert worker.proc is not None
    try:
        wait_until_ready(settings, worker.proc)
        prom = prometheus_factory([f"127.0.0.1:{settings.metrics_port}"])

        # The target is scraped and healthy, and the worker says it is ready.
        def target_up() -> bool:
            targets = prom.api("targets")["activeTargets"]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        prom.wait_for("the worker's target up", target_up)
        assert _value(prom.query(f'up{{job="{WORKER_JOB}"}}')) == 1.0
        prom.wait_for("rakshit_worker_ready 1",
                      lambda: _value(prom.query("rakshit_worker_ready")) == 1.0)
        # Nothing decided yet: no verdict series, or zero.
        assert not _value(prom.query("sum(rakshit_verdicts_total)"))

        # A few transactions through the broker, each decided once.
        sent = [transaction(i, card=f"tok_alerts_{i % 5}") for i in range(12)]
        topic = name(settings, Topic.TRANSACTIONS)
        produce(settings, [(topic, t["card_token"].encode(),
                            codec.encode("transaction", t, topic=topic)) for t in sent])
        decisions = name(settings, Topic.DECISIONS)
        verdicts = [codec.decode(r.value, topic=decisions).record
                    for r in read_all(settings, decisions, until=len(sent), timeout_s=90)]
        verdicts = [v for v in verdicts if not v["is_override"]]
        assert sorted(v["transaction_id"] for v in verdicts) == sorted(
            t["transaction_id"] for t in sent)
        by_decision = Counter(v["decision"] for v in verdicts)

        # PromQL over what Prometheus scraped gives the same counts.
        prom.wait_for(f"sum(rakshit_verdicts_total) == {len(sent)}",
                      lambda: _value(prom.query("sum(rakshit_verdicts_total)")) == len(sent))
        scraped = {r["metric"]["decision"]: float(r["value"][1])
                   for r in prom.query("sum by (decision) (rakshit_verdicts_total)")}
        assert scraped == {d: float(n) for d, n in by_decision.items()}
        prom.wait_for("every verdict's latency in the histogram",
                      lambda: _value(prom.query("sum(rakshit_verdict_latency_seconds_count)"))
                      == len(sent))
        # The SLO's bucket exists under the label value the rules select.
        assert _value(prom.query(
            'sum(rakshit_verdict_latency_seconds_bucket{le="0.1"})')) is not None

        # The rules loaded, every one evaluated without error, and the SLO's recording rule
        # computes a share from the worker's real histogram.
        def rules_healthy() -> list[dict[str, Any]] | None:
            rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            if not rules or any(r["health"] != "ok" or r.get("lastError") for r in rules):
                return None
            return rules

        loaded = prom.wait_for("every rule evaluated healthy", rules_healthy)
        expected = {r.get("alert") or r["record"] for r in _rules()}
        assert {r["name"] for r in loaded} == expected
        assert sum(r["type"] == "alerting" for r in loaded) == len(_alerts())
        # Evaluated before the verdicts were scraped, the ratio is 0/0 (NaN, under which no
        # alert fires); wait for an evaluation whose window holds them.
        def slow_ratio() -> list[float] | None:
            value = _value(prom.query("rakshit:verdict_latency_slow:ratio_rate5m"))
            return None if value is None or math.isnan(value) else [value]

        [ratio] = prom.wait_for("rakshit:verdict_latency_slow:ratio_rate5m a number", slow_ratio)
        assert 0.0 <= ratio <= 1.0
        # A healthy worker that has just decided a few payments raises nothing, not even a
        # pending alert: no rule misreads the real series.
        active = prom.api("alerts")["alerts"]
        assert not active, [(a["labels"]["alertname"], a["state"], a["value"]) for a in active]
    finally:
        worker.stop()

    # With the worker stopped, the scrape fails and RakshitWorkerDown starts its 2 minutes.
    prom.wait_for(f'up{{job="{WORKER_JOB}"}} == 0',
                  lambda: _value(prom.query(f'up{{job="{WORKER_JOB}"}}')) == 0.0)

    def worker_down_pending() -> list[dict[str, Any]]:
        return [a for a in prom.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "RakshitWorkerDown"]

    down = prom.wait_for("RakshitWorkerDown pending", worker_down_pending)
    assert down[0]["state"] == "pending"
    assert down[0]["labels"]["instance"] == f"127.0.0.1:{settings.metrics_port}"
    assert down[0]["labels"]["severity"] == "page"
