"""The one process launcher: `rakshit` subcommands as child processes, and waiting until they serve.

The demo, the benchmarks, the evaluation and the integration tests all start the worker and the
API through here, so each runs the same command line a person would (``python -m streams.cli``),
in its own process group, with the settings passed as environment variables and its output in
``RAKSHIT_HOME/logs``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from confluent_kafka.admin import AdminClient

from streams.config import REPO_ROOT, Settings


def wait_until_ready(settings: Settings, worker: subprocess.Popen[bytes],
                     timeout_s: float = 120.0) -> None:
    """Ready means recovered, as the worker's own readiness gauge says; without a metrics port
    the stable consumer group is the best sign there is."""
    wait_for_group(settings, settings.app_id, worker, timeout_s)
    if not settings.metrics_port:
        return
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode} during start-up")
        try:
            body = urllib.request.urlopen(url, timeout=2).read().decode()
            if "\nrakshit_worker_ready 1.0" in body:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready within {timeout_s:.0f}s ({url})")


def wait_for_group(settings: Settings, group: str, worker: subprocess.Popen[bytes],
                   timeout_s: float = 120.0) -> None:
    """The worker is ready when its consumer group is stable with partitions assigned."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode} during start-up")
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=5)
            assigned = sum(len(m.assignment.topic_partitions) for m in desc.members)
            if str(desc.state).endswith("STABLE") and assigned:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"worker group {group} not stable within {timeout_s:.0f}s")


def spawn(settings: Settings, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m streams.cli *args`` as its own process group (so kill -9 takes all of it),
    appending its output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", *args],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                env={**os.environ, **settings.to_env()},
                                start_new_session=True)


def _spawn(settings: Settings, log_name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = settings.home / "logs" / log_name
    return spawn(settings, log_path, *args), log_path


def start_worker(settings: Settings, log_name: str,
                 passthrough: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`rakshit worker` as its own process; passthrough "faust" or "raw" starts that benchmark
    baseline instead (`rakshit worker --passthrough MODE`)."""
    if passthrough not in (None, "faust", "raw"):
        raise ValueError(f"passthrough must be None, 'faust' or 'raw', not {passthrough!r}")
    extra = ["--passthrough", passthrough] if passthrough else []
    proc, log_path = _spawn(settings, log_name, "worker", "--loglevel", "warn", *extra)
    return proc, str(log_path)


def start_api(settings: Settings, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """`rakshit api` as its own process; returns once the page answers."""
    proc, log_path = _spawn(settings, "demo-api.log", "api", "--port", str(port))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.2)
    stop_process(proc)
    raise RuntimeError(f"the API did not answer on {url} within 60 s; see {log_path}")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
