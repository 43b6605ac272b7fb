"""How long a worker's event loop stalls while its learner (`stream.worker.learning`) takes the closed
sessions it holds into the served index: every click that arrives meanwhile waits that long.

    .venv/bin/python scripts/bench_learner_stall.py --sessions 100000

V-SKNN fitted on synthetic:3000 serves; `--sessions` closed sessions of 2-9 random known items are pending
(100,000 is `NEXTCLICK_LEARN_MAX_SESSIONS`'s default, the most a worker holds); a task ticks every 5 ms on
the same event loop while one `learn()` runs, and the longest gap between its ticks is the stall.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.synthetic import synthetic_data
from model.lifecycle.experiment import fit_model, make_model
from stream.metrics import Metrics
from stream.worker.inference import InferenceService, Served
from stream.worker.learning import ClosedSession, SessionLearner


async def longest_stall(learner: SessionLearner) -> tuple[int, float, float]:
    """Sessions learnt, the learn's seconds, and the longest gap between 5 ms ticks meanwhile."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    learnt = await learner.learn()
    took = time.perf_counter() - t0
    done.set()
    await ticker
    return learnt, took, max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    args = parser.parse_args()
    data = synthetic_data(n_sessions=3000)
    model = make_model("vsknn", data)
    fit_model(model, data)
    service = InferenceService(Served(model, "vsknn", "v1", (["i1"], [1.0])), Metrics())
    learner = SessionLearner(
        service, bootstrap="", topic="sessions", interval=1.0, max_items=200, max_sessions=args.sessions
    )
    rng = np.random.default_rng(0)
    ids = data.vocab.ids[1:]
    for _ in range(args.sessions):
        items = rng.integers(0, len(ids), size=rng.integers(2, 10))
        learner.add(ClosedSession([ids[j] for j in items], closed_at=0.0))
    learnt, took, stall = asyncio.run(longest_stall(learner))
    print(f"learnt {learnt} sessions in {took:.2f} s; longest event-loop stall {stall * 1000:.0f} ms")


if __name__ == "__main__":
    main()
