"""The inference service: gathers recommendation requests into micro-batches and runs the model off the
event loop, so a slow batch never stalls consumption.

Requests arrive from the clicks agent as item histories (external ids). Items the model never saw stay in
the history but are hidden from it; a session with no known item gets the checkpoint's fallback list (the
training data's recent popularity, `model.models.fallback`, with its click shares as scores and `source`
"fallback"), never nothing. The model sees the whole known history, as offline evaluation does (sessions
are closed at `max_session_length` clicks). The clicks agent hands over each consumed batch in one call
(`recommend_many`), which goes to the model's thread at once (one executor call: no queue, no job); single
requests (`recommend`) queue and wait up to `max_wait_ms` for others to share their model call (at most
`max_batch` requests). Batches run in one worker thread (the model is not re-entrant); the model can be swapped
between batches, and requests keep the model that encoded them.

Models with incremental inference (GRU4Rec's `step`) keep each session's hidden state in a bounded LRU cache
beside the table, keyed by session id and the number of clicks it has absorbed: the next click costs one
look-up of that click's item and one GRU step (the rest of the history is not read). A miss (a restart, a
rebalance, an evicted or out-of-step entry) rebuilds the state from the stored history, so the cache never
changes an answer, only its cost. A swapped-in model starts with an empty cache: hidden states are never
reused across models.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.data.vocab import UNKNOWN
from model.lifecycle.checkpoint import load_checkpoint
from model.models.base import Recommender, resolve_device
from model.models.layers import Bf16Scoring, bf16_is_fast
from model.training.runtime import tune_malloc
from stream.metrics import Metrics

log = logging.getLogger("nextclick.inference")


class StateCache:
    """session id -> (clicks absorbed, hidden state), least recently used evicted past `max_bytes`.

    Each entry is a copy of its row: a row of the batch's output is a view that keeps the whole batch's
    tensor alive (a 256-row batch pinned 256 states per entry). Sessions that close or move to another
    worker are dropped (`drop`, called by the worker), so the cache holds only what it may be asked for.
    An entry costs its tensor's bytes plus `ENTRY_OVERHEAD` (the tensor object, the key, the dict entry:
    scripts/bench_state_cache.py measured 1,447 bytes of resident memory per entry of 400 state bytes), so
    `max_bytes` bounds the memory the cache really takes."""

    ENTRY_OVERHEAD = 1048

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.data: OrderedDict[str, tuple[int, torch.Tensor]] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, session_id: str, absorbed: int) -> torch.Tensor | None:
        entry = self.data.get(session_id)
        if entry is None or entry[0] != absorbed:
            self.misses += 1
            return None
        self.data.move_to_end(session_id)
        self.hits += 1
        return entry[1]

    def put(self, session_id: str, absorbed: int, state: torch.Tensor) -> None:
        old = self.data.pop(session_id, None)  # per click: no list, no loop
        if old is not None:
            self.nbytes -= old[1].nbytes + self.ENTRY_OVERHEAD
        state = state.clone()
        self.data[session_id] = (absorbed, state)
        self.nbytes += state.nbytes + self.ENTRY_OVERHEAD
        while self.nbytes > self.max_bytes and len(self.data) > 1:
            _, (_, evicted) = self.data.popitem(last=False)
            self.nbytes -= evicted.nbytes + self.ENTRY_OVERHEAD

    def drop(self, session_ids: Iterable[str]) -> None:
        for session_id in session_ids:
            entry = self.data.pop(session_id, None)
            if entry is not None:
                self.nbytes -= entry[1].nbytes + self.ENTRY_OVERHEAD


@dataclass
class Served:
    model: Recommender
    name: str
    version: str
    fallback: tuple[list[str], list[float]]  # the first k of the checkpoint's list, and their scores
    cache: StateCache | None = None  # for models with `step` (GRU4Rec)
    published_at: float | None = None  # when the registry published this version


@dataclass(frozen=True)
class Request:
    history: list[str]  # the session's item ids, oldest first
    # its known item indices (in `served`'s vocabulary); None: left to the model's thread, where a cached
    # state may need only the last click's
    known: np.ndarray | None
    session_id: str | None
    served: Served


@dataclass(frozen=True)
class Answer:
    items: list[str]
    scores: list[float]
    model: str
    version: str
    source: str  # "model" or "fallback"


def load_served(path: str | Path, device: str = "auto", k: int = 20, bf16: bool | None = None) -> Served:
    """`bf16`: score in bfloat16; None (auto) where it is fast (`model.models.layers.bf16_is_fast`)."""
    tune_malloc()  # each call's (batch x n_items) scores reuse freed memory instead of fresh zeroed pages
    model, meta = load_checkpoint(path, resolve_device(device))
    net = getattr(model, "net", None)
    if bf16 is None:
        bf16 = bf16_is_fast(resolve_device(device))
    if bf16 and isinstance(net, Bf16Scoring):
        net.scoring_bf16 = True
    assert model.fallback is not None  # load_checkpoint refuses a checkpoint without one
    fallback = (model.fallback.items[:k], model.fallback.scores[:k])
    version = str(meta.get("version") or Path(path).name)
    cache = StateCache() if hasattr(model, "step") and hasattr(model, "final_states") else None
    return Served(model, meta["model"], version, fallback, cache=cache, published_at=meta.get("published_at"))


@dataclass
class Job:
    """A single request (`InferenceService.recommend`) waiting for others to share its model call."""

    request: Request
    future: asyncio.Future[Answer]


def _fail(jobs: list[Job], exc: Exception) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)


class InferenceService:
    def __init__(
        self, served: Served, metrics: Metrics, k: int = 20, max_batch: int = 64, max_wait_ms: float = 5.0
    ) -> None:
        self.served = served
        self.metrics = metrics
        self.k = k
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nextclick-inference")
        self._task: asyncio.Task[None] | None = None
        self.metrics.set_model(served.name, served.version)

    def start(self) -> None:
        """Start the batching task, or restart it if it ever ended: a dead task would leave every later
        request waiting forever."""
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception():
                log.error("inference task ended: %r; restarting it", self._task.exception())
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.pool.shutdown(wait=False, cancel_futures=True)

    def forget(self, session_ids: Iterable[str]) -> None:
        """Sessions that closed or went to another worker: their cached states go, in the model's thread
        (the cache is only ever touched there)."""
        if self.served.cache is not None:
            self.pool.submit(self.served.cache.drop, list(session_ids))

    def report_cache(self) -> None:
        cache = self.served.cache
        self.metrics.state_cache_bytes.set(cache.nbytes if cache is not None else 0)
        self.metrics.state_cache_sessions.set(len(cache.data) if cache is not None else 0)

    def swap(self, served: Served) -> None:
        """Serve another model from the next micro-batch on."""
        self.served = served
        self.metrics.set_model(served.name, served.version)
        self.metrics.model_swaps.inc()

    def refresh(self, served: Served) -> None:
        """Serve the same version with a grown index (`stream.worker.learning`) from the next micro-batch on:
        no swap, the version's label and metrics stay."""
        self.served = served

    async def recommend(self, history: list[str], session_id: str | None = None) -> Answer:
        """One request alone: it waits up to `max_wait_ms` for others to share its model call."""
        ask = self._ask(self.served, history, session_id)
        if isinstance(ask, Answer):
            return ask
        self.start()
        job = Job(ask, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def recommend_many(self, histories: list[tuple[list[str], str | None]]) -> list[Answer]:
        """One answer per (item history, session id), all from the model served when called: the clicks
        agent's consumed batch, already a batch, so one hop to the model's thread."""
        served = self.served
        asks = [self._ask(served, history, session_id) for history, session_id in histories]
        requests = [a for a in asks if isinstance(a, Request)]
        if requests:
            answered = iter(
                await asyncio.get_running_loop().run_in_executor(self.pool, self._infer, served, requests)
            )
            asks = [next(answered) if isinstance(a, Request) else a for a in asks]
        return asks  # type: ignore[return-value]

    @staticmethod
    def _ask(served: Served, history: list[str], session_id: str | None) -> Request | Answer:
        """The model's request for a history, or the fallback answer where no item of it is known. A
        session of a model with a state cache is looked up in the model's thread (`_infer_incremental`)."""
        if served.cache is not None and session_id and history:
            return Request(history, None, session_id, served)
        known = known_indices(served.model, history)
        if known.size == 0:
            return _fallback(served)
        return Request(history, known, session_id, served)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(jobs) < self.max_batch and (timeout := deadline - loop.time()) > 0:
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            while len(jobs) < self.max_batch and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            try:
                await self._run_jobs(loop, jobs)
            except Exception as exc:  # never leave a request without an answer or an error
                log.exception("inference batch failed")
                _fail(jobs, exc)

    async def _run_jobs(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> None:
        # item indices belong to the model that encoded them: a swap between two jobs splits the batch
        groups: dict[int, list[Job]] = {}
        for job in jobs:
            groups.setdefault(id(job.request.served), []).append(job)
        for group in groups.values():
            requests = [job.request for job in group]
            try:
                answers = await loop.run_in_executor(self.pool, self._infer, requests[0].served, requests)
            except Exception as exc:  # a failing batch fails its requests, never the service
                _fail(group, exc)
                continue
            for job, answer in zip(group, answers, strict=True):
                if not job.future.done():
                    job.future.set_result(answer)

    def _infer(self, served: Served, requests: list[Request]) -> list[Answer]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            if served.cache is None:
                answered = range(len(requests))
                items, scores = served.model.recommend([r.known for r in requests], k=self.k)
            else:
                answered, items, scores = self._infer_incremental(served, served.cache, requests)
        self.metrics.inference.observe(time.perf_counter() - t0)
        self.metrics.batch_size.observe(len(requests))
        decode = served.model.vocab.decode
        answers = [_fallback(served)] * len(requests)  # for requests without a known item
        for i, row, sc in zip(answered, items.tolist(), scores.float().tolist(), strict=True):
            answers[i] = Answer(decode(row), sc, served.name, served.version, "model")
        return answers

    def _infer_incremental(
        self, served: Served, cache: StateCache, requests: list[Request]
    ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """One GRU step for each request. A session whose state after all but its last click is cached
        costs one look-up, of that click; any other is looked up whole and its state rebuilt from its
        known clicks. Cache entries count the session's clicks, known or not: the state after the clicks
        `history[:n]` is stored under n."""
        model: Any = served.model
        index = model.vocab.index
        answered: list[int] = []
        lasts: list[int] = []
        states: list[torch.Tensor | None] = []
        rebuild: list[np.ndarray] = []
        for i, r in enumerate(requests):
            state = cache.get(r.session_id, len(r.history) - 1) if r.session_id else None
            last = index.get(str(r.history[-1]), UNKNOWN) if state is not None else UNKNOWN
            if last < 1:  # no state, or the last click is unknown: the whole known history
                known = r.known if r.known is not None else known_indices(model, r.history)
                if known.size == 0:
                    continue
                state, last = None, int(known[-1])
                rebuild.append(known[:-1])
            answered.append(i)
            lasts.append(last)
            states.append(state)
        if not answered:
            return answered, torch.empty(0, self.k, dtype=torch.long), torch.empty(0, self.k)
        if rebuild:
            rebuilt = iter(model.final_states(rebuild))
            states = [next(rebuilt) if st is None else st for st in states]
        items, scores, new = model.step_top(torch.as_tensor(lasts), torch.stack(states), self.k)  # type: ignore[arg-type]
        for row, i in enumerate(answered):
            r = requests[i]
            if r.session_id:
                cache.put(r.session_id, len(r.history), new[row])
        return answered, items, scores


def known_indices(model: Recommender, history: list[str]) -> np.ndarray:
    """The history's items the model knows, as its indices (unknown ones hidden from it)."""
    known = model.vocab.lookup(history)
    return known[known >= 1]


def _fallback(served: Served) -> Answer:
    items, scores = served.fallback
    return Answer(items, scores, served.name, served.version, "fallback")
