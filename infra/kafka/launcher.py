"""Run a real single-node Apache Kafka (KRaft) broker from Maven Central jars, on 127.0.0.1 only.

Why not a container: CI and developer machines here have Java and Maven but no Docker engine, and
integration tests must talk to a real broker. The jars are resolved once with
`mvn dependency:copy-dependencies` on the pom beside this file and cached under the home folder;
the broker's data, logs and pid live there too (git-ignored).

Start is idempotent (a broker already answering is reused) and returns only when the broker answers
a metadata request; a port being open is not enough. Stop sends SIGTERM, waits for a clean
shutdown and only then kills.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

POM = Path(__file__).resolve().parent / "pom.xml"

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.segment.bytes=67108864
log.retention.check.interval.ms=60000
"""

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says what to look at."""


@dataclass(frozen=True)
class BrokerStatus:
    bootstrap: str
    pid: int | None
    process_alive: bool
    answering: bool
    version: str
    home: Path

    def describe(self) -> str:
        state = "up" if self.answering else ("starting or hung" if self.process_alive else "down")
        pid = f"pid {self.pid}" if self.pid else "no pid"
        return f"kafka {self.version} at {self.bootstrap}: {state} ({pid}, home {self.home})"


def answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when the cluster answers a metadata request with at least one broker."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000,
                              "log_level": 0, "logger": _SilentLogger()}
    admin = AdminClient(config)
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except Exception:
        return False
    return bool(meta.brokers)


class _SilentLogger:
    """librdkafka logs every refused connection while we poll for readiness; that is expected."""

    def log(self, *args: object) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        return lambda *a, **k: None


class EmbeddedBroker:
    """One KRaft broker+controller process, managed through files in `home`."""

    def __init__(self, home: Path, version: str, port: int = 9092, controller_port: int = 9093,
                 heap: str = "1G") -> None:
        self.home = home
        self.version = version
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.lib_dir = home / "kafka" / version / "lib"
        self.run_dir = home / f"broker-{port}"
        self.data_dir = self.run_dir / "data"
        self.pid_file = self.run_dir / "broker.pid"
        self.log_file = self.run_dir / "broker.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- jars --------------------------------------------------------------------------------

    def ensure_jars(self) -> Path:
        """Resolve the broker's jars from Maven Central once; later calls reuse the cache."""
        marker = self.lib_dir / ".complete"
        if marker.exists():
            return self.lib_dir
        if shutil.which("mvn") is None:
            raise BrokerError("Maven (mvn) is not on PATH; it resolves the Kafka jars")
        tmp = self.lib_dir.with_name("lib.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = ["mvn", "-q", "-B", "-f", str(POM), f"-Dkafka.version={self.version}",
               "dependency:copy-dependencies", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BrokerError(f"mvn could not resolve Kafka {self.version}:\n{proc.stdout[-2000:]}"
                              f"{proc.stderr[-2000:]}")
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        tmp.rename(self.lib_dir)
        marker.write_text(self.version)
        return self.lib_dir

    # -- lifecycle ---------------------------------------------------------------------------

    def _pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def _alive(pid: int | None) -> bool:
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie child still "exists"; treat it as dead.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat.split(")")[-1].split()[0] != "Z"
        except OSError:
            return True

    def status(self) -> BrokerStatus:
        pid = self._pid()
        return BrokerStatus(self.bootstrap, pid, self._alive(pid), answers(self.bootstrap, 1.0),
                            self.version, self.home)

    def _configure(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        props = self.run_dir / "server.properties"
        props.write_text(SERVER_PROPERTIES.format(port=self.port,
                                                  controller_port=self.controller_port,
                                                  data_dir=self.data_dir))
        (self.run_dir / "log4j2.properties").write_text(LOG4J2.format(log_file=self.log_file))
        cluster_file = self.run_dir / "cluster-id"
        if not cluster_file.exists():
            raw = uuid.uuid4().bytes
            cluster_file.write_text(base64.urlsafe_b64encode(raw).decode().rstrip("="))
        return props

    def _java(self, main: str, *args: str, heap: str = "256M") -> list[str]:
        return ["java", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.run_dir / 'log4j2.properties'}",
                "-cp", f"{self.lib_dir}/*", main, *args]

    def start(self, timeout_s: float = 90.0) -> BrokerStatus:
        if answers(self.bootstrap, 1.0):
            return self.status()
        pid = self._pid()
        if self._alive(pid):
            # Started by an earlier call and still coming up: wait for it rather than start twice.
            return self._wait_ready(pid, timeout_s)
        self.ensure_jars()
        props = self._configure()
        cluster_id = (self.run_dir / "cluster-id").read_text().strip()
        # StorageTool calls System.exit, so it runs in its own JVM. -g: already formatted is ok.
        # "--cluster-id=ID", not "-t ID": a base64url id may start with "-" and parse as a flag.
        fmt = subprocess.run(self._java("kafka.tools.StorageTool", "format",
                                        f"--cluster-id={cluster_id}", f"--config={props}",
                                        "--ignore-formatted"),
                             capture_output=True, text=True, check=False)
        if fmt.returncode != 0:
            raise BrokerError(f"formatting {self.data_dir} failed:\n{fmt.stdout}{fmt.stderr}")
        out = (self.run_dir / "broker.out").open("ab")
        proc = subprocess.Popen(self._java("kafka.Kafka", str(props), heap=self.heap),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        return self._wait_ready(proc.pid, timeout_s)

    def _wait_ready(self, pid: int | None, timeout_s: float) -> BrokerStatus:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if answers(self.bootstrap, 1.0):
                return self.status()
            if not self._alive(pid):
                raise BrokerError(f"broker exited during start-up; see {self.log_file} and "
                                  f"{self.run_dir / 'broker.out'}")
            time.sleep(0.3)
        raise BrokerError(f"broker did not answer within {timeout_s:.0f}s; see {self.log_file}")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop cleanly; returns False when nothing was running."""
        pid = self._pid()
        if not self._alive(pid):
            self.pid_file.unlink(missing_ok=True)
            return False
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
            _reap(pid)
        if self._alive(pid):
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True


def _reap(pid: int) -> None:
    """Collect the exit status when the broker is our own child, so it is not left a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
