"""Latency around a hot swap, and publish-to-serve time: embedded broker + one registry worker + load.

    .venv/bin/python scripts/bench_swap.py --model gru4rec --rate 250 --seconds 40 --swap-at 15

The worker serves version 1 of a registry (untrained weights over Tmall's 40,727-item vocabulary, as in
bench_serve.py: latency does not depend on what the weights learnt). Clicks arrive at a fixed rate from
interleaved Tmall sessions; at `--swap-at` seconds a new version is published to the registry and announced
on `model-updates`, as the trainer does. Reports e2e p50/p99 in the 10 s around the swap (5 s either side)
against the steady state before it, the time from publication to the first recommendation made by the new
version, and the worker's own publish-to-serve and load-and-check histograms.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.load import load_data
from model.lifecycle.experiment import make_model
from model.lifecycle.registry import Registry
from model.models.fallback import recent_popularity
from scripts.bench_serve import ids_of, interleave
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.clients import consumer, producer
from stream.settings import Topics
from stream.worker.process import WorkerProcess


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    arr = np.array(values) * 1000.0
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tmall")
    ap.add_argument("--model", default="gru4rec")
    ap.add_argument("--rate", type=float, default=250.0)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--swap-at", type=float, default=15.0)
    args = ap.parse_args()

    data = load_data(args.data)
    sessions = data.train.select(np.arange(len(data.train) - 5000, len(data.train)))
    clicks = interleave([ids_of(sessions[s], data.vocab.ids) for s in range(len(sessions))], 1000)
    work = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    registry = Registry(work / "registry")
    first = make_model(args.model, data)  # untrained: the benchmark measures the swap, not accuracy
    first.fallback = recent_popularity(data.train, data.vocab)
    registry.publish(first)
    with EmbeddedBroker() as broker:
        topics = Topics()
        worker = WorkerProcess(
            broker.bootstrap, topics, None, work, registry=registry.root, NEXTCLICK_DEVICE="cpu"
        )
        try:
            worker.wait_ready()
            time.sleep(3)
            sent: dict[str, float] = {}
            received: dict[str, tuple[float, str]] = {}
            stop = threading.Event()
            cons = consumer(broker.bootstrap, topics.recommendations, from_beginning=False)
            cons.poll(timeout_ms=500)

            def consume() -> None:
                while not stop.is_set():
                    for records in cons.poll(timeout_ms=50).values():
                        now = time.perf_counter()
                        for r in records:
                            v = json.loads(r.value)
                            received.setdefault(v["event_id"], (now, v["model_version"]))

            reader = threading.Thread(target=consume, daemon=True)
            reader.start()
            second = make_model(args.model, data)  # another set of weights, same vocabulary
            second.fallback = first.fallback
            published_at: list[float] = []

            def publish() -> None:
                time.sleep(args.swap_at)
                t = time.perf_counter()
                version = registry.publish(second)
                published_at.append(t)
                announce = producer(broker.bootstrap)
                announce.send(topics.model_updates, value=json.dumps({"version": version}).encode())
                announce.flush()

            publisher = threading.Thread(target=publish, daemon=True)
            prod = producer(broker.bootstrap)
            n = int(args.rate * args.seconds)
            t0 = time.perf_counter()
            publisher.start()
            for i in range(n):
                ahead = t0 + i / args.rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
                session, item = clicks[i % len(clicks)]
                event = f"e{i}"
                sent[event] = time.perf_counter()
                prod.send(
                    topics.clicks,
                    key=session.encode(),
                    value=json.dumps({"session_id": session, "item_id": item, "event_id": event}).encode(),
                )
            prod.flush()
            deadline = time.perf_counter() + 30
            while len(received) < n and time.perf_counter() < deadline:
                time.sleep(0.1)
            stop.set()
            reader.join()
            publisher.join()
            swap_seconds = worker.metric("nextclick_model_swap_seconds_sum")
            p2s = worker.metric("nextclick_model_publish_to_serve_seconds_sum")
        finally:
            worker.stop()
    published = published_at[0]
    around, steady, versions = [], [], {}
    first_new = None
    for event, t_sent in sent.items():
        if event not in received:
            continue
        t_recv, version = received[event]
        versions[version] = versions.get(version, 0) + 1
        if version != "v000001" and (first_new is None or t_recv < first_new):
            first_new = t_recv
        if abs(t_sent - published) <= 5.0:
            around.append(t_recv - t_sent)
        elif t_sent < published - 5.0 and t_sent > t0 + 2.0:
            steady.append(t_recv - t_sent)
    result = {
        "model": args.model,
        "rate": args.rate,
        "sent": len(sent),
        "answered": len(received),
        "versions": versions,
        "steady": percentiles(steady),
        "around_swap_10s": percentiles(around),
        "publish_to_first_new_answer_s": round(first_new - published, 3) if first_new else None,
        "worker_publish_to_serve_s": round(p2s, 3),
        "worker_load_and_check_s": round(swap_seconds, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
