"""kafka-python clients for the command line (replay, tail) and tests, as the product's users would write
them: consumer groups join in ~3 s with the session settings measured on the embedded broker
(6 s session, 1 s heartbeat; the broker holds each JoinGroup for half the session timeout)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
from tqdm import tqdm

from model.errors import UserError
from stream.settings import SecuritySettings


def security_settings() -> dict[str, Any]:
    """SASL / SSL settings for a real cluster (`stream.settings.SecuritySettings`), as kafka-python names
    them."""
    sec = SecuritySettings.from_env()
    out: dict[str, Any] = {}
    if sec.security_protocol:
        out["security_protocol"] = sec.security_protocol
    if sec.sasl_mechanism:
        out["sasl_mechanism"] = sec.sasl_mechanism
        out["sasl_plain_username"] = sec.sasl_username
        out["sasl_plain_password"] = sec.sasl_password
    if sec.ssl_cafile:
        out["ssl_cafile"] = sec.ssl_cafile
    return out


def aiokafka_security() -> dict[str, Any]:
    """The same settings for aiokafka clients, which take an SSL context instead of a CA file."""
    out = security_settings()
    cafile = out.pop("ssl_cafile", None)
    if cafile or out.get("security_protocol", "").endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        out["ssl_context"] = create_ssl_context(cafile=cafile)
    return out


def every_partition_from_now(topic: str, bootstrap: str, fetch_max_wait_ms: int) -> Any:
    """A worker's aiokafka consumer without a group: every partition of `topic` (a group would share them
    out among the workers), from its end. Not started."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        fetch_max_wait_ms=fetch_max_wait_ms,
        **aiokafka_security(),
    )


def faust_credentials() -> Any:
    """Faust's `broker_credentials` from the same environment (None: plaintext, no authentication)."""
    import faust

    sec = aiokafka_security()
    if "sasl_mechanism" in sec:
        return faust.SASLCredentials(
            username=sec["sasl_plain_username"],
            password=sec["sasl_plain_password"],
            mechanism=sec["sasl_mechanism"],
            ssl_context=sec.get("ssl_context"),
        )
    if "ssl_context" in sec:
        return faust.SSLCredentials(sec["ssl_context"])
    return None


def require_broker(bootstrap: str) -> None:
    """One clear line instead of a client's retries and traceback when nothing listens there."""
    from stream.kafka.broker import port_open

    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if port_open(host or "127.0.0.1", int(port or 9092), timeout=2.0):
            return
    raise UserError(f"no Kafka broker answers at {bootstrap} (start one with: nextclick broker)")


def producer(bootstrap: str, idempotent: bool = False) -> Any:
    """`idempotent`: acks from every in-sync replica and no duplicates from retries (what a producer that
    must survive a broker restart needs); otherwise acks=1, the leader's."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    require_broker(bootstrap)
    acks: dict[str, Any] = {"acks": "all", "enable_idempotence": True} if idempotent else {"acks": 1}
    try:
        return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **acks, **security_settings())
    except KafkaError as exc:
        raise UserError(f"cannot connect to Kafka at {bootstrap}: {exc}") from None


def consumer(
    bootstrap: str,
    *topics: str,
    group: str | None = None,
    from_beginning: bool = True,
    auto_commit: bool = True,
    request_timeout_ms: int | None = None,
) -> Any:
    """A kafka-python consumer; with `auto_commit=False` the caller commits (after its own durable write).
    `request_timeout_ms` (kafka-python's default is 305 s) suits group-less readers: a group member's join
    may legitimately take longer."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    require_broker(bootstrap)
    try:
        return KafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest" if from_beginning else "latest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            fetch_max_wait_ms=20,
            enable_auto_commit=group is not None and auto_commit,
            max_poll_interval_ms=3_600_000,  # a trainer polls again only after a training cycle
            **({"request_timeout_ms": request_timeout_ms} if request_timeout_ms else {}),
            **security_settings(),
        )
    except KafkaError as exc:
        raise UserError(f"cannot connect to Kafka at {bootstrap}: {exc}") from None


def replay(bootstrap: str, topic: str, frame: pd.DataFrame, rate: float, progress: bool = True) -> int:
    """Publishes clicks in time order at `rate` events/s (0 = as fast as possible), keyed by session id."""
    prod = producer(bootstrap)
    t0 = time.perf_counter()
    sent = 0
    rows = zip(frame["session"].tolist(), frame["item"].tolist(), frame["time"].tolist(), strict=True)
    for i, (session, item, ts) in enumerate(tqdm(rows, total=len(frame), unit="click", disable=not progress)):
        if rate > 0:
            ahead = t0 + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        value = {
            "session_id": str(session),
            "item_id": str(item),
            "timestamp": float(ts),
            "event_id": f"e{i}",
        }
        prod.send(topic, key=str(session).encode(), value=json.dumps(value).encode())
        sent += 1
    prod.flush()
    prod.close()
    return sent


def tail(
    bootstrap: str,
    topic: str,
    from_beginning: bool = False,
    limit: int | None = None,
    timeout_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    cons = consumer(bootstrap, topic, from_beginning=from_beginning)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    n = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            for records in cons.poll(timeout_ms=200).values():
                for r in records:
                    try:
                        value: Any = json.loads(r.value)
                    except (ValueError, UnicodeDecodeError):
                        value = r.value.decode("utf-8", "replace")
                    yield {
                        "key": r.key.decode("utf-8", "replace") if r.key else None,
                        "value": value,
                        "headers": {k: v.decode("utf-8", "replace") for k, v in (r.headers or [])},
                    }
                    n += 1
                    if limit and n >= limit:
                        return
    finally:
        cons.close()
