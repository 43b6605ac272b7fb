"""One model call as the worker makes it: `recommend(64 sessions, k=20)` over a data set's whole catalogue
(default Tmall, 40,727 items), for every served model side by side in one run.

    .venv/bin/python scripts/bench_model_call.py --data ../shared/data/tmall --calls 200

The 64 sessions of each call are consecutive real test prefixes (the calls walk through the test set).
Neural models are timed with fresh weights (a call costs the same whatever the weights); the kNN models
index every training session; `rerank` is fitted with one scorer epoch (its call cost does not depend on
how long the scorer trained). Reported: median, p90 and p99 of the wall time of a call, after 10 warm-up
calls, on the CPU threads torch uses by default.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.load import load_data
from model.lifecycle.experiment import fit_model, make_model

NEURAL = {"srgnn", "gru4rec", "mtaw"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tmall")
    ap.add_argument("--models", nargs="+", default=["rerank", "vsknn", "srgnn", "gru4rec", "mtaw", "pop"])
    ap.add_argument("--sessions", type=int, default=64, help="sessions per call")
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()

    data = load_data(args.data)
    prefixes = data.test.prefixes(range(min(len(data.test), args.sessions * (args.calls + 10))))
    batches = [prefixes[i : i + args.sessions] for i in range(0, len(prefixes), args.sessions)]
    batches = [b for b in batches if len(b) == args.sessions]
    for name in args.models:
        model = make_model(name, data, epochs=1 if name == "rerank" else None)
        if name not in NEURAL:
            fit_model(model, data)
        for batch in batches[:10]:
            model.recommend(batch, k=20)
        times = []
        for batch in batches[10 : 10 + args.calls]:
            t0 = time.perf_counter()
            model.recommend(batch, k=20)
            times.append(time.perf_counter() - t0)
        ms = np.array(times) * 1000
        result = {
            "model": name,
            "items": data.vocab.n_items,
            "sessions_per_call": args.sessions,
            "calls": len(times),
            "median_ms": round(float(np.median(ms)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
