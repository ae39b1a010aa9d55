"""The embedded broker: a single-node Apache Kafka in KRaft mode, run from Maven's jars.

`infra/kafka/pom.xml` names the broker (`org.apache.kafka:kafka_2.13`) and a
log4j2 SLF4J binding; `make` (or the first `onceflow up`) copies them with
their runtime dependencies into `infra/kafka/target/kafka-libs/`. The broker
runs from that folder on the machine's JDK 17+, with its data directory under
the stack directory, so that `down` / `up` loses nothing:

    <data_dir>/
        server.properties   generated on every start (ports may change)
        log4j2.properties   the broker's logging, to its stdout (the log file)
        cluster.id          made once; the storage is formatted with it once
        ports.json          the listener ports, reused at the next start when free
        logs/               Kafka's log.dirs: topics, offsets, metadata

Ready means the broker answered a metadata request and listed itself, not
that some time has passed; stop is SIGTERM and a wait for the process to end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "BrokerStartError",
    "EmbeddedKafka",
    "JavaMissingError",
    "ensure_kafka_libs",
    "free_port",
    "java_binary",
    "kafka_libs_dir",
    "pid_alive",
    "stop_pid",
    "wait_for_port",
]

KAFKA_VERSION = "4.4.0"
"""The broker `infra/kafka/pom.xml` pins (kept equal by a test)."""

_POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
_LIBS_ENV = "ONCEFLOW_KAFKA_LIBS"
_READY_MARK = ".complete"
_MIN_JAVA = 17


class BrokerStartError(RuntimeError):
    """The broker could not be fetched, formatted or started; the message says why."""


class JavaMissingError(BrokerStartError):
    """No JDK 17+ to run the broker on."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _port_soon_free(host: str, port: int, within: float = 10.0) -> bool:
    """Whether `port` is free, or frees up within `within` seconds: a broker killed a
    moment ago leaves its port held while the kernel closes its connections, and the
    clients that know its address reconnect only to the same port."""
    deadline = time.monotonic() + within
    while not _port_free(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


# -- the JDK and the jars ---------------------------------------------------------------


def java_binary() -> str:
    """The `java` to run the broker with: $JAVA_HOME's, else the one on PATH; 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    candidate = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise JavaMissingError(
            "no Java found: the embedded Kafka broker needs a JDK 17 or newer "
            "(Debian: `apt-get install openjdk-17-jre-headless`), or set "
            "ONCEFLOW_BOOTSTRAP_SERVERS to a Kafka cluster you already run"
        )
    out = subprocess.run([candidate, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = 0
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0" is Java 8
            major = int(match.group(2))
    if major < _MIN_JAVA:
        raise JavaMissingError(
            f"{candidate} is Java {major or 'of an unknown version'}; the embedded Kafka broker "
            f"needs Java {_MIN_JAVA} or newer (Debian: `apt-get install openjdk-17-jre-headless`, "
            "then point JAVA_HOME at it)"
        )
    return candidate


def kafka_libs_dir() -> Path:
    """Where the broker's jars are: $ONCEFLOW_KAFKA_LIBS, else beside the pom that names them."""
    env = os.environ.get(_LIBS_ENV)
    return Path(env) if env else _POM.parent / "target" / "kafka-libs"


def ensure_kafka_libs(libs: Path | None = None) -> Path:
    """The folder of broker jars, fetched through Maven the first time (cached after)."""
    libs = libs or kafka_libs_dir()
    mark = libs / _READY_MARK
    if mark.exists() and mark.read_text().strip() == KAFKA_VERSION:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None or not _POM.exists():
        raise BrokerStartError(
            f"the Kafka jars are not in {libs} and cannot be fetched here "
            f"({'no `mvn` on PATH' if mvn is None else f'{_POM} is missing'}): install Maven "
            f"and run `make install`, or point {_LIBS_ENV} at a folder of Kafka {KAFKA_VERSION} "
            "jars"
        )
    shutil.rmtree(libs, ignore_errors=True)  # no jar of another version on the classpath
    libs.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [mvn, "-B", "-q", "-f", str(_POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}"],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BrokerStartError(f"Maven could not fetch Kafka {KAFKA_VERSION}:\n{tail}")
    (libs / _READY_MARK).write_text(KAFKA_VERSION + "\n")
    return libs


# -- stopping a process, ours or another's ------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited; its parent reaps it
    except OSError:
        return True


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM `pid`, wait up to `timeout` for it to end, then SIGKILL; False if it was gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


# -- the broker -----------------------------------------------------------------------------

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
# per-request and per-partition chatter: a test session creates thousands of partitions
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
logger.log.name = org.apache.kafka.storage.internals.log
logger.log.level = WARN
logger.unified.name = kafka.log
logger.unified.level = WARN
logger.cluster.name = kafka.cluster
logger.cluster.level = WARN
logger.rm.name = kafka.server.ReplicaFetcherManager
logger.rm.level = WARN
logger.rlm.name = kafka.server.ReplicaManager
logger.rlm.level = WARN
logger.coord.name = org.apache.kafka.coordinator.group
logger.coord.level = WARN
logger.groupmeta.name = kafka.coordinator.group
logger.groupmeta.level = WARN
"""


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 characters).

    Never one that starts with "-", as Kafka's own ids never do: the storage
    tool's argument parser would read it as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass
class EmbeddedKafka:
    """One Apache Kafka process, broker and controller combined, on loopback ports.

    `data_dir` is kept across restarts; `wipe()` removes it. `heap_mb` and the
    serial GC size the JVM for a 2-core machine that also runs every role.
    """

    data_dir: Path
    log_path: Path | None = None
    host: str = "127.0.0.1"
    heap_mb: int = 512
    extra_config: dict[str, str] = field(default_factory=dict)
    port: int = 0
    controller_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    def wipe(self) -> bool:
        """Remove the broker's data (topics, offsets, cluster id); True if there was any."""
        existed = self.data_dir.exists()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return existed

    # -- configuration -------------------------------------------------------------

    def _choose_ports(self) -> None:
        saved: dict[str, int] = {}
        ports_file = self.data_dir / "ports.json"
        if ports_file.exists():
            try:
                saved = json.loads(ports_file.read_text())
            except ValueError:
                saved = {}
        for attr, key in (("port", "broker"), ("controller_port", "controller")):
            if getattr(self, attr):
                continue
            old = saved.get(key)
            taken = {self.port, self.controller_port}
            if old and old not in taken and _port_soon_free(self.host, old):
                setattr(self, attr, old)
            else:
                port = free_port(self.host)
                while port in taken:
                    port = free_port(self.host)
                setattr(self, attr, port)
        ports_file.write_text(json.dumps({"broker": self.port,
                                          "controller": self.controller_port}))

    def server_properties(self) -> dict[str, str]:
        """The broker's configuration: Kafka's defaults but where one node on 2 cores needs other."""
        conf = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},"
                         f"CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.logs_dir.resolve()),
            # One replica of everything; the transaction log's min ISR of 2
            # would refuse every transaction on one node.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "5",
            # A member that died inside a transaction holds back every read_committed
            # reader of its partitions until the coordinator aborts it: look for
            # such transactions every second, not every 10 s.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # A group is formed when its first member joins, not 3 s later.
            "group.initial.rebalance.delay.ms": "0",
            # A clean stop tells the controller the broker is leaving, so the
            # next start registers at once instead of waiting out the old
            # registration's session; a crash leaves a session that ends in 3 s.
            "controlled.shutdown.enable": "true",
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            # Two cores: a thread or two each, instead of Kafka's 3 + 8.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "2",
            "background.threads": "2",
            # Compaction and retention that actually run on a laptop: a small
            # dedupe buffer (128 MiB on the heap by default), a cleaner that
            # looks every second, retention checked every 10 s after a 1 s
            # start-up delay (internal setting, 30 s by default).
            "log.cleaner.enable": "true",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            "log.cleaner.io.buffer.size": str(256 * 1024),
            "log.cleaner.backoff.ms": "1000",
            "log.retention.check.interval.ms": "10000",
            "log.initial.task.delay.ms": "1000",
            "log.segment.delete.delay.ms": "1000",
            "file.delete.delay.ms": "1000",
            # Index files are preallocated (and mapped) at this size per
            # segment: 1 MiB instead of 10 keeps thousands of partitions cheap.
            "log.index.size.max.bytes": str(1024 * 1024),
            "auto.create.topics.enable": "false",
        }
        conf.update(self.extra_config)
        return conf

    def _write_config(self) -> Path:
        props = self.data_dir / "server.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties().items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        return props

    def _jvm(self, java: str, libs: Path) -> list[str]:
        return [
            java,
            f"-Xms{min(self.heap_mb, 256)}m", f"-Xmx{self.heap_mb}m",
            # Serial GC and two compiler threads: the broker shares 2 cores with every role.
            "-XX:+UseSerialGC", "-XX:CICompilerCount=2", "-XX:+ExitOnOutOfMemoryError",
            "-XX:MaxDirectMemorySize=256m", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={(self.data_dir / 'log4j2.properties').resolve()}",
            f"-Dkafka.logs.dir={self.data_dir.resolve()}",
            "-cp", f"{libs}/*",
        ]

    def _format(self, java: str, libs: Path, props: Path) -> None:
        """Format the storage once per data directory (the broker refuses unformatted storage)."""
        if (self.logs_dir / "meta.properties").exists():
            return
        id_file = self.data_dir / "cluster.id"
        if not id_file.exists():
            id_file.write_text(_cluster_id())
        proc = subprocess.run(
            [*self._jvm(java, libs), "kafka.tools.StorageTool", "format",
             f"--cluster-id={id_file.read_text().strip()}", f"--config={props}",
             "--ignore-formatted"],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise BrokerStartError(
                f"formatting Kafka's storage in {self.logs_dir} failed: "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}"
            )

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, detach: bool = False, timeout: float = 90.0) -> EmbeddedKafka:
        """Format the storage if new, start the broker, and wait until it answers."""
        java = java_binary()
        libs = ensure_kafka_libs()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._choose_ports()
        props = self._write_config()
        self._format(java, libs, props)
        log_path = self.log_path or self.data_dir / "broker.log"
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self._jvm(java, libs), "kafka.Kafka", str(props)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )
        try:
            self._wait_ready(timeout, log_path)
        except BaseException:
            self.stop(timeout=10)
            raise
        return self

    def _wait_ready(self, timeout: float, log_path: Path) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 1000,
                             "log_level": 0})
        while True:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                tail = _tail(log_path, 20)
                raise BrokerStartError(
                    f"Kafka exited with code {code} while starting; the end of {log_path}:\n{tail}"
                )
            if wait_for_port(self.host, self.port, 0.2):
                try:
                    md = admin.list_topics(timeout=1.0)
                    if md.brokers:
                        return
                except Exception:  # not answering yet
                    pass
            if time.monotonic() > deadline:
                raise BrokerStartError(
                    f"Kafka did not answer a metadata request within {timeout:.0f} s; "
                    f"see {log_path}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM and wait for a clean shutdown (SIGKILL after `timeout`)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no flush, no clean shutdown."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
