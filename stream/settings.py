"""Worker settings: every field has an environment twin (a CLI flag wins over its variable).

The defaults suit a laptop with the embedded broker. The broker-facing ones come from measurements on the
embedded Tansu broker (../shared/notes/embedded-broker.md): a 6 s session timeout and 1 s heartbeat make a
restarted worker rejoin in seconds instead of ~30 s, a 20 ms fetch wait avoids ~1 s per hop, and
`changelog_catchup` repairs what Tansu's wrong end offset for multi-record batches cuts from Faust's table
recovery (see `stream.worker.pipeline.Pipeline._catch_up`); left at auto it runs only where the broker is recognised as
Tansu (`stream.kafka.broker.is_tansu`), never on Apache Kafka. An earlier workaround, one record per produced batch,
capped a worker below 250 clicks/s: aiokafka then waits for each record's delivery before the next one to
the same partition.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any


def _env(name: str, default: Any, kind: type = str) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if kind is bool:
        word = raw.strip().lower()
        return None if word == "auto" else word in ("1", "true", "yes", "on")
    return kind(raw)


@dataclasses.dataclass
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "nextclick"
    topic_clicks: str = "clicks"
    topic_recommendations: str = "recommendations"
    topic_dlq: str = "clicks-dlq"
    topic_sessions: str = "sessions"
    topic_model_updates: str = "model-updates"
    partitions: int = 4  # of the topics the worker creates (clicks, outputs, the table's changelog)
    replication_factor: int = 1  # of the topics the worker creates: 3 on a production cluster
    create_topics: bool = True  # False on a cluster where the topics are created by hand (README)
    checkpoint: str | None = None
    registry: str | None = None
    k: int = 20
    batch_size: int = 256  # clicks taken from the stream (and answered by one model call) at most ...
    batch_wait_ms: float = 5.0  # ... or this long after the first one
    session_ttl: float = 1800.0  # seconds of event time without a click before a session closes
    max_session_length: int = 200  # a session this long is closed after its answer
    metrics_port: int = 9100  # 0 = no metrics endpoint
    metrics_addr: str = "0.0.0.0"
    fetch_wait_ms: int = 10
    producer_linger_ms: float = 0.0  # how long the producer gathers records into one request (Faust: 0)
    request_timeout: float = 15.0  # seconds before a broker request is given up and retried (Faust: 90)
    changelog_catchup: bool | None = None  # None = auto: on for the embedded Tansu only (stream.kafka.broker)
    max_message_bytes: int = 64 * 1024
    max_id_length: int = 256
    max_future_seconds: float = 86400.0  # a timestamp further ahead of the wall clock is invalid
    device: str = "auto"
    score_bf16: bool | None = (
        None  # score in bfloat16 (model.models.layers.Bf16Scoring); None = where it is fast
    )
    data_dir: str = ".nextclick/worker"
    web_port: int = 0  # Faust's web server: 0 = disabled
    expiry_interval: float = 5.0  # seconds between scans for idle sessions
    registry_poll_interval: float = 2.0  # seconds between looks at the registry's LATEST

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        s = cls(
            bootstrap=_env("KAFKA_BOOTSTRAP", cls.bootstrap),
            app_id=_env("NEXTCLICK_APP_ID", cls.app_id),
            topic_clicks=_env("NEXTCLICK_TOPIC_CLICKS", cls.topic_clicks),
            topic_recommendations=_env("NEXTCLICK_TOPIC_RECOMMENDATIONS", cls.topic_recommendations),
            topic_dlq=_env("NEXTCLICK_TOPIC_DLQ", cls.topic_dlq),
            topic_sessions=_env("NEXTCLICK_TOPIC_SESSIONS", cls.topic_sessions),
            topic_model_updates=_env("NEXTCLICK_TOPIC_MODEL_UPDATES", cls.topic_model_updates),
            partitions=_env("NEXTCLICK_PARTITIONS", cls.partitions, int),
            replication_factor=_env("NEXTCLICK_REPLICATION_FACTOR", cls.replication_factor, int),
            create_topics=_env("NEXTCLICK_CREATE_TOPICS", cls.create_topics, bool),
            checkpoint=_env("NEXTCLICK_CHECKPOINT", None),
            registry=_env("NEXTCLICK_REGISTRY", None),
            k=_env("NEXTCLICK_K", cls.k, int),
            batch_size=_env("NEXTCLICK_BATCH_SIZE", cls.batch_size, int),
            batch_wait_ms=_env("NEXTCLICK_BATCH_WAIT_MS", cls.batch_wait_ms, float),
            session_ttl=_env("NEXTCLICK_SESSION_TTL", cls.session_ttl, float),
            max_session_length=_env("NEXTCLICK_MAX_SESSION_LENGTH", cls.max_session_length, int),
            metrics_port=_env("NEXTCLICK_METRICS_PORT", cls.metrics_port, int),
            metrics_addr=_env("NEXTCLICK_METRICS_ADDR", cls.metrics_addr),
            fetch_wait_ms=_env("NEXTCLICK_FETCH_WAIT_MS", cls.fetch_wait_ms, int),
            producer_linger_ms=_env("NEXTCLICK_PRODUCER_LINGER_MS", cls.producer_linger_ms, float),
            request_timeout=_env("NEXTCLICK_REQUEST_TIMEOUT", cls.request_timeout, float),
            changelog_catchup=_env("NEXTCLICK_CHANGELOG_CATCHUP", cls.changelog_catchup, bool),
            max_message_bytes=_env("NEXTCLICK_MAX_MESSAGE_BYTES", cls.max_message_bytes, int),
            max_id_length=_env("NEXTCLICK_MAX_ID_LENGTH", cls.max_id_length, int),
            device=_env("NEXTCLICK_DEVICE", cls.device),
            score_bf16=_env("NEXTCLICK_SCORE_BF16", cls.score_bf16, bool),
            data_dir=_env("NEXTCLICK_DATA_DIR", cls.data_dir),
            web_port=_env("NEXTCLICK_WEB_PORT", cls.web_port, int),
            expiry_interval=_env("NEXTCLICK_EXPIRY_INTERVAL", cls.expiry_interval, float),
            registry_poll_interval=_env(
                "NEXTCLICK_REGISTRY_POLL_INTERVAL", cls.registry_poll_interval, float
            ),
        )
        return dataclasses.replace(s, **{k: v for k, v in overrides.items() if v is not None})
