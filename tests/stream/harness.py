"""Real brokers and real worker processes for the integration tests (no mocked Kafka anywhere).

Broker choice, in order: KAFKA_BOOTSTRAP if set; testcontainers' Kafka if a Docker daemon answers; the
local Apache Kafka (`nextclick broker --engine kafka`'s) when Java and its jars are there
(scripts/install_kafka.sh); else the embedded Tansu broker. NEXTCLICK_TEST_BROKER=tansu|kafka picks one
of the last two by name (RELIABILITY.md's figures on both brokers come from that).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream.kafka.broker import EmbeddedBroker, KafkaBroker, LocalBroker, kafka_available
from stream.kafka.clients import consumer, producer
from stream.settings import Topics


def docker_answers() -> bool:
    return (
        bool(shutil.which("docker"))
        and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )


@contextlib.contextmanager
def any_broker() -> Iterator[str]:
    chosen = os.environ.get("NEXTCLICK_TEST_BROKER")
    if os.environ.get("KAFKA_BOOTSTRAP") and not chosen:
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    if not chosen and docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
            return
    with local_broker(chosen or ("kafka" if kafka_available() else "tansu")) as broker:
        yield broker.bootstrap


@contextlib.contextmanager
def local_broker(engine: str) -> Iterator[LocalBroker]:
    """A broker of our own (one a test may kill, freeze or restart): Apache Kafka in a fresh temporary
    data folder, or Tansu."""
    if engine == "kafka" and not kafka_available():
        import pytest

        pytest.skip("no local Apache Kafka (Java and scripts/install_kafka.sh)")
    with tempfile.TemporaryDirectory(prefix="nextclick-kafka-") as data:
        broker = KafkaBroker(data) if engine == "kafka" else EmbeddedBroker()
        with broker:
            yield broker


def start_trainer(bootstrap: str, topics: Topics, registry: Path, log_dir: Path, out: Path, *args: str):
    """`nextclick trainer` as a child process in its own process group, its output in `out`."""
    return subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "trainer", "--registry", str(registry), "--log-dir", str(log_dir),
         *args],
        env={**os.environ, **topics.env(), "KAFKA_BOOTSTRAP": bootstrap},
        stdout=open(out, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def wait_until(predicate, timeout: float) -> float:
    """Seconds until `predicate()` held, polled every 0.1 s; TimeoutError past `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise TimeoutError


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
    keys: set[bytes] | None = None,
) -> list[Any]:
    """Records of a topic from its beginning until `count` arrived (and, if given, every event id in
    `events` and every key in `keys`), then `settle` more seconds so that duplicates would show, or until
    the timeout."""
    cons = consumer(
        bootstrap, topic, from_beginning=True, request_timeout_ms=15000
    )  # an unanswered fetch is retried
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    done_at = None
    try:
        while time.monotonic() < deadline:
            for records in cons.poll(timeout_ms=200).values():
                out.extend(records)
                if events:
                    events = events - {json.loads(r.value).get("event_id") for r in records}
                if keys:
                    keys = keys - {r.key for r in records}
            if len(out) >= count and not events and not keys and done_at is None:
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > settle:
                break
    finally:
        cons.close()
    return out


def stored_sessions(bootstrap: str, topics: Topics) -> dict:
    """The session table as its changelog holds it, read to its real end (after the workers stopped), each
    session whole (`assembled`)."""
    import asyncio

    from stream.settings import WorkerSettings
    from stream.worker.changelog import read_changelog

    partitions = list(range(WorkerSettings().partitions))
    latest = asyncio.run(read_changelog(bootstrap, f"{topics.app_id}-sessions-changelog", partitions))[0]
    return assembled(latest)


def assembled(latest: dict) -> dict:
    """The changelog's last values (JSON objects, None for tombstones) as whole sessions, the way a restarted
    worker puts them together (`stream.worker.session.assemble`): chunks in front of their session's own
    clicks, no chunk records left."""
    from stream.worker.session import Absorbed, assemble, from_stored

    records = {key: from_stored(value) for key, value in latest.items() if value is not None}
    records = {key: record for key, record in records.items() if not isinstance(record, Absorbed)}
    assemble(records)
    return {key: {**latest[key], "items": r.items, "times": r.times.tolist()} for key, r in records.items()}


def group_positions(bootstrap: str, group: str, topic: str) -> dict[int, tuple[int | None, int]] | str:
    """partition -> (the group's committed offset, the broker's end offset): for failure messages, so it
    never raises (an error comes back as its text)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        cons = KafkaConsumer(bootstrap_servers=bootstrap)
    except Exception as exc:
        return repr(exc)
    try:
        committed = {
            tp.partition: m.offset
            for tp, m in admin.list_consumer_group_offsets(group).items()
            if tp.topic == topic
        }
        parts = [TopicPartition(topic, p) for p in sorted(cons.partitions_for_topic(topic) or [])]
        ends = cons.end_offsets(parts)
        return {tp.partition: (committed.get(tp.partition), ends[tp]) for tp in parts}
    except Exception as exc:
        return repr(exc)
    finally:
        admin.close()
        cons.close()


class Load:
    """Clicks at a steady rate over a fixed set of sessions from a background thread, each remembered with
    its send time, so a fault scenario can tell which clicks were answered, twice or never."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        items: list[str],
        sessions: int = 40,
        rate: float = 80.0,
        idempotent: bool = False,
    ):
        """`idempotent`: a producer whose retries across a broker restart cannot write a click twice."""
        self.bootstrap, self.topic, self.items = bootstrap, topic, items
        self.sessions, self.rate, self.idempotent = sessions, rate, idempotent
        self.sent: list[tuple[str, str, str, float]] = []  # (event id, session, item, wall time sent)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        prod = producer(self.bootstrap, idempotent=self.idempotent)
        rng = random.Random(11)
        i = 0
        started = time.monotonic()
        while not self._stop.is_set():
            session = f"load{i % self.sessions}"
            item = self.items[rng.randrange(len(self.items))]
            event = f"load-{i}"
            key, value = click(session, item, event)
            prod.send(self.topic, key=key, value=value)
            self.sent.append((event, session, item, time.time()))
            i += 1
            time.sleep(max(0.0, started + i / self.rate - time.monotonic()))
        prod.flush()
        prod.close()

    def history(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for _, session, item, _ in self.sent:
            out.setdefault(session, []).append(item)
        return out
