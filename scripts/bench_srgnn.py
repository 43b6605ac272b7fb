"""SR-GNN (and MTAW) training speed, peak memory and inference throughput on one data set (default: Tmall).

    .venv/bin/python scripts/bench_srgnn.py --data ../shared/data/tmall --batches 400
    .venv/bin/python scripts/bench_srgnn.py --models srgnn mtaw     # side by side, one run

With several models, peak resident memory is the maximum over the run (the first model's figure is its
own; run one model per process for each one's peak).

Training: `--batches` mini-batches of 100 prefix samples, timed after a warm-up, extrapolated to one epoch
of the full training set (the reference code's own definition of an epoch). Peak resident memory is read
from the kernel (ru_maxrss) and covers loading the data, training and inference. Inference: session
predictions per second with the top-20 over all items, at batch sizes 1, 32 and 256.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.load import load_data
from model.data.sessions import prefix_samples
from model.lifecycle.experiment import make_model
from model.models.layers import pad_windows
from model.training.runtime import tune_malloc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tmall")
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp32", action="store_true", help="score in float32 while training too")
    ap.add_argument("--models", nargs="+", default=["srgnn"], help="srgnn and/or mtaw")
    args = ap.parse_args()

    tune_malloc()
    data = load_data(args.data)
    for name in args.models:
        bench(name, data, args)


def bench(name: str, data, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = make_model(name, data, sets={"bf16": not args.fp32}, device=args.device)
    samples = prefix_samples(data.train)
    rng = np.random.default_rng(0)
    opt = model._optimizer()
    net = model.net.train()
    batches = list(samples.batches(100, shuffle=True, rng=rng))[: args.warmup + args.batches]
    t0 = 0.0
    for i, idx in enumerate(batches):
        if i == args.warmup:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        seq = pad_windows(samples.items, samples.starts[idx], samples.ends[idx]).to(args.device)
        labels = torch.from_numpy(samples.labels[idx]).to(args.device)
        loss = net.loss(seq, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    per_batch = (time.perf_counter() - t0) / args.batches
    n_batches = -(-len(samples) // 100)

    sessions = samples.prefixes(range(4096))
    throughput = {}
    for bs in (1, 32, 256):
        chunks = [sessions[i : i + bs] for i in range(0, min(len(sessions), 100 * bs if bs > 1 else 500), bs)]
        model.recommend(chunks[0], k=20)
        t = time.perf_counter()
        for c in chunks:
            model.recommend(c, k=20)
        throughput[bs] = round(sum(len(c) for c in chunks) / (time.perf_counter() - t), 1)

    result = {
        "model": name,
        "data": args.data,
        "items": data.vocab.n_items,
        "train_samples": len(samples),
        "ms_per_batch": round(per_batch * 1000, 2),
        "epoch_seconds_extrapolated": round(per_batch * n_batches, 1),
        "score_dtype_in_training": "float32" if args.fp32 else "bfloat16",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "predictions_per_s": throughput,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "device": args.device,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
