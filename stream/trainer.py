"""`nextclick trainer`: logs finished sessions, retrains on them, gates and publishes new versions.

A loop: consume the `sessions` topic (a consumer group, offsets committed only after the session log's
fsync), and run a training cycle every `interval` seconds or after `min_new_sessions` new sessions,
whichever comes first. A cycle trains a candidate on the log's window (warm-started from the serving
version, or from scratch), gates it against the serving version on the newest held-out sessions
(`model.lifecycle.retrain.gate`), and publishes it to the registry only if it passes, then announces it on
`model-updates`. Every failure of a cycle is logged and counted, and never touches what the workers serve:
publication is the registry's atomic rename, so a crash mid-cycle leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from typing import Any

from model.errors import DataError
from model.lifecycle.checkpoint import load_checkpoint
from model.lifecycle.experiment import seed_everything
from model.lifecycle.registry import Registry
from model.lifecycle.retrain import gate, log_to_data, train_candidate
from model.lifecycle.sessionlog import SessionLog
from model.models.base import resolve_device
from stream.kafka.clients import consumer, producer
from stream.metrics import TrainerMetrics
from stream.settings import TrainerSettings

log = logging.getLogger("nextclick.trainer")


class Trainer:
    def __init__(self, settings: TrainerSettings, metrics: TrainerMetrics | None = None) -> None:
        self.s = settings
        self.metrics = metrics or TrainerMetrics()
        self.registry = Registry(settings.registry, keep=settings.keep_versions)
        self.log = SessionLog(settings.log_path, settings.retention_days)
        self.new_sessions = 0
        self.last_run = time.monotonic()
        self.stop = threading.Event()

    # -- one cycle ---------------------------------------------------------------------------------------
    def run_once(self) -> dict[str, Any]:
        """Train, gate, maybe publish. Returns a summary; never raises for a failed cycle."""
        t0 = time.perf_counter()
        self.last_run = time.monotonic()
        summary: dict[str, Any] = {"outcome": "failed"}
        try:
            summary = self._cycle()
        except DataError as exc:
            log.warning("training cycle skipped: %s", exc)
            summary = {"outcome": "skipped", "reason": str(exc)}
        except Exception as exc:  # the trainer's failures never touch serving: count, log, go on
            log.exception("training cycle failed")
            summary = {"outcome": "failed", "reason": repr(exc)}
        finally:
            seconds = time.perf_counter() - t0
            summary["seconds"] = round(seconds, 2)
            self.metrics.runs.labels(outcome=summary["outcome"]).inc()
            self.metrics.duration.observe(seconds)
            self.new_sessions = 0
            self.metrics.new_sessions.set(0)
        log.info("training cycle: %s", json.dumps(summary))
        return summary

    def _cycle(self) -> dict[str, Any]:
        s = self.s
        seed_everything(s.seed)
        self.log.retain()
        records = self.log.read(s.max_sessions)
        serving_version = self.registry.latest()
        serving, serving_until = None, None
        if serving_version is not None:
            serving, meta = load_checkpoint(self.registry.path(serving_version), "cpu")
            serving_until = (meta.get("data") or {}).get("trained_until")  # its newest training click
        name = s.model or (serving.name if serving is not None else "rerank")
        base = serving.vocab if serving is not None and s.warm_start and serving.name == name else None
        data = log_to_data(records, base, s.holdout_fraction, after=serving_until)
        device = resolve_device(s.device)
        log.info("training %s on %d logged sessions (serving %s)", name, len(records), serving_version)
        candidate, history = train_candidate(
            name, data, serving=serving, warm=s.warm_start, epochs=s.epochs, sets=s.sets, device=device
        )
        result = gate(candidate.to("cpu"), serving, data, s.gate_metric, s.gate_tolerance)
        self.metrics.gate_score.labels(model="candidate", metric=s.gate_metric).set(result.candidate)
        if result.serving is not None:
            self.metrics.gate_score.labels(model="serving", metric=s.gate_metric).set(result.serving)
        summary: dict[str, Any] = {
            "model": name,
            "sessions": len(records),
            "train_sessions": len(data.train),
            "heldout_samples": len(data.test),
            "warm_start": history.get("warm_start", False),
            "serving_version": serving_version,
            "gate": {"metric": s.gate_metric, "candidate": result.candidate, "serving": result.serving},
        }
        if not result.publish:
            log.warning(
                "candidate refused by the gate: %s %.4f < serving %.4f - %.4f",
                s.gate_metric,
                result.candidate,
                result.serving,
                s.gate_tolerance,
            )
            return {**summary, "outcome": "rejected"}
        if (promoted := self.registry.latest()) != serving_version:
            # an operator promoted (rolled back) while this cycle trained: the candidate was gated against
            # a version no longer served, and publishing would undo their choice within seconds
            log.warning("candidate not published: %s was promoted while it trained against %s",
                        promoted, serving_version)  # fmt: skip
            return {**summary, "outcome": "superseded"}
        version = self.registry.publish(
            candidate,
            data={
                **data.record(),
                "sessions": len(records),
                # what it has learnt from: its sessions, and warm-started, the serving model's
                "trained_until": max(
                    (t for t in (data.train_until(), serving_until) if t is not None), default=None
                ),
            },
            metrics=result.candidate_metrics,
            history=history,
            extra={"parent": serving_version, "gate": summary["gate"]},
        )
        self.metrics.last_success.set(time.time())
        self.metrics.serving_version.set(int(version[1:]))
        self.announce(version, name, result.candidate_metrics)
        return {**summary, "outcome": "published", "version": version}

    def announce(self, version: str, model: str, metrics: dict[str, Any]) -> None:
        """Tell the workers at once; a lost announcement only delays a swap (workers poll the registry)."""
        try:
            prod = producer(self.s.bootstrap)
            value = {
                "version": version,
                "uri": self.registry.path(version).resolve().as_uri(),
                "model": model,
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
                "created_at": time.time(),
            }
            prod.send(self.s.topic_model_updates, value=json.dumps(value).encode())
            prod.flush(timeout=10)
            prod.close()
        except Exception as exc:
            log.warning(
                "announcing %s on %s failed (%r); workers will find it by polling",
                version,
                self.s.topic_model_updates,
                exc,
            )

    # -- the loop ----------------------------------------------------------------------------------------
    def ingest(self, cons: Any, timeout_ms: int = 1000) -> int:
        """One poll of the sessions topic into the log; offsets committed after the fsync."""
        batch = cons.poll(timeout_ms=timeout_ms)
        sessions = []
        for records in batch.values():
            for r in records:
                try:
                    value = json.loads(r.value)
                    if isinstance(value, dict) and isinstance(value.get("items"), list):
                        sessions.append(value)
                        continue
                except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
                    pass
                log.warning("skipping a malformed session record at %s:%s", r.partition, r.offset)
        written = self.log.append(sessions)
        if batch:
            cons.commit()
        self.new_sessions += written
        self.metrics.logged.inc(written)
        self.metrics.new_sessions.set(self.new_sessions)
        return written

    def due(self) -> bool:
        if self.new_sessions >= self.s.min_new_sessions:
            return True
        return self.new_sessions > 0 and time.monotonic() - self.last_run >= self.s.interval

    def drain(self, cons: Any, join_timeout: float = 30.0) -> int:
        """Join the group, then ingest until a poll brings nothing new."""
        total = 0
        deadline = time.monotonic() + join_timeout
        while not cons.assignment() and time.monotonic() < deadline:
            total += self.ingest(cons, timeout_ms=200)
        while n := self.ingest(cons, timeout_ms=1500):
            total += n
        return total

    def run(self, once: bool = False) -> None:
        self.metrics.serve(self.s.metrics_port, self.s.metrics_addr)
        cons = consumer(
            self.s.bootstrap,
            self.s.topic_sessions,
            group=self.s.group,
            from_beginning=True,
            auto_commit=False,
        )
        try:
            if once:
                self.drain(cons)
                self.run_once()
                return
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop.set())
            while not self.stop.is_set():
                self.ingest(cons)
                if self.due():
                    self.run_once()
        finally:
            cons.close()
