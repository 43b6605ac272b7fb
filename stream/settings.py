"""Every setting of the worker, the trainer and the clients, one way: a dataclass field with an environment
twin, where a command-line flag wins over its variable and the variable over the default.

`from_env` walks the fields: a field's variable is `NEXTCLICK_<NAME>` unless its metadata names another
(`KAFKA_BOOTSTRAP`, the trainer's `NEXTCLICK_TRAINER_*`), and the field's type says how to read it (a
`bool | None` reads `auto` as None); a value that does not parse is one clear error. The CLI passes its
flags as overrides (None = not given), and takes each flag's help line from the field (`describe`), so a
default is written once.

The worker's defaults suit a laptop with the embedded broker. The broker-facing ones come from
measurements on the embedded Tansu broker (../shared/notes/embedded-broker.md): a 6 s session timeout and
1 s heartbeat make a restarted worker rejoin in seconds instead of ~30 s, a 20 ms fetch wait avoids ~1 s
per hop, and `changelog_catchup` repairs what Tansu's wrong end offset for multi-record batches cuts from
Faust's table recovery (see `stream.worker.pipeline.Pipeline._catch_up`); left at auto it runs only where
the broker is recognised as Tansu (`stream.kafka.broker.is_tansu`), never on Apache Kafka. An earlier
workaround, one record per produced batch, capped a worker below 250 clicks/s: aiokafka then waits for
each record's delivery before the next one to the same partition.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from model.errors import UserError


def env(name: str | None) -> dict[str, Any]:
    """Field metadata naming the field's variable (None: the field has no variable)."""
    return {"env": name}


def variable(field: dataclasses.Field) -> str | None:
    return field.metadata.get("env", f"NEXTCLICK_{field.name.upper()}")


def _parse(raw: str, kind: Any, name: str) -> Any:
    kinds = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    optional = type(None) in kinds
    base = next(k for k in kinds if k is not type(None))
    word = raw.strip()
    if optional and word.lower() in ("auto", "none"):
        return None
    try:
        if base is bool:
            if word.lower() in ("1", "true", "yes", "on"):
                return True
            if word.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(word)
        return base(word)
    except ValueError:
        expected = {bool: "1/0, true/false or auto", int: "an integer", float: "a number"}.get(
            base, "a value"
        )
        raise UserError(f"{name}={raw!r}: expected {expected}") from None


class FromEnv:
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            name = variable(field)
            raw = environ.get(name) if name else None
            if raw is not None and raw != "":
                values[field.name] = _parse(raw, hints[field.name], name)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise TypeError(f"{cls.__name__} has no setting {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def describe(cls, name: str, text: str) -> str:
        """A flag's help line: its text, its variable and its default, all taken from the field."""
        field = next(f for f in dataclasses.fields(cls) if f.name == name)  # type: ignore[arg-type]
        parts = [f"env {variable(field)}"] if variable(field) else []
        if field.default not in (dataclasses.MISSING, None):
            parts.append(f"default {field.default}")
        return f"{text} ({', '.join(parts)})" if parts else text


@dataclasses.dataclass
class KafkaSettings(FromEnv):
    """What every process that talks to the cluster shares: where it is, and the topics' names."""

    bootstrap: str = dataclasses.field(default="127.0.0.1:9092", metadata=env("KAFKA_BOOTSTRAP"))
    app_id: str = "nextclick"
    topic_clicks: str = "clicks"
    topic_recommendations: str = "recommendations"
    topic_dlq: str = "clicks-dlq"
    topic_sessions: str = "sessions"
    topic_model_updates: str = "model-updates"


@dataclasses.dataclass
class SecuritySettings(FromEnv):
    """SASL / SSL for a real cluster, the same for every client (kafka-python's, aiokafka's, Faust's)."""

    security_protocol: str | None = dataclasses.field(default=None, metadata=env("KAFKA_SECURITY_PROTOCOL"))
    sasl_mechanism: str | None = dataclasses.field(default=None, metadata=env("KAFKA_SASL_MECHANISM"))
    sasl_username: str | None = dataclasses.field(default=None, metadata=env("KAFKA_SASL_USERNAME"))
    sasl_password: str | None = dataclasses.field(default=None, metadata=env("KAFKA_SASL_PASSWORD"))
    ssl_cafile: str | None = dataclasses.field(default=None, metadata=env("KAFKA_SSL_CAFILE"))


@dataclasses.dataclass
class BrokerSettings(FromEnv):
    """The local Apache Kafka broker (`nextclick broker --engine kafka`): its JVM heap, and where
    scripts/install_kafka.sh put its jars (None: $XDG_CACHE_HOME/nextclick/kafka)."""

    kafka_heap: str = "-Xms256m -Xmx512m"
    kafka_home: str | None = None


STORES = ("memory://", "rocksdb://")  # where the worker keeps its session table (stream.worker.table)


@dataclasses.dataclass
class WorkerSettings(KafkaSettings):
    partitions: int = 4  # of the topics the worker creates (clicks, outputs, the table's changelog)
    replication_factor: int = 1  # of the topics the worker creates: 3 on a production cluster
    create_topics: bool = True  # False on a cluster where the topics are created by hand (README)
    checkpoint: str | None = None
    registry: str | None = None
    k: int = 20
    batch_size: int = 256  # clicks taken from the stream (and answered by one model call) at most
    batch_wait_ms: float = 5.0  # a busy agent's next batch gathers this long (stream.worker.batching)
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
    score_bf16: bool | None = None  # score in bfloat16 (model.models.layers.Bf16Scoring); None = where fast
    data_dir: str = ".nextclick/worker"
    store: str = "memory://"  # the session table: or rocksdb:// (under data_dir; stream.worker.table)
    web_port: int = 0  # Faust's web server: 0 = disabled
    expiry_interval: float = 5.0  # seconds between scans for idle sessions
    registry_poll_interval: float = 2.0  # seconds between looks at the registry's LATEST
    # seconds between re-indexings of V-SKNN / the rerank with the sessions closed since (0 = never)
    learn_interval: float = 30.0
    learn_max_sessions: int = 100_000  # closed sessions a worker holds for that, the newest


def _trainer(default: Any, name: str) -> Any:
    return dataclasses.field(default=default, metadata=env(f"NEXTCLICK_TRAINER_{name}"))


@dataclasses.dataclass
class TrainerSettings(KafkaSettings):
    """The trainer's own settings have `NEXTCLICK_TRAINER_*` variables, so that one environment can hold
    a worker's and a trainer's (both have a metrics port); the registry, session log, device and metrics
    address are shared with the worker's names."""

    registry: str | None = None
    log_dir: str | None = dataclasses.field(default=None, metadata=env("NEXTCLICK_SESSION_LOG"))
    interval: float = _trainer(300.0, "INTERVAL")
    min_new_sessions: int = _trainer(1000, "MIN_NEW_SESSIONS")
    model: str | None = _trainer(None, "MODEL")  # None: the serving model's kind, rerank for none
    warm_start: bool = _trainer(True, "WARM_START")
    epochs: int | None = _trainer(3, "EPOCHS")
    sets: dict[str, Any] = dataclasses.field(default_factory=dict, metadata=env(None))
    gate_metric: str = _trainer("mrr@20", "GATE_METRIC")
    gate_tolerance: float = _trainer(0.005, "GATE_TOLERANCE")
    holdout_fraction: float = _trainer(0.1, "HOLDOUT_FRACTION")
    retention_days: float = _trainer(30.0, "RETENTION_DAYS")
    max_sessions: int = _trainer(200_000, "MAX_SESSIONS")
    keep_versions: int = _trainer(5, "KEEP_VERSIONS")
    metrics_port: int = _trainer(9101, "METRICS_PORT")
    metrics_addr: str = "0.0.0.0"
    device: str = "auto"
    seed: int = _trainer(42, "SEED")

    @property
    def group(self) -> str:
        return f"{self.app_id}-trainer"

    @property
    def log_path(self) -> Path:
        if self.log_dir:
            return Path(self.log_dir)
        assert self.registry, "the trainer needs a registry"
        return Path(self.registry).resolve().parent / "session-log"


class Topics:
    """Fresh topic names and a fresh consumer group for one run (a test, a benchmark), and the environment
    that hands them to a child process: runs on one broker never see each other's data."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.app_id = f"nc-test-{tag}"
        self.clicks = f"clicks-{tag}"
        self.recommendations = f"recs-{tag}"
        self.dlq = f"dlq-{tag}"
        self.sessions = f"sessions-{tag}"
        self.model_updates = f"updates-{tag}"

    def env(self) -> dict[str, str]:
        """Each name under its `KafkaSettings` variable (`topic_clicks` -> NEXTCLICK_TOPIC_CLICKS, ...)."""
        return {
            variable(f): getattr(self, f.name.removeprefix("topic_"))
            for f in dataclasses.fields(KafkaSettings)
            if f.name != "bootstrap"
        }
