"""Every Prometheus metric of the product (names from the contract, prefix `nextclick_`): the worker's
(`Metrics`), the trainer's (`TrainerMetrics`), and `scrape`, the one reader of a /metrics page (the demo's
progress lines, the tests and benchmarks), on prometheus_client's own text parser."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from model.errors import UserError

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DLQ_REASONS = (
    "not_utf8",
    "not_json",
    "not_object",
    "empty",
    "missing_session_id",
    "missing_item_id",
    "too_large",
    "bad_id",
    "bad_type",
    "bad_timestamp",
    "internal_error",
)
RR_BUCKETS = (0.0001, 0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5, 1.0)


class Endpoint:
    """A process's own registry (never the global one: tests run several in one interpreter) and its
    /metrics endpoint."""

    registry: CollectorRegistry

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        if port:
            start_http_server(port, addr=addr, registry=self.registry)


class Metrics(Endpoint):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "nextclick_events_total", "Clicks consumed, by outcome", ["outcome"], registry=r
        )
        self.dlq = Counter(
            "nextclick_dlq_total", "Messages sent to the dead-letter topic", ["reason"], registry=r
        )
        self.recommendations = Counter(
            "nextclick_recommendations_total", "Recommendations published", ["source"], registry=r
        )
        self.e2e = Histogram(
            "nextclick_e2e_latency_seconds",
            "Click publish time to recommendation sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "nextclick_inference_latency_seconds",
            "One model micro-batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "nextclick_inference_batch_size",
            "Requests per micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.consumed_batch = Histogram(
            "nextclick_consumed_batch_size",
            "Clicks the agent takes from the stream at once",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.consumed_batch_latency = Histogram(
            "nextclick_consumed_batch_seconds",
            "Time to answer one batch of consumed clicks (validation, inference, publishing)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active_sessions = Gauge("nextclick_active_sessions", "Sessions held by this worker", registry=r)
        self.reciprocal_rank = Histogram(
            "nextclick_online_reciprocal_rank",
            "Reciprocal rank of the next click in the previous recommendation list (0 when absent)",
            buckets=RR_BUCKETS,
            registry=r,
        )
        self.hits = Counter(
            "nextclick_online_hits_total", "Next clicks found in the previous list", registry=r
        )
        self.evaluated = Counter(
            "nextclick_online_evaluated_total", "Clicks that had a previous list", registry=r
        )
        self.model_info = Gauge(
            "nextclick_model_info", "The model being served", ["model", "version"], registry=r
        )
        self.model_swaps = Counter("nextclick_model_swaps_total", "Models swapped in", registry=r)
        self.model_load_failures = Counter(
            "nextclick_model_load_failures_total", "Model versions refused at load", ["reason"], registry=r
        )
        self.swap_seconds = Histogram(
            "nextclick_model_swap_seconds",
            "Loading and checking a new version until it serves",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.publish_to_serve = Histogram(
            "nextclick_model_publish_to_serve_seconds",
            "Registry publication to serving on this worker",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.sessions_closed = Counter(
            "nextclick_sessions_closed_total", "Sessions closed", ["reason"], registry=r
        )
        self.catchup = Counter(
            "nextclick_changelog_catchup_total",
            "Changelog repairs after a rebalance (Tansu's end offsets), by outcome",
            ["outcome"],
            registry=r,
        )
        self.catchup_records = Counter(
            "nextclick_changelog_catchup_records_total",
            "Changelog records the repair read (only what Faust's recovery can have missed)",
            registry=r,
        )
        self.changelog_write_failures = Counter(
            "nextclick_changelog_write_failures_total",
            "Session-table changelog writes the broker never acknowledged (a restart may restore them older)",
            registry=r,
        )
        self.state_cache_bytes = Gauge(
            "nextclick_state_cache_bytes", "Hidden states cached for incremental models", registry=r
        )
        self.state_cache_sessions = Gauge(
            "nextclick_state_cache_sessions", "Sessions with a cached hidden state", registry=r
        )
        self.learned_sessions = Gauge(
            "nextclick_learned_sessions",
            "Closed sessions the served version took into its index since it came (stream.worker.learning)",
            registry=r,
        )
        self.learn_seconds = Histogram(
            "nextclick_learn_seconds",
            "Re-indexing the served version with the closed sessions",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.learn_failures = Counter(
            "nextclick_learn_failures_total", "Re-indexings that failed (the served model stays)", registry=r
        )

        # every known label value starts at 0, so that dashboards and alerts see a series (and a rate of 0)
        # before the first event of its kind
        for outcome in ("answered", "invalid", "repartitioned", "redelivered", "failed"):
            self.events.labels(outcome=outcome)
        for reason in DLQ_REASONS:
            self.dlq.labels(reason=reason)
        for source in ("model", "fallback"):
            self.recommendations.labels(source=source)
        for reason in ("idle", "too_long"):
            self.sessions_closed.labels(reason=reason)
        for outcome in ("done", "failed"):
            self.catchup.labels(outcome=outcome)
        for reason in ("invalid_checkpoint", "load_error"):
            self.model_load_failures.labels(reason=reason)

    def set_model(self, model: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model=model, version=version).set(1)


class TrainerMetrics(Endpoint):
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.runs = Counter(
            "nextclick_trainer_runs_total", "Training cycles by outcome", ["outcome"], registry=r
        )
        self.duration = Histogram(
            "nextclick_trainer_run_seconds",
            "Duration of a training cycle",
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.gate_score = Gauge(
            "nextclick_trainer_gate_score", "Gate metric of the last cycle", ["model", "metric"], registry=r
        )
        self.last_success = Gauge(
            "nextclick_trainer_last_success_timestamp_seconds",
            "When a version was last published",
            registry=r,
        )
        self.logged = Counter(
            "nextclick_trainer_logged_sessions_total", "Sessions appended to the log", registry=r
        )
        self.new_sessions = Gauge(
            "nextclick_trainer_new_sessions", "Sessions logged since the last cycle", registry=r
        )
        self.serving_version = Gauge(
            "nextclick_trainer_published_version", "Number of the registry's latest version", registry=r
        )
        for outcome in ("published", "rejected", "superseded", "skipped", "failed"):
            self.runs.labels(outcome=outcome)  # a series per outcome from the start (rates of 0, not absent)


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """A process's metrics, each sample summed over its label sets: name -> value ({} while the endpoint
    is not up); the version the worker serves is also there as the key `version:<v>`."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
            if sample.name == "nextclick_model_info" and sample.value == 1.0:
                out["version:" + sample.labels["version"]] = 1.0
    return out


def serving_version(metrics: dict[str, float]) -> str:
    """The version in a `scrape` ("-" before the first model is served)."""
    return next((k.split(":", 1)[1] for k in metrics if k.startswith("version:")), "-")


def require_free_port(port: int, addr: str, flag: str) -> None:
    """One clear line before a process starts, not a traceback from inside the running worker (the
    endpoint is bound only once Faust is up)."""
    if not port:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the endpoint's server binds
        try:
            probe.bind((addr, port))
        except OSError as exc:
            raise UserError(
                f"{flag} {port}: cannot listen on {addr}:{port} ({exc.strerror}); pick another port, or 0 "
                "for no metrics endpoint"
            ) from None
