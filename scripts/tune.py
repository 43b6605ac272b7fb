"""Hyperparameter search on the validation split (the newest 10 % of training sessions), never the test split.

    .venv/bin/python scripts/tune.py --model mtaw --data ../shared/data/tmall --epochs 1 \
        --grid scale=8,12,16,20 --grid dropout=0.1,0.25 --out tune-mtaw-tmall.json

Every combination of the `--grid` values (on top of `--set` ones) is trained for `--epochs` on the older
90 % of the training sessions and scored on the validation samples; the table is printed and written as
JSON, best (validation Recall@20 + MRR@20, the early-stopping criterion) first. The test split is not
loaded into any model and not scored.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.load import load_data
from model.lifecycle.experiment import epoch_field, make_model, seed_everything
from model.metrics import evaluate
from model.models.zoo import model_class
from model.training.params import parse_sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mtaw")
    ap.add_argument("--data", default="../shared/data/tmall")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", help="JSON file for the results")
    args = ap.parse_args()

    data = load_data(args.data)
    fit, valid = data.train_valid(0.1)
    epochs = args.epochs if epoch_field(model_class(args.model).Params()) else None  # kNN: no epochs
    names = [g.split("=", 1)[0] for g in args.grid]
    values = [g.split("=", 1)[1].split(",") for g in args.grid]
    rows = []
    for combo in itertools.product(*values):
        sets = {**parse_sets(args.set), **parse_sets([f"{n}={v}" for n, v in zip(names, combo, strict=True)])}
        seed_everything(args.seed)
        model = make_model(args.model, data, sets=sets, epochs=epochs)
        t0 = time.perf_counter()
        history = model.fit(fit, valid, progress=True)
        best = {"epoch": None}
        if history.get("epochs"):
            best = history["epochs"][history["best_epoch"] - 1]  # fit's own early-stopping choice
        if "valid_recall@20" not in best:  # stopped on its own split (rerank) or not in epochs (kNN)
            m = evaluate(model.score, valid, ks=(20,))
            best = {**best, "valid_recall@20": m["recall@20"], "valid_mrr@20": m["mrr@20"]}
        row = {
            **dict(zip(names, combo, strict=True)),
            "best_epoch": best["epoch"],
            "valid_recall@20": round(100 * best["valid_recall@20"], 2),
            "valid_mrr@20": round(100 * best["valid_mrr@20"], 2),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows.sort(key=lambda r: -(r["valid_recall@20"] + r["valid_mrr@20"]))
    print(
        f"\n{args.model} on {data.name}, {args.epochs} epoch(s), validation = newest 10 % of training sessions"
    )
    print(" | ".join([*names, "epoch", "valid R@20", "valid MRR@20", "s"]))
    for r in rows:
        print(
            " | ".join(
                str(r[k]) for k in [*names, "best_epoch", "valid_recall@20", "valid_mrr@20", "seconds"]
            )
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"model": args.model, "data": str(args.data), "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
