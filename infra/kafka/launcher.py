"""Run a real single-node Apache Kafka (KRaft) broker from Maven Central jars, on 127.0.0.1 only.

Why not a container: CI and developer machines here have Java and Maven but no Docker engine, and
integration tests must talk to a real broker. The jars are resolved once with
`mvn dependency:copy-dependencies` on the pom beside this file and cached under the home folder;
the broker's data, logs and pid live there too (git-ignored).

Start is idempotent (a broker already answering is reused) and returns only when the broker answers
a metadata request; a port being open is not enough. Stop sends SIGTERM, waits for a clean
shutdown and only then kills.

With auth="scram" the broker refuses anyone who does not log in: clients use SASL/SCRAM-SHA-512
on the loopback listener, and the StandardAuthorizer allows only what an ACL grants (the ACLs
themselves are streams.admin's, made from the topic list). One password per principal is
generated at the first start into `credentials_dir/<user>.password` (directory 0700, files 0600)
and never printed. The broker's own principal ("broker") logs in with SASL/PLAIN, whose password
lives only in that file and in the 0600 server.properties; through it the launcher creates the
SCRAM users after start, so no password is ever on a command line (`kafka-storage format
--add-scram` would put them there, readable by every local user through ps).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

POM = Path(__file__).resolve().parent / "pom.xml"

# What both brokers below share: one node's log, replication and retention settings.
_STORAGE_PROPERTIES = """\
log.dirs={data_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable={auto_create}
log.segment.bytes=67108864
log.retention.check.interval.ms=60000
# One node is the whole cluster: fenced, it leaves clients no broker at all, and librdkafka then
# forgets it and goes back to its bootstrap servers only minutes later (a worker without
# partitions after a 15 s SIGSTOP, `rakshit bench faults --only broker-pause`). Its controller
# (the same process) fences it after this long without a heartbeat (Kafka's default: 9 s). The
# price: restarted after kill -9, it waits out its old registration's session before it serves,
# and it gives up after 60 s (initial.broker.registration.timeout.ms), so this stays well under.
broker.session.timeout.ms=20000
"""

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
""" + _STORAGE_PROPERTIES.replace("{auto_create}", "true")

# The same broker with authentication on. The client listener takes SCRAM from the principals the
# launcher creates and PLAIN from the broker's own principal only (its JAAS line lists just that
# user); the controller listener takes PLAIN from the broker only. Both stay on 127.0.0.1.
SECURED_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=CLIENT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=CLIENT://127.0.0.1:{port}
inter.broker.listener.name=CLIENT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,CLIENT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.client.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.client.plain.sasl.jaas.config={plain_jaas}
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={plain_jaas}
sasl.mechanism.controller.protocol=PLAIN
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{broker_user};User:{admin_user}
allow.everyone.if.no.acl.found=false
""" + _STORAGE_PROPERTIES.replace("{auto_create}", "false")

PLAIN_JAAS = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
              'username="{user}" password="{password}" user_{user}="{password}";')

# Principals: the broker itself and the operator (super users), and one per service, each held to
# its ACLs (streams.admin.ACLS).
BROKER_USER = "broker"
ADMIN_USER = "admin"
PRINCIPALS = (BROKER_USER, ADMIN_USER, "worker", "api", "gateway")
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192

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


def answers(bootstrap: str, timeout_s: float = 2.0,
            client_config: dict[str, Any] | None = None) -> bool:
    """True when the cluster answers a metadata request with at least one broker
    (client_config: the login to ask with, when the broker wants one)."""
    config: dict[str, Any] = {**(client_config or {}), "bootstrap.servers": bootstrap,
                              "socket.timeout.ms": 2000, "log_level": 0,
                              "logger": _SilentLogger()}
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


def write_secret(path: Path, value: str) -> None:
    """Write a file only its owner can read (0600 from its creation, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    os.replace(tmp, path)


def ensure_credentials(directory: Path, users: tuple[str, ...] = PRINCIPALS) -> dict[str, Path]:
    """One random password per principal, generated once: user -> its 0600 file. Two brokers
    starting at once (test sessions share the directory) keep whichever file came first: a
    password is linked into place only where none exists, never replaced."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    files = {}
    for user in users:
        path = directory / f"{user}.password"
        if not path.exists():
            tmp = directory / f".{user}.{os.getpid()}.new"
            write_secret(tmp, secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            tmp.unlink()
        path.chmod(0o600)
        files[user] = path
    return files


def register_users(bootstrap: str, credentials_dir: Path,
                   users: tuple[str, ...] = PRINCIPALS) -> None:
    """Create (or re-key, after a password file was replaced) each principal's SCRAM credential,
    logged in as the broker's own principal (PLAIN): the embedded broker's start, and
    docker-compose's set-up step (`rakshit topics --create --users`)."""
    def password(user: str) -> str:
        return (credentials_dir / f"{user}.password").read_text().strip()

    admin = AdminClient({"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanism": "PLAIN", "sasl.username": BROKER_USER,
                         "sasl.password": password(BROKER_USER)})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, password(user).encode())
        for user in users if user != BROKER_USER]
    for future in admin.alter_user_scram_credentials(upserts).values():
        future.result()


# docker-compose's containers: each service principal's container sees only its own password
# (a volume subpath, services/<user>/password); Kafka's sees only broker/ (its JAAS line, read
# through Kafka's FileConfigProvider, and a client login for its health check).
COMPOSE_SERVICES = ("worker", "api", "gateway")


def compose_credentials(directory: Path, broker_uid: int | None = None,
                        service_uid: int | None = None) -> list[Path]:
    """Every principal's password (ensure_credentials) and the per-container copies described
    above, each file 0600; when run as root, owned by the uid its container runs as. Returns the
    files written (never their contents)."""
    files = ensure_credentials(directory)
    broker = files[BROKER_USER].read_text().strip()
    plain = PLAIN_JAAS.format(user=BROKER_USER, password=broker)
    login = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
             f'username="{BROKER_USER}" password="{broker}";')
    written: list[tuple[Path, int | None]] = [
        (directory / "broker" / "jaas.properties", broker_uid),
        (directory / "broker" / "client.properties", broker_uid)]
    write_secret(written[0][0], f"plain={plain}\n")
    write_secret(written[1][0], "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n"
                                f"sasl.jaas.config={login}\n")
    for user in COMPOSE_SERVICES:
        path = directory / "services" / user / "password"
        write_secret(path, files[user].read_text())
        written.append((path, service_uid))
    for path, uid in written:
        path.parent.chmod(0o700)
        if uid is not None:
            os.chown(path.parent, uid, uid)
            os.chown(path, uid, uid)
    return [path for path, _ in written]


def _die_with(parent: int) -> Callable[[], None]:
    """For Popen's preexec_fn: SIGTERM to the child when its parent goes (prctl
    PR_SET_PDEATHSIG, kept across exec), and at once if the parent is already gone."""
    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
    return arm


PR_SET_PDEATHSIG = 1


class EmbeddedBroker:
    """One KRaft broker+controller process, managed through files in `home`."""

    def __init__(self, home: Path, version: str, port: int = 9092, controller_port: int = 9093,
                 heap: str = "1G", auth: str = "none", credentials_dir: Path | None = None) -> None:
        if auth not in ("none", "scram"):
            raise ValueError(f"auth must be none or scram, not {auth!r}")
        self.auth = auth
        self.credentials_dir = credentials_dir or home / "kafka-credentials"
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

    @property
    def secured(self) -> bool:
        return self.auth == "scram"

    def _password(self, user: str) -> str:
        return (self.credentials_dir / f"{user}.password").read_text().strip()

    def client_config(self, user: str = ADMIN_USER) -> dict[str, Any]:
        """librdkafka settings to reach this broker as `user` (nothing to add without auth).
        The broker's own principal logs in with PLAIN; everyone else with SCRAM."""
        if not self.secured:
            return {}
        return {"security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN" if user == BROKER_USER else SCRAM_MECHANISM,
                "sasl.username": user, "sasl.password": self._password(user)}

    def _answers(self, timeout_s: float, user: str = BROKER_USER) -> bool:
        if self.secured and not (self.credentials_dir / f"{user}.password").exists():
            return False
        return answers(self.bootstrap, timeout_s, self.client_config(user))

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
        return BrokerStatus(self.bootstrap, pid, self._alive(pid), self._answers(1.0),
                            self.version, self.home)

    def _configure(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        props = self.run_dir / "server.properties"
        if self.secured:
            ensure_credentials(self.credentials_dir)
            jaas = PLAIN_JAAS.format(user=BROKER_USER, password=self._password(BROKER_USER))
            # The broker's password is in here: 0600 like the credential files.
            write_secret(props, SECURED_SERVER_PROPERTIES.format(
                port=self.port, controller_port=self.controller_port, data_dir=self.data_dir,
                plain_jaas=jaas, broker_user=BROKER_USER, admin_user=ADMIN_USER))
        else:
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

    def start(self, timeout_s: float = 90.0, with_parent: bool = False) -> BrokerStatus:
        """Start the broker unless one answers already. ``with_parent``: the broker is this
        run's alone (the demo without --keep-broker), so it gets SIGTERM when the thread that
        started it goes away, even by kill -9 (Linux's parent-death signal); `rakshit broker
        start` leaves it running on purpose."""
        if self._answers(1.0):
            self._ensure_users()
            return self.status()
        pid = self._pid()
        if self._alive(pid):
            if self.secured and answers(self.bootstrap, 2.0):
                # One started before authentication was the default: it answers without a login.
                raise BrokerError(f"the broker at {self.bootstrap} (pid {pid}) runs without "
                                  "authentication; stop it (rakshit broker stop) to restart it "
                                  "with SASL/SCRAM, or set RAKSHIT_KAFKA_AUTH=none")
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
                                start_new_session=True,
                                preexec_fn=_die_with(os.getpid()) if with_parent else None)
        self.pid_file.write_text(str(proc.pid))
        return self._wait_ready(proc.pid, timeout_s)

    def _wait_ready(self, pid: int | None, timeout_s: float) -> BrokerStatus:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._answers(1.0):
                self._ensure_users(deadline)
                return self.status()
            if not self._alive(pid):
                raise BrokerError(f"broker exited during start-up; see {self.log_file} and "
                                  f"{self.run_dir / 'broker.out'}")
            time.sleep(0.3)
        raise BrokerError(f"broker did not answer within {timeout_s:.0f}s; see {self.log_file}")

    def _ensure_users(self, deadline: float | None = None) -> None:
        """Create (or re-key, after a password file was replaced) every service principal's SCRAM
        credential, as the broker's own principal; return once the admin can log in with it."""
        if not self.secured:
            return
        ensure_credentials(self.credentials_dir)
        register_users(self.bootstrap, self.credentials_dir)
        deadline = deadline or time.monotonic() + 30.0
        while not self._answers(1.0, ADMIN_USER):
            if time.monotonic() > deadline:
                raise BrokerError("the admin principal's SCRAM login is not accepted; see "
                                  f"{self.log_file}")
            time.sleep(0.2)

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
