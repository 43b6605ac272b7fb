"""The Faust app: clicks -> session table -> micro-batched inference -> recommendations.

`faust -A stream.app worker` and `nextclick worker` both run it; settings come from the environment
(`stream.config.Settings`).

State. The `sessions` table maps a session id to what must survive a restart or rebalance: the session's
clicks (item ids and timestamps, at most `max_session_length`), the last recommendation list (for online
evaluation), the user id and the partition the session lives on. Writes go to the local store and to the
changelog partition of the click that caused them, explicitly: the agent handles clicks in micro-batches,
where Faust's "current event" would be only the batch's last one.

Expiry. Faust tables have no per-key TTL (faust-streaming #515), so a timer scans the local sessions every
`expiry_interval` seconds and closes the ones idle for `session_ttl` seconds of event time (the newest
click time this worker has seen); over-long sessions close right after their last answer. A closed session
is published to `sessions` for the trainer and deleted from the table (a tombstone in the changelog).

Redelivery. Processing is at-least-once: after a crash or a rebalance before the offset commit a click can
arrive twice. Each session remembers the offset of the last click it absorbed; a click at or below it is
answered again (from the history as it stands) but never appended twice, so histories stay exact.

Ordering. Within one micro-batch the clicks of one session are processed in order: the batch is split
into waves holding at most one click per session, each wave waiting for the previous one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from faust.types import EventT, StreamT

from stream.clicks import Click, InvalidClick, parse_click
from stream.config import Settings
from stream.inference import InferenceService, load_served
from stream.metrics import Metrics
from stream.transport import App

log = logging.getLogger("nextclick.worker")


class Pipeline:
    def __init__(self, app: App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.metrics = Metrics()
        self.service: InferenceService | None = None
        self._loaded = asyncio.Event()  # set once the model is loaded; clicks wait for it, never get dropped
        self.max_event_time = 0.0
        s = settings
        self.clicks = app.topic(
            s.topic_clicks, key_serializer="raw", value_serializer="raw", partitions=s.partitions
        )
        self.recommendations = app.topic(
            s.topic_recommendations, key_serializer="raw", value_serializer="json", partitions=s.partitions
        )
        self.dlq = app.topic(
            s.topic_dlq, key_serializer="raw", value_serializer="raw", partitions=s.partitions
        )
        self.sessions_out = app.topic(
            s.topic_sessions, key_serializer="raw", value_serializer="json", partitions=s.partitions
        )
        self.table = app.Table("sessions", default=None, partitions=s.partitions, key_type=str)
        app.agent(self.clicks, name="nextclick.clicks")(self.process)
        app.timer(s.expiry_interval, name="nextclick.expire")(self.expire)
        app.task(self.start)

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.metrics.serve(s.metrics_port, s.metrics_addr)
        path = s.checkpoint
        if path is None and s.registry:
            latest = Path(s.registry) / "LATEST"
            path = str(Path(s.registry) / latest.read_text().strip()) if latest.is_file() else None
        if path is None:
            raise SystemExit(
                "nextclick worker: no model: set --checkpoint / NEXTCLICK_CHECKPOINT or a registry"
            )
        served = await self.app.loop.run_in_executor(None, load_served, path, s.device, s.k)
        self.service = InferenceService(served, self.metrics, s.k, s.batch_size, s.batch_wait_ms)
        self.service.start()
        self._loaded.set()
        log.info("serving %s version %s from %s", served.name, served.version, path)

    async def _service(self) -> InferenceService:
        await self._loaded.wait()
        assert self.service is not None
        return self.service

    # -- table access with an explicit changelog partition ----------------------------------------------
    def _put(self, key: str, value: dict[str, Any], partition: int) -> None:
        self.table.data[key] = value
        self.table.send_changelog(partition, key, value)

    def _delete(self, key: str, partition: int) -> None:
        if key in self.table.data:
            del self.table.data[key]
        self.table.send_changelog(partition, key, None, value_serializer="raw")

    # -- the agent ---------------------------------------------------------------------------------------
    async def process(self, stream: StreamT) -> None:
        s = self.settings
        async for events in stream.take_events(s.batch_size, within=s.batch_wait_ms / 1000.0):
            pending: list[tuple[EventT, Click]] = []
            for event in events:
                click = await self._validate(event)
                if click is not None:
                    pending.append((event, click))
            while pending:
                wave, rest, seen = [], [], set()
                for item in pending:
                    (rest if item[1].session_id in seen else wave).append(item)
                    seen.add(item[1].session_id)
                await asyncio.gather(*(self._answer_or_dead_letter(e, c) for e, c in wave))
                pending = rest
            self.metrics.active_sessions.set(len(self.table.data))

    async def _validate(self, event: EventT) -> Click | None:
        s = self.settings
        raw = event.message.value
        key = event.message.key
        try:
            click = parse_click(
                raw,
                max_bytes=s.max_message_bytes,
                max_id_length=s.max_id_length,
                max_future_seconds=s.max_future_seconds,
            )
        except InvalidClick as bad:
            await self.dlq.send(
                key=key,
                value=raw or b"",
                headers=[("reason", bad.reason.encode()), ("detail", bad.detail[:200].encode())],
            )
            self.metrics.dlq.labels(reason=bad.reason).inc()
            self.metrics.events.labels(outcome="invalid").inc()
            return None
        if key != click.session_id.encode():
            # keyed otherwise by the producer: repartition by session id so the session's table lives here
            await self.clicks.send(key=click.session_id.encode(), value=raw)
            self.metrics.events.labels(outcome="repartitioned").inc()
            return None
        return click

    async def _answer_or_dead_letter(self, event: EventT, click: Click) -> None:
        """A click that cannot be answered (a model failure) goes to the DLQ; the worker goes on."""
        try:
            await self._answer(event, click)
        except Exception as exc:
            log.exception("click %s of session %s failed", click.event_id, click.session_id)
            await self.dlq.send(
                key=event.message.key,
                value=event.message.value or b"",
                headers=[("reason", b"internal_error"), ("detail", repr(exc)[:200].encode())],
            )
            self.metrics.dlq.labels(reason="internal_error").inc()
            self.metrics.events.labels(outcome="failed").inc()

    async def _answer(self, event: EventT, click: Click) -> None:
        s = self.settings
        arrived = event.message.timestamp or time.time()
        event_time = click.timestamp if click.timestamp is not None else arrived
        self.max_event_time = max(self.max_event_time, event_time)
        state = self.table.data.get(click.session_id)
        offset = event.message.offset
        if state is None:
            state = {
                "items": [],
                "times": [],
                "recs": [],
                "user": click.user_id,
                "p": event.message.partition,
                "o": -1,
            }
        replayed = state.get("p") == event.message.partition and offset <= state.get("o", -1)
        service = await self._service()
        if replayed:
            # at-least-once redelivery (a rebalance or crash before the offset commit): the click is in the
            # history already; answer it again from the history as it stands, append nothing
            answer = await service.recommend(state["items"])
            self.metrics.events.labels(outcome="redelivered").inc()
        else:
            if state["recs"]:
                self._evaluate_online(state["recs"], click.item_id)
            state["items"].append(click.item_id)
            state["times"].append(event_time)
            answer = await service.recommend(state["items"], click.session_id)
            state["recs"] = answer.items
            state["p"] = event.message.partition
            state["o"] = offset
            self._put(click.session_id, state, event.message.partition)
        latency = time.time() - arrived
        await self.recommendations.send(
            key=click.session_id.encode(),
            value={
                "session_id": click.session_id,
                "event_id": click.event_id or f"{event.message.partition}:{event.message.offset}",
                "items": answer.items,
                "scores": answer.scores,
                "model": answer.model,
                "model_version": answer.version,
                "latency_ms": round(latency * 1000.0, 3),
                "created_at": time.time(),
            },
        )
        self.metrics.e2e.observe(max(latency, 0.0))
        self.metrics.events.labels(outcome="answered").inc()
        self.metrics.recommendations.labels(source=answer.source).inc()
        if len(state["items"]) >= s.max_session_length:
            await self._close(click.session_id, state, "too_long")

    def _evaluate_online(self, recs: list[str], item: str) -> None:
        k = self.settings.k
        try:
            rank = recs[:k].index(item) + 1
        except ValueError:
            rank = 0
        self.metrics.evaluated.inc()
        self.metrics.reciprocal_rank.observe(1.0 / rank if rank else 0.0)
        if rank:
            self.metrics.hits.inc()

    # -- session lifecycle -------------------------------------------------------------------------------
    async def _close(self, session_id: str, state: dict[str, Any], reason: str) -> None:
        await self.sessions_out.send(
            key=session_id.encode(),
            value={
                "session_id": session_id,
                "items": state["items"],
                "timestamps": state["times"],
                "user_id": state.get("user"),
                "reason": reason,
                "closed_at": time.time(),
            },
        )
        self._delete(session_id, state["p"])
        self.metrics.sessions_closed.labels(reason=reason).inc()

    async def expire(self) -> None:
        horizon = self.max_event_time - self.settings.session_ttl
        if self.max_event_time <= 0:
            return
        idle = [
            (k, v) for k, v in list(self.table.data.items()) if v and v["times"] and v["times"][-1] < horizon
        ]
        for key, state in idle:
            await self._close(key, state, "idle")
        self.metrics.active_sessions.set(len(self.table.data))


def create_app(settings: Settings | None = None) -> App:
    s = settings or Settings.from_env()
    conf: dict[str, Any] = dict(
        broker=f"kafka://{s.bootstrap}",
        store="memory://",
        topic_partitions=s.partitions,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        datadir=s.data_dir,
        web_enabled=bool(s.web_port),
        web_port=s.web_port or 6066,
        topic_disable_leader=True,
    )
    if s.single_record_batches:
        conf["producer_max_batch_size"] = (
            1  # embedded Tansu: its end offset is wrong for multi-record batches
        )
    app = App(s.app_id, **conf)
    app.fetch_wait_ms = s.fetch_wait_ms
    app.pipeline = Pipeline(app, s)  # type: ignore[attr-defined]
    return app


app = create_app()
