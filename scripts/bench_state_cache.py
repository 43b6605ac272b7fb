"""Memory of the GRU4Rec state cache: entries that are views of their batch (before) against copies.

A stream of batches: each step asks about `batch` sessions drawn from `live` live sessions, and every
answered session's new hidden state goes into the cache, as `stream.worker.inference` does. Before issue #16 an
entry was a row view of the step's output tensor, which keeps the whole (batch, state) tensor alive while
any of its rows is cached; now each entry is a copy and the cache counts bytes. Reported: the bytes the
cached tensors keep alive (unique storages), the bytes their rows hold, and the process's resident memory
per cached session with the copies (Python and tensor object overhead included).

    .venv/bin/python scripts/bench_state_cache.py --live 100000 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.worker.inference import StateCache


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def alive_bytes(tensors) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def fill(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """One process's cache after the stream: bytes kept alive and resident memory per cached session."""
    rng = np.random.default_rng(0)
    base = rss_bytes()
    views: dict[str, torch.Tensor] = {}
    cache = StateCache(max_bytes=2**40)
    for _ in range(args.steps):
        ids = [f"s{i}" for i in rng.integers(0, args.live, size=args.batch)]
        out = torch.randn(args.batch, args.state)  # the step's new states, one row per session
        for row, session in enumerate(ids):
            if mode == "views":
                views[session] = out[row]  # before: a view of the batch
            else:
                cache.put(session, 1, out[row])  # now: a copy
        del out
    held = list(views.values()) if mode == "views" else [state for _, state in cache.data.values()]
    return {
        "cached_sessions": len(held),
        "keep_alive_bytes": alive_bytes(held),
        "rss_per_cached_session_bytes": round((rss_bytes() - base) / len(held)),
        "counted_per_cached_session_bytes": round(cache.nbytes / len(held)) if mode == "copies" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--live", type=int, default=100_000, help="live sessions")
    ap.add_argument("--steps", type=int, default=3000, help="consumed batches")
    ap.add_argument("--batch", type=int, default=64, help="sessions answered per batch")
    ap.add_argument("--state", type=int, default=100, help="hidden state size (GRU4Rec layers=[100])")
    ap.add_argument(
        "--mode", choices=["views", "copies"], help="one side only (each runs in its own process)"
    )
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(fill(args.mode, args)))
        return
    import subprocess

    sides = {}
    for mode in ("views", "copies"):
        argv = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        sides[mode] = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    sides["state_bytes"] = args.state * 4
    sides["views_over_copies_alive"] = round(
        sides["views"]["keep_alive_bytes"] / sides["copies"]["keep_alive_bytes"], 2
    )
    print(json.dumps(sides))


if __name__ == "__main__":
    main()
