"""`nextclick demo`: the whole product on one machine, from an empty folder to a hot-swapped model.

1. starts a broker of its own on a free port: the embedded Tansu (`--engine tansu`, the default: pip only) or
   Apache Kafka (`--engine kafka`: Java and scripts/install_kafka.sh), its log dirs in the working folder;
2. trains a first model (`rerank`, the default and most accurate) on a small synthetic click history,
   publishes it as v000001 to a fresh registry and writes that history into the trainer's session log;
3. starts `nextclick worker --registry` and `nextclick trainer` as child processes (the same commands an
   operator runs), the worker with a short session TTL so that sessions close and reach the trainer
   within the demo;
4. replays a click stream (the synthetic generator, or `--data`) at `--rate`, with a few malformed
   messages mixed in to show the dead-letter topic, while a consumer times every recommendation;
5. shows live progress (clicks/s, e2e p50/p99, online MRR@20 / Recall@20 from the worker's Prometheus
   endpoint, the model version), waits for the trainer to retrain and the worker to swap at least once,
   and ends with the contract's summary JSON.

Ctrl-C (or SIGTERM) stops everything: children are killed by process group, the broker is stopped, its
port released. The worker's /metrics stays up while the demo runs so a local Prometheus can scrape it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.data.load import click_events
from stream.kafka.broker import free_port, local_broker
from stream.kafka.clients import consumer, producer
from stream.metrics import scrape, serving_version
from stream.processes import Child

MALFORMED = (b"{not json", b'{"session_id": "x"}', b'{"session_id": "", "item_id": "i1"}')


@dataclass
class DemoOptions:
    events: int = 6000
    rate: float = 120.0
    data: str | None = None
    metrics_port: int = 9100
    trainer_metrics_port: int = 0
    workdir: str | None = None
    engine: str = "tansu"
    swap_timeout: float = 90.0
    malformed_every: int = 250  # one malformed message per this many clicks (0 = none)
    quiet: bool = False


@dataclass
class Tally:
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    answered: set[str] = field(default_factory=set)
    duplicates: int = 0
    malformed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def online(metrics: dict[str, float]) -> tuple[float, float]:
    count = metrics.get("nextclick_online_reciprocal_rank_count", 0.0)
    rr = metrics.get("nextclick_online_reciprocal_rank_sum", 0.0)
    evaluated = metrics.get("nextclick_online_evaluated_total", 0.0)
    hits = metrics.get("nextclick_online_hits_total", 0.0)
    return (rr / count if count else 0.0), (hits / evaluated if evaluated else 0.0)


# A small history, so that the trainer's first retrain on it and the live sessions beats the first model at
# the gate: a kNN model's index is its knowledge, and on 3,000 history sessions the first rerank was already
# as good as the world allows (its retrain then passed the 0.005 gate tolerance about every other cycle).
HISTORY_SESSIONS = 600


def first_model(registry: Path, log_dir: Path) -> None:
    """v000001: rerank (the model served by default) on a small synthetic history of the same item world the
    stream walks; the history also goes into the trainer's session log, as if the stream had logged it the
    day before (`synthetic_data` is a day older than the stream's clock): the log orders it before the
    replay, and the trainer gates only on sessions ending after the model's newest click (`trained_until`)."""
    from model.data.synthetic import synthetic_data
    from model.lifecycle.experiment import fit_model, make_model, seed_everything
    from model.lifecycle.registry import Registry
    from model.lifecycle.sessionlog import SessionLog

    seed_everything(0)
    data = synthetic_data(n_sessions=HISTORY_SESSIONS, n_items=1000, seed=0)
    model = make_model("rerank", data)
    fit_model(model, data)
    Registry(registry).publish(model, data=data.record())
    train = data.train
    SessionLog(log_dir).append(
        {
            "session_id": f"history-{i}",
            "items": data.vocab.decode(train[i]),
            "timestamps": train.times[train.offsets[i] : train.offsets[i + 1]].tolist(),
        }
        for i in range(len(train))
    )


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    from stream.metrics import require_free_port

    require_free_port(opts.metrics_port, "0.0.0.0", "--metrics-port")  # the worker's, before anything starts
    work = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="nextclick-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    say = (lambda *_: None) if opts.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    frame = click_events(opts.data or f"synthetic:{max(opts.events // 4, 50)}", limit=opts.events)
    children: list[Child] = []
    stop = threading.Event()
    tally = Tally()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def interrupt(*_: Any) -> None:
        stop.set()
        raise KeyboardInterrupt

    for s in previous:
        signal.signal(s, interrupt)
    broker = local_broker(opts.engine, free_port(), data_dir=work / "kafka")
    try:
        broker.start()
        say(f"{broker.name} broker on {broker.bootstrap}; working folder {work}")
        registry, log_dir = work / "registry", work / "session-log"
        say("training the first model (rerank: session-kNN re-ranked, on a synthetic history) ...")
        first_model(registry, log_dir)
        metrics_port = opts.metrics_port or free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": broker.bootstrap,
            "NEXTCLICK_REGISTRY": str(registry),
            "NEXTCLICK_DATA_DIR": str(work / "worker"),
            "NEXTCLICK_METRICS_PORT": str(metrics_port),
            "NEXTCLICK_SESSION_TTL": "120",  # seconds of event time: sessions close within the demo
            "NEXTCLICK_EXPIRY_INTERVAL": "1",
            "NEXTCLICK_LEARN_INTERVAL": "5",  # closed sessions into the index between retrains (15 s apart)
        }
        cli = [sys.executable, "-m", "stream.cli"]
        worker = [*cli, "worker", "--registry", str(registry), "--loglevel", "info"]
        children.append(Child("worker", worker, env, work / "worker.log"))
        n_sessions = frame["session"].nunique()
        children.append(
            Child(
                "trainer",
                [
                    *cli,
                    "trainer",
                    "--registry",
                    str(registry),
                    "--log-dir",
                    str(log_dir),
                    "--interval",
                    "15",
                    "--min-new-sessions",
                    str(max(20, n_sessions // 5)),
                    "--epochs",
                    "1",
                    "--metrics-port",
                    str(opts.trainer_metrics_port),
                ],
                env,
                work / "trainer.log",
            )
        )
        say(f"worker metrics on http://127.0.0.1:{metrics_port}/metrics; logs in {work}")
        wait_ready(children[0], stop)
        reader = threading.Thread(
            target=read_recommendations, args=(broker.bootstrap, tally, stop), daemon=True
        )
        reader.start()
        t0 = time.perf_counter()
        progress = threading.Thread(
            target=show_progress, args=(tally, metrics_port, stop, say, t0), daemon=True
        )
        progress.start()
        sent = send_clicks(broker.bootstrap, frame, opts, tally, stop)
        say(f"replayed {sent} clicks in {time.perf_counter() - t0:.1f} s; waiting for the last answers ...")
        deadline = time.monotonic() + 30
        while len(tally.answered) < len(tally.sent_at) and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.2)
        deadline = time.monotonic() + opts.swap_timeout
        if scrape(metrics_port).get("nextclick_model_swaps_total", 0) < 1:
            say("waiting for the trainer's first retrain and hot swap ...")
        while scrape(metrics_port).get("nextclick_model_swaps_total", 0) < 1 and time.monotonic() < deadline:
            if not all(c.alive() for c in children):
                break
            time.sleep(0.5)
        final = scrape(metrics_port)
        stop.set()
        return summary(tally, final)
    finally:
        stop.set()
        for child in reversed(children):
            child.stop()
        broker.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if not opts.workdir:
            shutil.rmtree(work, ignore_errors=True)


def wait_ready(worker: Child, stop: threading.Event, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if not worker.alive():
            raise RuntimeError(f"the worker exited: {worker.log.read_text(errors='replace')[-2000:]}")
        if "[^Worker]: Ready" in worker.log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError("the worker did not become ready")


def send_clicks(bootstrap: str, frame: Any, opts: DemoOptions, tally: Tally, stop: threading.Event) -> int:
    prod = producer(bootstrap)
    rows = zip(frame["session"].tolist(), frame["item"].tolist(), frame["time"].tolist(), strict=True)
    t0 = time.perf_counter()
    sent = 0
    for i, (session, item, ts) in enumerate(rows):
        if stop.is_set():
            break
        ahead = t0 + i / opts.rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        if opts.malformed_every and i % opts.malformed_every == opts.malformed_every - 1:
            prod.send("clicks", key=b"bad", value=MALFORMED[tally.malformed % len(MALFORMED)])
            tally.malformed += 1
        event = f"e{i}"
        value = {"session_id": str(session), "item_id": str(item), "timestamp": float(ts), "event_id": event}
        with tally.lock:
            tally.sent_at[event] = time.perf_counter()
        prod.send("clicks", key=str(session).encode(), value=json.dumps(value).encode())
        sent += 1
    prod.flush()
    prod.close()
    return sent


def read_recommendations(bootstrap: str, tally: Tally, stop: threading.Event) -> None:
    cons = consumer(bootstrap, "recommendations", from_beginning=True)
    try:
        while not stop.is_set():
            for records in cons.poll(timeout_ms=100).values():
                now = time.perf_counter()
                for r in records:
                    event = json.loads(r.value).get("event_id")
                    with tally.lock:
                        if event in tally.answered:
                            tally.duplicates += 1
                            continue
                        tally.answered.add(event)
                        if event in tally.sent_at:
                            tally.latencies.append(now - tally.sent_at[event])
    finally:
        cons.close()


def percentile(values: Any, q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 2) if len(values) else 0.0


def show_progress(tally: Tally, port: int, stop: threading.Event, say: Any, t0: float) -> None:
    last_n, last_t = 0, time.perf_counter()
    while not stop.wait(2.0):
        m = scrape(port)
        now = time.perf_counter()
        with tally.lock:
            n, lat = len(tally.sent_at), list(tally.latencies)[-2000:]
        mrr, recall = online(m)
        say(
            f"[{now - t0:5.1f} s] clicks {n:6d} ({(n - last_n) / (now - last_t):6.1f}/s)  "
            f"answered {len(tally.answered):6d}  e2e p50 {percentile(lat, 50):6.1f} ms  p99 {percentile(lat, 99):6.1f} ms  "
            f"online MRR@20 {100 * mrr:5.2f} %  Recall@20 {100 * recall:5.2f} %  "
            f"model {serving_version(m)}  swaps {int(m.get('nextclick_model_swaps_total', 0))}"
        )
        last_n, last_t = n, now


def summary(tally: Tally, m: dict[str, float]) -> dict[str, Any]:
    mrr, recall = online(m)
    with tally.lock:
        lat = list(tally.latencies)
        answered = len(tally.answered & tally.sent_at.keys())
    return {
        "events": len(tally.sent_at) + tally.malformed,
        "recommendations": answered,
        "dlq": int(m.get("nextclick_dlq_total", 0)),
        "e2e_p50_ms": percentile(lat, 50),
        "e2e_p99_ms": percentile(lat, 99),
        "online_mrr@20": round(mrr, 4),
        "online_recall@20": round(recall, 4),
        "model_swaps": int(m.get("nextclick_model_swaps_total", 0)),
        "model_version": serving_version(m),
        "duplicates": tally.duplicates,
    }
