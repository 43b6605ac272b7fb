"""The garbage collector and the worker's long-lived heap: what is alive for good is frozen out of its sight.

A full collection walks every tracked object with the event loop stopped; a worker holds a model and
possibly a million sessions that live for minutes to hours, so each full collection costs in proportion
to them (0.45 s at a million sessions) for nothing. What is made to stay is frozen (`gc.freeze`) once made.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused_then_frozen() -> Iterator[None]:
    """No collection while a million sessions (or their index) are made: each one walks all those made so
    far (half the 1M restart's decoding time, 3.7 s of the idle index's rebuild); then everything alive is
    frozen without a collection first (what is made here holds no reference cycle; a cycle left by others
    and not yet collected is frozen with the rest and never freed)."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def freeze_heap() -> None:
    """Move everything alive now (Faust, aiokafka, torch, the model) out of the garbage collector's sight.

    A full collection walks every tracked object; in a worker that is about 100 ms with the event loop
    stopped, and the kNN models' calls allocate enough (scipy's sparse matrices) to trigger one every few
    seconds: V-SKNN's p99 at 250 clicks/s was 106 ms against 44 ms with the heap frozen after the model
    loaded (`scripts/bench_serve.py`, one run each; p50 25 against 28 ms). Per-click garbage stays young
    and is collected as before. Called after every swap, after collecting the young generations only:
    every model here is freed by reference counting alone once swapped out (a test pins it for each) and
    loading one leaves no garbage cycle (none found after three loads of each), so the thaw and full
    collection done here before found nothing, and walked every live session made since the last freeze
    (0.45 s at a million). Restored sessions are frozen as they are made (`stream.worker.store`,
    `Pipeline._index_restored`); the first model load freezes without a collection (`Pipeline.start`)."""
    gc.collect(1)
    gc.freeze()
