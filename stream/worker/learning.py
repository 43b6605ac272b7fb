"""Between two retrains, the neighbourhood models learn from every closed session.

V-SKNN and the rerank answer from an index of sessions, not only from weights: a session that closed a
minute ago is evidence like one from last month, and about what sells now. So each worker reads `sessions`
with a group-less consumer of its own (every worker sees every closed session, whichever worker closed
it), and every `learn_interval` seconds with new ones it re-indexes the served version with all the
sessions closed since that version came (`with_sessions`: the index `fit` makes on them all, the scorer's
weights unchanged), off the event loop, and serves the copy from the next micro-batch on. Nothing is
written: the registry's version and its label stay, and the next retrain (the trainer logs the same
sessions) replaces it, its index built by training.

What counts as new. The consumer starts at the topic's end when the worker starts (what closed before is
the trainer's to learn). When another version comes (hot swap), the sessions that closed before it was
published are dropped, the rest stay and are learnt by it: those the trainer logged before its cycle
began are in the new version already, and a session that closed while it trained waits for the next one.
Items the version does not know are left out of a session (a new catalogue item needs a retrain), and a
session with fewer than two known items is no co-occurrence evidence and is skipped.

Cost. A re-index costs what `fit`'s last step costs on the version's sessions plus the closed ones (the
rerank: 0.3-0.4 s on Tmall's 65k training sessions, 0.7-1.1 s on Diginetica's 187k; V-SKNN under 0.1 s;
`scripts/bench_learning.py`), on a thread while the event loop keeps answering, once per interval at most,
never per click, and never more than a tenth of the time (`next_due`). A worker holds the newest
`max_sessions` closed sessions at most (`NEXTCLICK_LEARN_MAX_SESSIONS`): with a fixed `--checkpoint` and no
retrains they would otherwise add up for ever, and with them memory and each re-index's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque

import orjson

from model.models.base import Recommender
from stream.kafka.clients import every_partition_from_now
from stream.worker.inference import InferenceService, Served, known_indices

log = logging.getLogger("nextclick.learning")
MAX_BUSY_SHARE = 0.1  # of the worker's time spent re-indexing, at most


@dataclasses.dataclass(frozen=True)
class ClosedSession:
    items: list[str]
    closed_at: float  # the worker's wall clock when it closed (the record's `closed_at`)


def parse_closed(value: bytes, max_items: int) -> ClosedSession | None:
    """A `sessions` record as a worker publishes it, or None for anything else (a session longer than a
    worker closes at is no worker's: one producer writing to the topic cannot flood every index)."""
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
        record = orjson.loads(value)
        items = record.get("items") if isinstance(record, dict) else None
        if isinstance(items, list) and len(items) <= max_items and all(isinstance(i, str) for i in items):
            closed_at = record.get("closed_at")
            return ClosedSession(
                items, float(closed_at) if isinstance(closed_at, int | float) else time.time()
            )
    return None


def next_due(started: float, ended: float, interval: float) -> float:
    """When to learn next: `interval` after the last start, and never re-indexing more than
    `MAX_BUSY_SHARE` of the time (a re-index slows the clicks answered meanwhile, BENCHMARKS.md; a large
    index or a short interval would otherwise keep one running)."""
    return max(started + interval, ended + (ended - started) * (1.0 / MAX_BUSY_SHARE - 1.0))


def learns(served: Served) -> bool:
    """Models whose index takes sessions without training (`with_sessions`): V-SKNN and the rerank."""
    return hasattr(served.model, "with_sessions")


class SessionLearner:
    def __init__(
        self,
        service: InferenceService,
        *,
        bootstrap: str,
        topic: str,
        interval: float,
        max_items: int,
        max_sessions: int = 100_000,
    ) -> None:
        self.service = service
        self.metrics = service.metrics
        self.max_items = max_items  # the workers' `max_session_length`
        self.bootstrap = bootstrap
        self.topic = topic
        self.interval = interval
        # closed since the base version came, oldest first; the newest `max_sessions` of them
        self.pending: deque[ClosedSession] = deque(maxlen=max(max_sessions, 0))
        self.base: Served = service.served  # the version as loaded, before any learning
        self.serving: Served = service.served  # what this learner last saw or made serve
        self.added = 0  # sessions added since the base version came
        self.done = 0  # of `added`, how many the serving copy had when it was made

    def add(self, closed: ClosedSession) -> None:
        self.pending.append(closed)  # the oldest falls out at `max_sessions`
        self.added += 1

    def follow_swaps(self) -> None:
        """A version swapped in since the last look: learn into it, keeping what closed after it came."""
        current = self.service.served
        if current is self.serving:
            return
        self.base = self.serving = current
        since = current.published_at or 0.0
        self.pending = deque((c for c in self.pending if c.closed_at >= since), maxlen=self.pending.maxlen)
        self.added, self.done = len(self.pending), 0
        self.metrics.learned_sessions.set(0)

    @staticmethod
    def reindexed(base: Served, pending: list[ClosedSession]) -> tuple[Recommender, int] | None:
        """The base version's model re-indexed with the pending sessions it knows two items of, and how
        many; None where there is none. On the executor: turning 100,000 sessions into item indices takes
        0.4-0.5 s, which on the event loop would hold every click answered meanwhile."""
        known = (known_indices(base.model, c.items) for c in pending)
        sessions = [k for k in known if len(k) >= 2]
        return (base.model.with_sessions(sessions), len(sessions)) if sessions else None

    async def learn(self) -> int:
        """Re-index the base version with every pending session and serve it; how many sessions it holds now."""
        self.follow_swaps()
        base, taken = self.base, self.added
        if not learns(base):  # its answers come from weights alone: the trainer's to learn
            self.pending.clear()
            self.added = self.done = 0
            return 0
        if taken == self.done:
            return 0
        t0 = time.perf_counter()
        # a snapshot: `add` keeps appending on the event loop while the executor reads it
        made = await asyncio.get_running_loop().run_in_executor(
            None, self.reindexed, base, list(self.pending)
        )
        if made is None:
            return 0
        if self.service.served is not self.serving:  # a version swapped in meanwhile: learn into it next
            return 0
        model, learnt = made
        self.serving, self.done = dataclasses.replace(base, model=model), taken
        self.service.refresh(self.serving)
        self.metrics.learn_seconds.observe(time.perf_counter() - t0)
        self.metrics.learned_sessions.set(learnt)
        log.info("learnt %d closed sessions into %s in %.2f s", learnt, base.version,
                 time.perf_counter() - t0)  # fmt: skip
        return learnt

    async def run(self) -> None:
        """Consume `sessions` (reconnecting after errors) and learn every `interval` seconds."""
        due = time.monotonic() + self.interval
        while True:
            consumer = every_partition_from_now(self.topic, self.bootstrap, fetch_max_wait_ms=500)
            try:
                await consumer.start()
                while not (tps := consumer.assignment()):  # assigned once its metadata arrives
                    await asyncio.sleep(0.1)
                for tp in tps:  # the end now, not at the first fetch
                    await consumer.position(tp)
                log.info("learning from the sessions closed from now on (%s, every %g s)", self.topic,
                         self.interval)  # fmt: skip
                while True:
                    timeout = max(due - time.monotonic(), 0.0)
                    batches = await consumer.getmany(timeout_ms=int(timeout * 1000) + 1)
                    for records in batches.values():
                        for r in records:
                            if (closed := parse_closed(r.value, self.max_items)) is not None:
                                self.add(closed)
                    if time.monotonic() >= due:
                        started = time.monotonic()
                        try:
                            await self.learn()
                        except Exception:  # the served model stays as it was; the next interval retries
                            log.exception("learning from closed sessions failed")
                            self.metrics.learn_failures.inc()
                        due = next_due(started, time.monotonic(), self.interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sessions learner: %r; retrying", exc)
                await asyncio.sleep(2.0)
            finally:
                await consumer.stop()
