"""The one process launcher: `rakshit` subcommands as child processes, and waiting until they serve.

The demo, the benchmarks, the evaluation and the integration tests all start the worker and the
API through here, so each runs the same command line a person would (``python -m streams.cli``),
in its own process group, with the settings passed as environment variables and its output in
``RAKSHIT_HOME/logs``.

Processes fail loudly and clean up (README, "Processes: start-up, failure and shutdown"):

- every child started here is registered, and a parent that installed :func:`raise_on_signals`
  turns SIGTERM and SIGINT into :class:`Interrupted`, so its ``finally`` blocks stop what it
  started; ``streams.cli`` then stops any child still registered (:func:`stop_children`) and
  exits 128 + the signal's number with one line;
- a child knows its parent (``RAKSHIT_PARENT_PID``) and stops itself within a second of the
  parent going away, even by kill -9 (:func:`watch_parent`, a thread polling ``os.getppid``);
- a child that cannot start raises :class:`StartupFailed` and exits at once with one line;
- a child that dies is noticed by its parent's waits (:func:`check_alive`), which raise
  :class:`ChildExited` naming it, how it ended and the last line it wrote.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from confluent_kafka.admin import AdminClient

from infra.kafka.launcher import ADMIN_USER
from streams.config import REPO_ROOT, Settings

# Which Kafka principal each kind of process logs in as when the broker wants logins
# (RAKSHIT_KAFKA_AUTH=scram; streams.admin.ACLS says what each may do). The commands a person
# runs (broker, topics, tokens, tail, demo, bench) stay the operator's ``admin``; what they start
# runs as its own principal, so a worker cannot write case commands nor a gateway a verdict.
SERVICE_PRINCIPALS = {"worker": "worker", "api": "api", "gateway": "gateway"}
OPERATOR = ADMIN_USER

# Set in a child's environment by spawn(): the pid of the process that started it.
PARENT_ENV = "RAKSHIT_PARENT_PID"
# How often a child checks that its parent is still there, and how long it then has to stop
# cleanly before it ends itself hard.
PARENT_POLL_S = 0.5
ORPHAN_GRACE_S = 20.0


class StartupFailed(RuntimeError):
    """A process cannot start (port taken, broker unreachable, ...); the message is one line."""


class ChildExited(RuntimeError):
    """A process this one started has exited; the message is one line: which, how and why."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived (raised in the main thread by :func:`raise_on_signals`).

    A BaseException, like KeyboardInterrupt, so ``except Exception`` in a wait loop does not
    swallow it on its way to the ``finally`` blocks that stop the children."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class Child:
    """A process started by :func:`spawn`: what it is, and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int  # the log's size when it started: what it wrote since is its own


_children: dict[int, Child] = {}
_children_lock = threading.RLock()  # reentrant: the signal handler may run while it is held


def one_line(text: str, limit: int = 500) -> str:
    """Any message as one line (a reason printed to stderr or quoted in another)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def child_of(proc: subprocess.Popen[bytes]) -> Child | None:
    with _children_lock:
        return _children.get(proc.pid)


def children() -> list[Child]:
    """The children started here that have not been stopped by :func:`stop_process`."""
    with _children_lock:
        return list(_children.values())


def _last_line(child: Child) -> str:
    try:
        with child.log_path.open("rb") as log:
            log.seek(child.log_offset)
            tail = log.read()[-8192:].decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return one_line(lines[-1], 200) if lines else ""


def exit_reason(proc: subprocess.Popen[bytes], when: str = "") -> str:
    """One line: which process, how it ended (``when``), the last line it wrote and where its
    log is."""
    child = child_of(proc)
    name = child.name if child else "process"
    code = proc.returncode
    how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
           else f"exited with {code}")
    said = _last_line(child) if child else ""
    where = f" (log {child.log_path})" if child else ""
    return f"{name} (pid {proc.pid}) {how}{when}" + (f": {said}" if said else "") + where


def check_alive(*procs: subprocess.Popen[bytes] | None) -> None:
    """Raise :class:`ChildExited` for the first of ``procs`` that has exited."""
    for proc in procs:
        if proc is not None and proc.poll() is not None:
            raise ChildExited(exit_reason(proc))


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
        _check_starting(worker)
        try:
            body = urllib.request.urlopen(url, timeout=2).read().decode()
            if "\nrakshit_worker_ready 1.0" in body:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready within {timeout_s:.0f}s ({url})")


def _check_starting(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        raise ChildExited(exit_reason(proc, " during start-up"))


def wait_for_group(settings: Settings, group: str, worker: subprocess.Popen[bytes],
                   timeout_s: float = 120.0) -> None:
    """The worker is ready when its consumer group is stable with partitions assigned."""
    admin = AdminClient({**settings.kafka_config()})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_starting(worker)
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=5)
            assigned = sum(len(m.assignment.topic_partitions) for m in desc.members)
            if str(desc.state).endswith("STABLE") and assigned:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"worker group {group} not stable within {timeout_s:.0f}s")


def as_service(settings: Settings, service: str) -> Settings:
    """The settings a ``service`` process runs with: its own principal when the broker wants
    logins and these settings are the operator's. Settings that already name another principal
    (RAKSHIT_KAFKA_USER, or a test acting as one) are kept as they are."""
    principal = SERVICE_PRINCIPALS[service]
    if not settings.kafka_secured or settings.kafka_user != OPERATOR:
        return settings
    return settings.as_principal(principal)


def prepare_run(settings: Settings) -> None:
    """As the operator, before a service starts under its own principal: the run's topics and
    the ACLs of its prefix and app id (streams.admin.ensure_topics; idempotent). A service
    principal may neither create the project's topics nor grant itself rights."""
    if settings.kafka_secured and settings.kafka_user == OPERATOR:
        from streams.admin import ensure_topics

        ensure_topics(settings)


def spawn_service(settings: Settings, service: str, log_path: Path, *args: str,
                  name: str | None = None) -> subprocess.Popen[bytes]:
    """:func:`spawn` for a service: the run prepared as the operator, the child logged in as
    the service's principal (:func:`as_service`)."""
    prepare_run(settings)
    return spawn(as_service(settings, service), log_path, *args, name=name)


def spawn(settings: Settings, log_path: Path, *args: str,
          name: str | None = None) -> subprocess.Popen[bytes]:
    """``python -m streams.cli *args`` as its own process group (so kill -9 takes all of it),
    appending its output to ``log_path``. It is registered until :func:`stop_process` stops
    it, and stops itself if this process goes away (:func:`watch_parent`)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env(), PARENT_ENV: str(os.getpid())}
    if not settings.kafka_password_file:
        # The parent's own password file is not the child's: it reads its principal's.
        env.pop("RAKSHIT_KAFKA_PASSWORD_FILE", None)
    with log_path.open("ab") as log:
        offset = log.tell()
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *args],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO_ROOT, env=env, start_new_session=True)
    with _children_lock:
        _children[proc.pid] = Child(name or (args[0] if args else "child"), proc, log_path,
                                    offset)
    return proc


def _spawn(settings: Settings, service: str, log_name: str,
           *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = settings.home / "logs" / log_name
    return spawn_service(settings, service, log_path, *args, name=args[0]), log_path


def start_worker(settings: Settings, log_name: str,
                 passthrough: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`rakshit worker` as its own process, logged in as the worker principal; passthrough
    "faust" or "raw" starts that benchmark baseline instead (`rakshit worker --passthrough
    MODE`)."""
    if passthrough not in (None, "faust", "raw"):
        raise ValueError(f"passthrough must be None, 'faust' or 'raw', not {passthrough!r}")
    extra = ["--passthrough", passthrough] if passthrough else []
    proc, log_path = _spawn(settings, "worker", log_name, "worker", "--loglevel", "warn", *extra)
    return proc, str(log_path)


def start_api(settings: Settings, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """`rakshit api` as its own process, logged in as the api principal; returns once the page
    answers."""
    proc, log_path = _spawn(settings, "api", "demo-api.log", "api", "--port", str(port))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _check_starting(proc)
        try:
            with urllib.request.urlopen(url, timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.2)
    stop_process(proc)
    raise RuntimeError(f"the API did not answer on {url} within 60 s; see {log_path}")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL its whole process group."""
    try:
        if proc.poll() is not None:
            return
        child = child_of(proc)
        if child is not None and _stopping.is_set():
            _stopped_on_signal.append(child)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
    finally:
        with _children_lock:
            _children.pop(proc.pid, None)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # spawn() made it a process group leader
    except OSError:
        with contextlib.suppress(OSError):
            proc.kill()


def stop_children(keep: Collection[int] = (), timeout_s: float = 30.0) -> None:
    """Stop every child still registered but those whose pids are in ``keep``, all at once
    (SIGTERM, then SIGKILL after ``timeout_s``)."""
    mine = [c for c in children() if c.proc.pid not in keep]
    running = [c for c in mine if c.proc.poll() is None]
    if _stopping.is_set():
        _stopped_on_signal.extend(running)
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in running:
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(child.proc)
            child.proc.wait()
    for child in mine:
        stop_process(child.proc, 0.0)  # exited by now: deregister (and reap)


_stopping = threading.Event()
_stopped_on_signal: list[Child] = []


def stopped_on_signal() -> list[Child]:
    """The children stopped since :func:`raise_on_signals`' handler ran, in order."""
    return list(_stopped_on_signal)


def raise_on_signals() -> Callable[[], None]:
    """SIGTERM and SIGINT raise :class:`Interrupted` in the main thread, so the ``finally``
    blocks that stop this process's children run (Python's default SIGTERM ends the process
    at once and leaves them running). A second signal while stopping does not wait: it kills
    the children's process groups and exits. Returns what puts the previous handlers back
    (for `streams.cli.main` called inside another program, as tests do)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _stopping.clear()
    _stopped_on_signal.clear()

    def handler(signum: int, frame: FrameType | None) -> None:
        if _stopping.is_set():
            for child in children():
                _kill_group(child.proc)
            os._exit(128 + signum)
        _stopping.set()
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for signum, was in previous.items():
            signal.signal(signum, was)
        _stopping.clear()

    return restore


_parent: int | None = None


def started_by_parent() -> bool:
    """True in a child started by :func:`spawn` (once :func:`watch_parent` has run)."""
    return _parent is not None


def watch_parent() -> bool:
    """In a child started by :func:`spawn`: stop (SIGTERM to itself, then a hard exit after
    ORPHAN_GRACE_S) within PARENT_POLL_S of the parent going away, however it went. True when
    there is a parent to watch."""
    global _parent
    raw = os.environ.pop(PARENT_ENV, "")
    if not raw.isdigit():
        return False
    parent = _parent = int(raw)

    def gone() -> None:
        print(f"rakshit: the process that started this one (pid {parent}) is gone; stopping",
              file=sys.stderr, flush=True)

    if os.getppid() != parent:
        gone()
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        gone()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    return True


def probe_broker(settings: Settings, timeout_s: float = 3.0) -> None:
    """:class:`StartupFailed` at once when nothing listens at any bootstrap address (a metadata
    request would first wait out its whole timeout, and say less)."""
    refusals = []
    for entry in settings.bootstrap_servers.split(","):
        address = entry.strip().split("://")[-1]
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            continue
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout_s).close()
            return
        except OSError as exc:
            refusals.append(f"{address}: {exc.strerror or exc}")
    if refusals:
        raise StartupFailed(f"broker unreachable at {settings.bootstrap_servers} "
                            f"({'; '.join(refusals)})")


_serving_metrics: set[tuple[str, int]] = set()


def serve_metrics(settings: Settings) -> None:
    """In the worker: its Prometheus endpoint on ``settings.metrics_port`` (0: none), once per
    process.

    `rakshit worker` binds it before anything else, even its imports, so a port another
    process holds ends it at once with one line: a worker that went on without it once left a
    demo reading the readiness of the worker that held the port, producing to nobody."""
    from prometheus_client import start_http_server

    where = (settings.metrics_addr, settings.metrics_port)
    if not settings.metrics_port or where in _serving_metrics:
        return
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_addr)
    except OSError as exc:
        raise StartupFailed(f"cannot serve metrics on {settings.metrics_addr}:"
                            f"{settings.metrics_port}: {exc.strerror or exc} (RAKSHIT_METRICS_PORT "
                            "picks another port, 0 serves none)") from exc
    _serving_metrics.add(where)
