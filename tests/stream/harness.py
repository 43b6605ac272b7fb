"""Real brokers and real worker processes for the integration tests (no mocked Kafka anywhere).

Broker choice, in order: KAFKA_BOOTSTRAP if set; testcontainers' Kafka if a Docker daemon answers; else
the embedded Tansu broker on a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream.broker import EmbeddedBroker, free_port
from stream.clients import consumer, producer
from stream.demo import scrape
from stream.processes import stop_group


@contextlib.contextmanager
def any_broker() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        with contextlib.suppress(ImportError):
            from testcontainers.kafka import KafkaContainer

            with KafkaContainer() as kafka:
                yield kafka.get_bootstrap_server()
                return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


class Topics:
    """Fresh topic names and a fresh consumer group for one test, so tests never see each other's data."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.app_id = f"nc-test-{tag}"
        self.clicks = f"clicks-{tag}"
        self.recommendations = f"recs-{tag}"
        self.dlq = f"dlq-{tag}"
        self.sessions = f"sessions-{tag}"
        self.model_updates = f"updates-{tag}"

    def env(self) -> dict[str, str]:
        return {
            "NEXTCLICK_APP_ID": self.app_id,
            "NEXTCLICK_TOPIC_CLICKS": self.clicks,
            "NEXTCLICK_TOPIC_RECOMMENDATIONS": self.recommendations,
            "NEXTCLICK_TOPIC_DLQ": self.dlq,
            "NEXTCLICK_TOPIC_SESSIONS": self.sessions,
            "NEXTCLICK_TOPIC_MODEL_UPDATES": self.model_updates,
        }


class Worker:
    """`nextclick worker` as a child process, with its own data dir and metrics port."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        checkpoint: Path | None,
        workdir: Path,
        registry: Path | None = None,
        **env: str,
    ) -> None:
        self.metrics_port = free_port()
        self.log = workdir / f"worker-{self.metrics_port}.log"
        full_env = {
            **os.environ,
            **topics.env(),
            "KAFKA_BOOTSTRAP": bootstrap,
            "NEXTCLICK_DATA_DIR": str(workdir / f"data-{self.metrics_port}"),
            "NEXTCLICK_METRICS_PORT": str(self.metrics_port),
            "NEXTCLICK_EXPIRY_INTERVAL": "1",
            **env,
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream.cli",
                "worker",
                *(["--registry", str(registry)] if registry else ["--checkpoint", str(checkpoint)]),
                "--loglevel",
                "info",
            ],
            env=full_env,
            stdout=open(self.log, "wb"),  # noqa: SIM115 - the child keeps it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            return r.read().decode()

    def metric(self, name: str) -> float:
        """One metric summed over its label sets (0 while the endpoint is not up)."""
        return scrape(self.metrics_port).get(name, 0.0)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Ready = the worker serves metrics and has been assigned partitions (its consumer is running)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-3000:]}")
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            if "Worker: Ready" in text or "[^Worker]: Ready" in text:
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_group(self.proc, timeout=20, sig=sig)


def send(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    prod = producer(bootstrap)
    for key, value in messages:
        prod.send(topic, key=key, value=value)
    prod.flush()
    prod.close()


def click(session: str, item: str, event: str, ts: float | None = None) -> tuple[bytes, bytes]:
    value: dict[str, Any] = {"session_id": session, "item_id": item, "event_id": event}
    if ts is not None:
        value["timestamp"] = ts
    return session.encode(), json.dumps(value).encode()


def collect(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float = 60.0,
    settle: float = 1.5,
    events: set[str] | None = None,
) -> list[Any]:
    """Records of a topic from its beginning until `count` arrived (and, if given, every event id in
    `events`), then `settle` more seconds so that duplicates would show, or until the timeout."""
    cons = consumer(bootstrap, topic, from_beginning=True)
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    done_at = None
    try:
        while time.monotonic() < deadline:
            for records in cons.poll(timeout_ms=200).values():
                out.extend(records)
                if events:
                    events = events - {json.loads(r.value).get("event_id") for r in records}
            if len(out) >= count and not events and done_at is None:
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > settle:
                break
    finally:
        cons.close()
    return out
