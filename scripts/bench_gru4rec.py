"""GRU4Rec training speed (events/s) and incremental inference throughput on one data set.

    .venv/bin/python scripts/bench_gru4rec.py --data ../shared/data/tmall \
        --config scripts/configs/gru4rec-diginetica.json --steps 600

Training: `--steps` session-parallel mini-batches with the given hyperparameters, timed after a warm-up;
events/s = trained events / time. Inference: `GRU4RecRecommender.step` (one click from a stored hidden
state, scores over all items and the top-20) at batch sizes 1, 32 and 256.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.load import load_data
from model.data.sessions import Sessions
from model.models.gru4rec import GRU4RecParams, GRU4RecRecommender
from model.training.params import build_params, read_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tmall")
    ap.add_argument("--config", default="scripts/configs/gru4rec-diginetica.json")
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()

    data = load_data(args.data)
    params = build_params(GRU4RecParams, read_config(args.config), {"n_epochs": 1})
    model = GRU4RecRecommender(data.vocab, params)
    # a prefix of the training sessions holding about `steps` mini-batches of events
    lengths = data.train.lengths
    need = (args.steps + 50) * params.batch_size
    n = int(np.searchsorted(np.cumsum(np.maximum(lengths - 1, 0)), need)) + params.batch_size + 1
    subset: Sessions = data.train.select(np.arange(min(n, len(data.train))))
    t0 = time.perf_counter()
    history = model.fit(subset, None)
    seconds = time.perf_counter() - t0
    events = int((subset.lengths[subset.lengths >= 2] - 1).sum())

    throughput = {}
    for bs in (1, 32, 256):
        state = model.initial_state(bs)
        items = torch.as_tensor(np.random.default_rng(0).integers(1, data.vocab.n_items + 1, size=(50, bs)))
        model.step(items[0], state)
        t = time.perf_counter()
        for row in items:
            scores, state = model.step(row, state)
            torch.topk(scores, 20, dim=1)
        throughput[bs] = round(50 * bs / (time.perf_counter() - t), 1)
    print(
        json.dumps(
            {
                "data": args.data,
                "config": args.config,
                "items": data.vocab.n_items,
                "train_events": events,
                "train_seconds": round(seconds, 2),
                "events_per_s": round(events / seconds, 1),
                "reported_events_per_s": history["epochs"][0]["events_per_s"],
                "step_predictions_per_s": throughput,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
