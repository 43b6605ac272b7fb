"""What the worker's learning from closed sessions between retrains (`stream.worker.learning`) is worth,
replayed offline on a data set's test split.

    .venv/bin/python scripts/bench_learning.py --data ../shared/data/diginetica --models vsknn rerank \
        --chunks 10 --out scripts/results/learning-diginetica.json --plot learning-diginetica.png

The model is trained once on the training split (as `nextclick train`). The test sessions, in their time
order, are cut into `--chunks` consecutive parts and each part is scored twice: by the model as trained
(what a worker serves until the next retrain) and by the model that has also taken every test session of
the earlier parts into its index (`with_sessions`, what the worker serves once those sessions closed). A
session is only ever learnt after all of its own samples were scored, and only from parts before the one
being scored, as a worker learns a session once it has closed. The data sets' test sessions carry day-level
order at best, so a session of an earlier part may overlap in time with one of the next; within one part
nothing is shared. No retrain, no tuning: the model's own settings, the test split read once per part.

The SR-GNN-format test files hold prefixes and labels, not sessions: each session is rebuilt from its run of
consecutive samples (a prefix one item longer or shorter than the one before, continuing it), the longest
prefix followed by its label.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.load import load_data
from model.data.sessions import Samples
from model.lifecycle.experiment import fit_model, make_model, seed_everything
from model.metrics import evaluate


def continues(prefix: np.ndarray, label: int, previous: np.ndarray, previous_label: int) -> bool:
    """Whether a sample is the same session as the one before it: one click more, or one less (SR-GNN)."""
    if len(prefix) == len(previous) + 1:
        return prefix[-1] == previous_label and np.array_equal(prefix[:-1], previous)
    if len(prefix) == len(previous) - 1:
        return previous[-1] == label and np.array_equal(previous[:-1], prefix)
    return False


def test_sessions(samples: Samples) -> tuple[list[np.ndarray], np.ndarray]:
    """The test split's sessions (each its longest prefix, then that prefix's label) and, for each sample,
    the index of its session."""
    session_of = np.zeros(len(samples), dtype=np.int64)
    for j in range(1, len(samples)):
        same = continues(samples.prefix(j), samples.labels[j], samples.prefix(j - 1), samples.labels[j - 1])
        session_of[j] = session_of[j - 1] + (not same)
    lengths = samples.ends - samples.starts
    sessions = []
    for members in np.split(np.arange(len(samples)), np.flatnonzero(np.diff(session_of)) + 1):
        longest = members[np.argmax(lengths[members])]
        sessions.append(np.r_[samples.prefix(longest), samples.labels[longest]].astype(np.int64))
    return sessions, session_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/diginetica")
    ap.add_argument("--models", nargs="+", default=["vsknn", "rerank"])
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", help="JSON file for the results")
    ap.add_argument("--plot", help="PNG: MRR@20 per part, as trained and learning (needs matplotlib)")
    args = ap.parse_args()

    data = load_data(args.data)
    sessions, session_of = test_sessions(data.test)
    bounds = np.linspace(0, len(sessions), args.chunks + 1).round().astype(int)
    print(f"{data.name}: {len(sessions):,} test sessions from {len(data.test):,} samples, {args.chunks} parts",
          file=sys.stderr)  # fmt: skip
    results = []
    for name in args.models:
        seed_everything(args.seed)
        model = make_model(name, data)
        t0 = time.perf_counter()
        fit_model(model, data, progress=True)
        print(f"{name}: trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        parts = []
        for c in range(args.chunks):
            samples = data.test.select(
                np.flatnonzero((session_of >= bounds[c]) & (session_of < bounds[c + 1]))
            )
            t0 = time.perf_counter()
            learnt = model.with_sessions(sessions[: bounds[c]]) if c else model
            index_seconds = time.perf_counter() - t0
            row = {"part": c + 1, "samples": len(samples), "learnt_sessions": int(bounds[c]),
                   "index_seconds": round(index_seconds, 2)}  # fmt: skip
            for label, scorer in (("trained", model), ("learning", learnt)):
                if label == "learning" and learnt is model:  # nothing learnt yet: the same model, scored once
                    row[label] = row["trained"]
                    continue
                m = evaluate(scorer.score, samples, ks=(20,))
                row[label] = {"recall@20": m["recall@20"], "mrr@20": m["mrr@20"]}
            parts.append(row)
            print(f"{name} part {c + 1}: trained {row['trained']['recall@20']:.4f} / {row['trained']['mrr@20']:.4f}"
                  f", learning {row['learning']['recall@20']:.4f} / {row['learning']['mrr@20']:.4f}"
                  f" ({bounds[c]:,} sessions learnt, re-index {index_seconds:.1f} s)", file=sys.stderr)  # fmt: skip
        total = {}
        n = sum(p["samples"] for p in parts)
        for label in ("trained", "learning"):
            total[label] = {
                k: sum(p[label][k] * p["samples"] for p in parts) / n for k in ("recall@20", "mrr@20")
            }
        results.append({"model": name, "total": total, "parts": parts})
        print(json.dumps({"model": name, **total}), flush=True)
    out = {"data": args.data, "chunks": args.chunks, "test_sessions": len(sessions), "models": results,
           "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for r in results:
            x = [p["part"] for p in r["parts"]]
            for label, style in (("trained", "--"), ("learning", "-")):
                ax.plot(x, [100 * p[label]["mrr@20"] for p in r["parts"]], style, marker="o",
                        label=f"{r['model']}, {label}")  # fmt: skip
        ax.set_xlabel("part of the test sessions, in time order")
        ax.set_ylabel("MRR@20 (%)")
        ax.set_title(f"{Path(args.data).name}: learning from closed sessions between retrains")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
