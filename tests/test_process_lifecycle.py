"""Processes fail loudly and clean up, tested by doing each: real processes, real signals, real
ports, the real broker.

- SIGTERM to `rakshit demo` mid-run stops the worker and the API it started, and SIGINT while its
  worker starts stops that worker and the embedded broker the demo started; nothing of the run
  listens any more, and the demo ends with one line and 128 + the signal;
- SIGTERM to `rakshit bench pipeline` stops its worker the same way;
- kill -9 of the demo still takes its worker and API down (they watch their parent), and the
  broker it started (a parent-death signal);
- a worker killed -9 mid-run ends the demo within seconds with one line naming it, and a worker
  that cannot start (the known bug: its metrics port held by an earlier demo's worker) ends the
  demo before any traffic, saying why;
- `rakshit worker` with its metrics port taken or no broker listening, and `rakshit api` with its
  port taken, exit 1 at once with one line naming the port or the broker;
- the pipeline benchmark's wait notices a dead worker within a second.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from streams.admin import free_port
from streams.broker import embedded_broker
from streams.config import REPO_ROOT, Settings
from streams.launcher import ChildExited, start_worker, stop_process, wait_until_ready
from tests.kafka_helpers import (
    cli_env,
    pid_alive,
    port_answers,
    rakshit,
    wait_for_line,
    wait_gone,
)

# The demo's shape in these tests: 20 tx/s for 30 wall seconds at its default 20x event time
# (2,000 customers), with a champion for that shape trained small once per module, so no test
# waits for the demo's own training.
DEMO_ARGS = ("demo", "--duration", "30", "--rate", "20", "--bad-records", "3", "--seed", "5")


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scoring.registry import ModelRegistry
    from streams.demo.run import demo_customers
    from streams.simulator.training import train_for_demo

    root = tmp_path_factory.mktemp("demo-models")
    train_for_demo(ModelRegistry(root), customers=demo_customers(20.0), event_rate=1.0,
                   span_s=30 * 20.0, scenario="fraud", transactions=2_400)
    return root


def rakshit_children(parent: int) -> dict[str, int]:
    """The `rakshit` subcommands ``parent`` started, by subcommand, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) != parent:
            continue
        args = [a.decode() for a in cmdline]
        if "streams.cli" in args:
            found[args[args.index("streams.cli") + 1]] = int(entry.name)
    return found


class Demo:
    """`rakshit demo` as a test runs it: its own process, stdout and stderr in files."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.metrics_port, self.api_port = settings.metrics_port, free_port()
        self.out, self.err = tmp_path / "demo.out", tmp_path / "demo.err"
        self.proc = rakshit(*DEMO_ARGS, "--api-port", str(self.api_port), out=self.out,
                            err=self.err, env=cli_env(settings))

    def wait_for(self, text: str, timeout_s: float = 120.0) -> str:
        return wait_for_line(self.out, text, self.proc, timeout_s, also=self.err)

    def children(self) -> dict[str, int]:
        """The demo's worker and API pids."""
        return rakshit_children(self.proc.pid)

    def up(self) -> dict[str, int]:
        """Wait until the worker is ready and the API answers; their pids."""
        self.wait_for("dashboard: ")
        kids = self.children()
        assert set(kids) == {"worker", "api"}, kids
        assert port_answers(self.api_port) and port_answers(self.metrics_port)
        return kids

    def finish(self, timeout_s: float = 90.0) -> tuple[int, str]:
        code = self.proc.wait(timeout_s)
        return code, self.err.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def demo(make_settings: Callable[..., Settings], tmp_path: Path,
         demo_models: Path) -> Iterator[Demo]:
    run = Demo(make_settings(metrics_port=free_port(), models_dir=demo_models), tmp_path)
    try:
        yield run
    finally:
        kids = run.children()
        run.kill()
        for pid in kids.values():  # whatever a failed test left behind
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def offline(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a command that must fail before it reaches any broker: by default a named
    one where nothing listens."""
    base = replace(Settings.from_env(), home=tmp_path / "home", metrics_port=0,
                   external_bootstrap=f"127.0.0.1:{free_port()}")
    return replace(base, **overrides)  # type: ignore[arg-type]


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def listeners(port: int) -> str:
    """Who listens on the port, as ss says (for a failure's message)."""
    done = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or done.stderr.strip()


def assert_gone(pids: dict[str, int], *ports: int, within_s: float = 30.0) -> None:
    for what, pid in pids.items():
        assert wait_gone(pid, within_s), f"{what} pid {pid} survived"
    for port in ports:
        # Nothing listens there any more. (Binding it could still fail for a moment: on a busy
        # machine an outgoing connection may take a just-freed port as its own.)
        assert not port_answers(port), (f"something still listens on port {port}: "
                                        f"{listeners(port)}")


@pytest.mark.kafka
def test_sigterm_to_the_demo_stops_its_worker_and_api(demo: Demo) -> None:
    kids = demo.up()
    demo.wait_for("produced")  # traffic flowing: the signal lands mid-run
    demo.proc.send_signal(signal.SIGTERM)
    code, err = demo.finish()
    assert code == 128 + signal.SIGTERM
    assert last_line(err) == (f"rakshit demo: stopped by SIGTERM; stopped api pid {kids['api']}, "
                              f"worker pid {kids['worker']}")
    assert "Traceback" not in err
    assert_gone(kids, demo.api_port, demo.metrics_port, within_s=5.0)


def own_broker_settings(make_settings: Callable[..., Settings], demo_models: Path) -> Settings:
    """Settings with no broker running: the demo starts the embedded one, on free ports."""
    defaults = Settings.from_env()
    settings = make_settings(external_bootstrap=None, broker_port=free_port(),
                             controller_port=free_port(), metrics_port=free_port(),
                             models_dir=demo_models)
    jars = settings.home / "kafka" / defaults.kafka_version
    jars.parent.mkdir(parents=True)
    jars.symlink_to(defaults.home / "kafka" / defaults.kafka_version)  # resolved by the session
    return settings


def worker_and_broker(demo: Demo, settings: Settings) -> tuple[int, int]:
    """Once the demo has started its worker: the worker's pid and its broker's, both alive."""
    line = demo.wait_for("worker: pid ")
    worker = int(line.split("worker: pid ")[1].split(",")[0])
    broker = int((settings.home / f"broker-{settings.broker_port}" / "broker.pid").read_text())
    assert pid_alive(broker) and port_answers(settings.broker_port)
    return worker, broker


@pytest.mark.kafka
def test_sigint_to_a_demo_that_started_its_broker_stops_worker_and_broker(
        make_settings: Callable[..., Settings], tmp_path: Path, demo_models: Path) -> None:
    """Ctrl-C while the worker starts, with no broker running: the demo starts the embedded one
    and must stop it too, as it does when it ends normally."""
    settings = own_broker_settings(make_settings, demo_models)
    demo = Demo(settings, tmp_path)
    try:
        worker, broker = worker_and_broker(demo, settings)
        demo.proc.send_signal(signal.SIGINT)
        code, err = demo.finish()
        assert code == 128 + signal.SIGINT
        assert last_line(err) == f"rakshit demo: stopped by SIGINT; stopped worker pid {worker}"
        assert "broker: stopped (started by this demo" in demo.out.read_text()
        assert_gone({"worker": worker, "broker": broker}, settings.metrics_port,
                    settings.broker_port, within_s=5.0)
    finally:
        demo.kill()
        embedded_broker(settings).stop()


@pytest.mark.kafka
def test_kill_9_of_a_demo_that_started_its_broker_takes_the_broker_down(
        make_settings: Callable[..., Settings], tmp_path: Path, demo_models: Path) -> None:
    """No handler runs on kill -9: the broker the demo started goes by the parent-death signal
    it was started with (infra.kafka.launcher), the worker by watching its parent."""
    settings = own_broker_settings(make_settings, demo_models)
    demo = Demo(settings, tmp_path)
    try:
        worker, broker = worker_and_broker(demo, settings)
        demo.proc.kill()
        demo.proc.wait()
        assert_gone({"worker": worker, "broker": broker}, settings.metrics_port,
                    settings.broker_port, within_s=30.0)
    finally:
        demo.kill()
        embedded_broker(settings).stop()


@pytest.mark.kafka
def test_kill_9_of_the_demo_takes_its_worker_and_api_down(demo: Demo) -> None:
    kids = demo.up()
    demo.proc.kill()  # SIGKILL: no handler runs, no finally; the children must notice alone
    demo.proc.wait()
    assert_gone(kids, demo.api_port, demo.metrics_port, within_s=30.0)


@pytest.mark.kafka
def test_a_worker_killed_mid_run_ends_the_demo_within_seconds(demo: Demo) -> None:
    kids = demo.up()
    demo.wait_for("produced")
    os.kill(kids["worker"], signal.SIGKILL)
    killed = time.monotonic()
    code, err = demo.finish(timeout_s=60)
    assert code == 1
    line = last_line(err)
    assert line.startswith(f"rakshit demo: worker (pid {kids['worker']}) was killed by SIGKILL")
    assert "Traceback" not in err
    # Noticed within a second or two; the rest is stopping the API and deleting the topics.
    assert time.monotonic() - killed < 30
    produced = [ln for ln in demo.out.read_text().splitlines() if "produced" in ln]
    assert len(produced) < 10, "the demo went on producing for a dead worker"
    assert_gone(kids, demo.api_port, demo.metrics_port, within_s=5.0)


@pytest.mark.kafka
def test_a_demo_whose_worker_cannot_start_stops_at_once_saying_why(
        make_settings: Callable[..., Settings], tmp_path: Path, demo_models: Path) -> None:
    """The known bug: a worker left running by an earlier demo held the metrics port; the next
    demo's worker died on it and that demo produced to nobody, saying nothing."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = Demo(make_settings(metrics_port=port, models_dir=demo_models), tmp_path)
        try:
            code, err = run.finish(timeout_s=90)
        finally:
            run.kill()
    assert code == 1
    assert "Traceback" not in err
    line = last_line(err)
    assert line.startswith("rakshit demo: worker (pid ")
    assert (f"exited with 1 during start-up: rakshit worker: cannot serve metrics on "
            f"127.0.0.1:{port}: ") in line
    assert "produced" not in run.out.read_text()


def test_worker_with_its_metrics_port_taken_exits_at_once(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        # The broker is never reached: the port is checked first, so none is needed here.
        done = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], cwd=REPO_ROOT,
                              env=cli_env(offline(tmp_path, metrics_port=port)),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert time.monotonic() - started < 10  # before any heavy import
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"rakshit worker: cannot serve metrics on 127.0.0.1:{port}: ")
    assert "in use" in lines[0]


@pytest.mark.parametrize("how", ["named cluster", "embedded, started by a parent"])
def test_worker_with_no_broker_exits_at_once_naming_it(tmp_path: Path, how: str) -> None:
    dead = free_port()  # nothing listens there
    if how == "named cluster":
        env = cli_env(offline(tmp_path, external_bootstrap=f"127.0.0.1:{dead}"))
    else:
        # A worker the demo or a benchmark starts joins the broker its parent made sure of; it
        # never starts one of its own, so a broker gone away is a reason to stop.
        env = cli_env(offline(tmp_path, external_bootstrap=None, broker_port=dead),
                      RAKSHIT_PARENT_PID=str(os.getpid()))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert time.monotonic() - started < 10
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"rakshit worker: broker unreachable at 127.0.0.1:{dead} ")
    assert not (tmp_path / "home" / f"broker-{dead}").exists()  # and none was started


def test_api_with_its_port_taken_exits_at_once(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "streams.cli", "api", "--port", str(port)],
                              cwd=REPO_ROOT,
                              env=cli_env(offline(tmp_path)),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert time.monotonic() - started < 10
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"rakshit api: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in lines[0]


@pytest.mark.kafka
def test_the_pipeline_benchmark_notices_a_dead_worker(
        make_settings: Callable[..., Settings]) -> None:
    from streams.admin import delete_run_topics, ensure_topics
    from streams.bench.pipeline import backlog_decided, benchmark_records

    settings = make_settings(metrics_port=free_port())
    ensure_topics(settings)
    proc, log = start_worker(settings, "bench-dead-worker.log", passthrough="raw")
    try:
        wait_until_ready(settings, proc, timeout_s=90)
        records = benchmark_records(settings, 200, seed=1, traffic="simulator")
        os.kill(proc.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(ChildExited) as failed:
            backlog_decided(settings, records * 50, [proc], [log])
        assert time.monotonic() - started < 5  # not STALL_S
        assert str(failed.value).startswith(f"worker (pid {proc.pid}) was killed by SIGKILL")
    finally:
        stop_process(proc)
        delete_run_topics(settings)


@pytest.mark.kafka
def test_sigterm_to_the_pipeline_benchmark_stops_its_worker(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    out, err = tmp_path / "bench.out", tmp_path / "bench.err"
    bench = rakshit("bench", "pipeline", "--traffic", "simulator", "--transactions", "2000",
                    "--rounds", "1", out=out, err=err, env=cli_env(settings))
    try:
        deadline = time.monotonic() + 120
        while not (kids := rakshit_children(bench.pid)):
            assert bench.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the benchmark started no worker"
            time.sleep(0.2)
        worker = kids["worker"]
        bench.send_signal(signal.SIGTERM)
        code = bench.wait(60)
        stderr = err.read_text()
        assert code == 128 + signal.SIGTERM, stderr
        assert last_line(stderr) == ("rakshit bench: stopped by SIGTERM; stopped worker pid "
                                     f"{worker}")
        assert_gone({"worker": worker}, within_s=5.0)
    finally:
        if bench.poll() is None:
            bench.kill()
