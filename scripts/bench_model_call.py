"""One model call as the worker makes it: `recommend(64 sessions, k=20)` over a data set's whole catalogue
(default Tmall, 40,727 items), for every served model side by side in one run.

    .venv/bin/python scripts/bench_model_call.py --data ../shared/data/tmall --calls 200

The 64 sessions of each call are consecutive real test prefixes (the calls walk through the test set).
Neural models are timed with fresh weights (a call costs the same whatever the weights); the kNN models
index every training session; `rerank` is fitted with one scorer epoch (its call cost does not depend on
how long the scorer trained; `rerank-neural`: with its neural group, MTAW untrained; `rerank-neural-items`:
the same with `neural_candidates=0`, MTAW scoring only the other sources' candidates). Reported: median,
p90 and p99 of the wall time of a call, after 10 warm-up calls, on the CPU threads torch uses by default.

Catalogue size (`--items 40727 200000 1000000`): the data set's vocabulary widened with items no session
ever clicked, so every model scores, and picks its top 20 from, that many items while its sessions and
index stay the data set's (a neural model's call grows with the catalogue through its scoring product and
top-k; a kNN model's neighbour search does not, only its dense score rows and top-k). `--bf16` scores the
neural models in bfloat16, as the worker does where the CPU has bf16 matrix units.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.dataset import SessionData
from model.data.load import load_data
from model.lifecycle.experiment import fit_model, make_model
from model.models.layers import Bf16Scoring
from model.training.runtime import tune_malloc

NEURAL = {"srgnn", "gru4rec", "mtaw"}
# named variants: model, settings (the neural group's MTAW untrained: a call costs the same whatever
# its weights)
VARIANTS = {
    "rerank-embed": ("rerank", {"features": "knn,rules,repeat,trend,embed"}),
    "rerank-neural": ("rerank", {"features": "knn,rules,repeat,trend,neural", "neural_epochs": 0}),
    "rerank-neural-items": (
        "rerank",
        {"features": "knn,rules,repeat,trend,neural", "neural_epochs": 0, "neural_candidates": 0},
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tmall")
    ap.add_argument("--models", nargs="+", default=["rerank", "vsknn", "srgnn", "gru4rec", "mtaw", "pop"])
    ap.add_argument("--sessions", type=int, default=64, help="sessions per call")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--items", type=int, nargs="+", default=[0], help="catalogue sizes (0: the data's own)")
    ap.add_argument("--bf16", action="store_true", help="neural models score in bfloat16")
    args = ap.parse_args()
    tune_malloc()  # as the worker does (`stream.worker.inference.load_served`)
    data = load_data(args.data)
    prefixes = data.test.prefixes(range(min(len(data.test), args.sessions * (args.calls + 10))))
    batches = [prefixes[i : i + args.sessions] for i in range(0, len(prefixes), args.sessions)]
    batches = [b for b in batches if len(b) == args.sessions]
    for n_items in args.items:
        for name in args.models:
            result = time_calls(name, widened(data, n_items), batches, args.calls, args.bf16)
            print(json.dumps(result), flush=True)


def widened(data: SessionData, n_items: int) -> SessionData:
    """The data set with its catalogue widened to `n_items` by items that no session holds."""
    extra = n_items - data.vocab.n_items
    if extra <= 0:
        return data
    return dataclasses.replace(data, vocab=data.vocab.extend(f"unclicked-{i}" for i in range(extra)))


def time_calls(name: str, data: SessionData, batches: list, calls: int, bf16: bool) -> dict:
    kind, sets = VARIANTS.get(name, (name, None))
    model = make_model(kind, data, sets=sets, epochs=1 if kind == "rerank" else None)
    if kind not in NEURAL:
        fit_model(model, data)
    net = getattr(model, "net", None)
    if bf16 and isinstance(net, Bf16Scoring):
        net.scoring_bf16 = True
    for batch in batches[:10]:
        model.recommend(batch, k=20)
    times = []
    for batch in batches[10 : 10 + calls]:
        t0 = time.perf_counter()
        model.recommend(batch, k=20)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return {
        "model": name,
        "items": data.vocab.n_items,
        "sessions_per_call": len(batches[0]),
        "calls": len(times),
        "median_ms": round(float(np.median(ms)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "bf16": bool(getattr(net, "scoring_bf16", False)),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }


if __name__ == "__main__":
    main()
