"""End-to-end serving latency: embedded broker + one `nextclick worker` + a load generator, on one machine.

    .venv/bin/python scripts/bench_serve.py --models srgnn gru4rec --rates 250 500 1000 2000 --seconds 20

For each model (untrained weights over Tmall's 40,727-item vocabulary: latency does not depend on what the
weights learnt) a worker serves k = 20. The load generator replays Tmall sessions (newest training
sessions, keyed by session id) at a fixed rate and a consumer thread timestamps every recommendation:
e2e = time the recommendation was received - time its click was sent, both on this machine's clock.
Prints one JSON line per (model, rate) and a summary line.
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

from model.checkpoint import save_checkpoint
from model.data import load_data
from model.training import make_model, popular_items
from stream.broker import EmbeddedBroker
from stream.clients import consumer, producer
from tests.stream.harness import Topics, Worker


def run_rate(
    bootstrap: str, topics: Topics, clicks: list[tuple[str, str]], rate: float, seconds: float
) -> dict:
    n = int(rate * seconds)
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    stop = threading.Event()
    cons = consumer(bootstrap, topics.recommendations, from_beginning=False)
    cons.poll(timeout_ms=500)  # join before the load starts

    def consume() -> None:
        while not stop.is_set():
            for records in cons.poll(timeout_ms=50).values():
                now = time.perf_counter()
                for r in records:
                    received.setdefault(json.loads(r.value)["event_id"], now)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    prod = producer(bootstrap)
    tag = f"{rate:g}-{time.time():.0f}"
    t0 = time.perf_counter()
    for i in range(n):
        ahead = t0 + i / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        session, item = clicks[i % len(clicks)]
        event = f"{tag}-{i}"
        value = json.dumps({"session_id": f"{tag}-{session}", "item_id": item, "event_id": event}).encode()
        sent[event] = time.perf_counter()
        prod.send(topics.clicks, key=f"{tag}-{session}".encode(), value=value)
    prod.flush()
    achieved = n / (time.perf_counter() - t0)
    deadline = time.perf_counter() + 15
    while len(received) < n and time.perf_counter() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join()
    cons.close()
    lat = np.array([received[e] - sent[e] for e in sent if e in received]) * 1000.0
    return {
        "rate": rate,
        "achieved_rate": round(achieved, 1),
        "sent": n,
        "answered": int(lat.size),
        "e2e_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "e2e_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tmall")
    ap.add_argument("--models", nargs="+", default=["srgnn", "gru4rec"])
    ap.add_argument("--rates", type=float, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()

    data = load_data(args.data)
    sessions = data.train.select(np.arange(len(data.train) - 5000, len(data.train)))
    ids = data.vocab.ids
    clicks = [(f"s{s}", ids[int(i)]) for s in range(len(sessions)) for i in sessions[s]]
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    results = []
    with EmbeddedBroker() as broker:
        for name in args.models:
            model = make_model(name, data)
            ck = save_checkpoint(model, work / name, fallback=popular_items(data))
            topics = Topics()
            worker = Worker(broker.bootstrap, topics, ck, work, NEXTCLICK_DEVICE="cpu")
            try:
                worker.wait_ready()
                time.sleep(3)
                run_rate(broker.bootstrap, topics, clicks, 100, 3)  # warm-up
                for rate in args.rates:
                    r = {"model": name, **run_rate(broker.bootstrap, topics, clicks, rate, args.seconds)}
                    print(json.dumps(r), flush=True)
                    results.append(r)
            finally:
                worker.stop()
    held = {}
    for r in results:
        if r["e2e_p99_ms"] is not None and r["e2e_p99_ms"] <= 100 and r["answered"] == r["sent"]:
            held[r["model"]] = max(held.get(r["model"], 0), r["rate"])
    print(json.dumps({"summary": "highest rate with p99 <= 100 ms and every click answered", **held}))


if __name__ == "__main__":
    main()
