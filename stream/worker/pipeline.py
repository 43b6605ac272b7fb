"""The Faust app: clicks -> session table -> micro-batched inference -> recommendations.

`create_app` builds it; `nextclick worker` runs it, and `faust -A stream.app worker` through the entry
module `stream.app`; settings come from the environment (`stream.settings.WorkerSettings`).

State. The `sessions` table maps a session id to a `stream.worker.session.Session`, what must survive a
restart or rebalance: the session's clicks (item ids and timestamps, at most `max_session_length`), the
last recommendation list's items (for online evaluation), the user id and where its last click came from.
The table lives in memory (the default) or on disk in RocksDB (`NEXTCLICK_STORE=rocksdb://`), and the
pipeline reaches either through the same calls (`stream.worker.table`).
Writes go to the local store and to the changelog partition of the click that caused them, explicitly: the
agent handles clicks in micro-batches, where Faust's "current event" would be only the batch's last one.
The changelog holds a session's clicks in sealed chunks and its own record (`stream.worker.session`), so a
write costs the same however long the session is; after a rebalance's recovery `assemble` makes whole
sessions of them again, before the stream resumes.

Expiry. Faust tables have no per-key TTL (faust-streaming #515), so a timer looks every `expiry_interval`
seconds (through `stream.worker.expiry.IdleIndex`, not a scan of the table) and closes the sessions idle
for `session_ttl` seconds: of event time on a clock no one producer can move, or of the worker's own clock
(`stream.worker.expiry`); over-long sessions close right after their last answer. A closed session is
published to `sessions` for the trainer and deleted from the table (tombstones in the changelog: the
session's record, then its sealed chunks) and from the model's state cache.

Redelivery. Processing is at-least-once: after a crash or a rebalance before the offset commit a click can
arrive twice. Each session remembers the offset of the last click it absorbed, and each partition how far
its clicks are absorbed (`stream.worker.session.Absorbed`: a closed session remembers nothing); a click at
or below either is answered again (from the history as it stands) but never appended twice, so histories
stay exact and a closed session never reopens.

Batching. The agent takes up to `batch_size` clicks at once and answers them with one model call: the
i-th click of a session in the batch is asked about with the session's history up to and including it,
online evaluation and the published answers follow click order, and each touched session is written to
the changelog once per batch, not once per click.

Rebalances. A partition the worker keeps is not read again (the store is held to the broker's
acknowledgements of its writes, `stream.worker.store`); one it is newly given is read in bulk to its end
(on RocksDB from the offset its database holds it to, `stream.worker.rocks`).
When Faust's recovery has finished and before the stream resumes (`on_rebalance_complete`),
the worker forgets the sessions of partitions it no longer holds (Faust's memory store forgets only what
it recovered itself, and the expiry timer would otherwise close another worker's sessions) and, on the
embedded Tansu broker, reads what recovery can have missed (`Pipeline._catch_up`).

The per-click path. A click costs one orjson parse (`stream.worker.clicks`), one working copy of its
session per batch, one look-up of its history in the model's vocabulary, and one orjson-encoded answer
handed straight to Faust's producer (`_send`: not through Faust's per-message topic machinery, which
serialises, wraps and calls back per message); counters are bound to their labels once. The consumed batch
reaches the model in one executor call (`InferenceService.recommend_many`).

Topics. The worker creates the topics it reads and writes, with `partitions` and `replication_factor`,
and the table's changelog compacted (Faust's default for a table: only each session's last state is
kept); NEXTCLICK_CREATE_TOPICS=0 leaves that to an operator (README, "Topics on a locked-down cluster").
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson
from faust.types import TP, EventT, StreamT

from stream.kafka.broker import is_tansu
from stream.kafka.clients import faust_credentials
from stream.metrics import Metrics
from stream.settings import WorkerSettings
from stream.worker.batching import take_ready
from stream.worker.clicks import Click, InvalidClick, parse_click
from stream.worker.expiry import EventClock, IdleIndex, is_idle
from stream.worker.heap import collector_paused_then_frozen, freeze_heap
from stream.worker.hotswap import ModelWatcher, load_verified
from stream.worker.inference import Answer, InferenceService, Served
from stream.worker.learning import SessionLearner
from stream.worker.session import RECS_SEP, Absorbed, Session, absorbed_key, joined
from stream.worker.table import SessionTable
from stream.worker.transport import App

log = logging.getLogger("nextclick.worker")

CATCHUP_ATTEMPTS = 3  # tries of the changelog repair after a rebalance ...
CATCHUP_TIMEOUT = 10.0  # ... of at most this many seconds each


class Pipeline:
    def __init__(self, app: App, settings: WorkerSettings) -> None:
        self.app = app
        self.settings = settings
        self.metrics = Metrics()
        self.service: InferenceService | None = None
        self._loaded = asyncio.Event()  # set once the model is loaded; clicks wait for it, never get dropped
        self.clock = EventClock()  # event time for expiry (stream.worker.expiry)
        self.idle = IdleIndex()  # which sessions can be idle, without scanning the table
        s = settings
        # internal=True: Faust creates the topic it subscribes to (with the partitions and replication
        # factor set here) when it is missing, before the consumer joins; the outputs are created in start()
        self.clicks = app.topic(
            s.topic_clicks,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.partitions,
            internal=True,
        )
        self.recommendations = app.topic(
            s.topic_recommendations, key_serializer="raw", value_serializer="raw", partitions=s.partitions
        )
        self.dlq = app.topic(
            s.topic_dlq, key_serializer="raw", value_serializer="raw", partitions=s.partitions
        )
        self.sessions_out = app.topic(
            s.topic_sessions, key_serializer="raw", value_serializer="raw", partitions=s.partitions
        )
        self.table = app.tables.add(
            SessionTable(
                app, name="sessions", partitions=s.partitions, key_type=str, beacon=app.tables.beacon
            )
        )
        self.absorbed: dict[int, int] = {}  # clicks partition -> last offset absorbed (`Absorbed`)
        self.topic_names = {
            topic: topic.get_topic_name()
            for topic in (
                self.clicks,
                self.recommendations,
                self.dlq,
                self.sessions_out,
                self.table.changelog_topic,
            )
        }
        m = self.metrics  # the per-click counters, bound to their labels once
        self.answered = m.events.labels(outcome="answered")
        self.redelivered = m.events.labels(outcome="redelivered")
        self.answered_from = {
            source: m.recommendations.labels(source=source) for source in ("model", "fallback")
        }
        app.agent(self.clicks, name="nextclick.clicks")(self.process)
        app.timer(s.expiry_interval, name="nextclick.expire")(self.expire)
        app.task(self.start)
        self._batch = asyncio.Lock()  # held while a consumed batch is answered and written
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.metrics.serve(s.metrics_port, s.metrics_addr)
        # the outputs (a no-op with NEXTCLICK_CREATE_TOPICS=0: Faust's topic_allow_declare)
        for topic in (self.recommendations, self.dlq, self.sessions_out):
            await topic.maybe_declare()
        load = functools.partial(load_verified, device=s.device, k=s.k, bf16=s.score_bf16)
        if s.checkpoint:
            served = await self.app.loop.run_in_executor(None, load, s.checkpoint)
        elif s.registry:
            self.watcher = ModelWatcher(
                s.registry,
                bootstrap=s.bootstrap,
                topic=s.topic_model_updates,
                poll_interval=s.registry_poll_interval,
                load=load,
                on_swap=self._swap,
                on_refused=lambda version, reason: self.metrics.model_load_failures.labels(
                    reason=reason
                ).inc(),
            )
            served = await self.watcher.first()
            self._watch_task = asyncio.get_running_loop().create_task(self.watcher.run())
        else:
            raise SystemExit(
                "nextclick worker: no model: set --checkpoint / NEXTCLICK_CHECKPOINT or a registry"
            )
        # out of the collector's sight (`freeze_heap`), without thawing or collecting first: a bulk read of
        # a million sessions may have run meanwhile, and a full collection would walk them all (3 s here)
        gc.freeze()
        self.service = InferenceService(served, self.metrics, s.k, s.batch_size, s.batch_wait_ms)
        self.service.start()
        if s.learn_interval > 0:
            learner = SessionLearner(
                self.service,
                bootstrap=s.bootstrap,
                topic=s.topic_sessions,
                interval=s.learn_interval,
                max_items=s.max_session_length,
                max_sessions=s.learn_max_sessions,
            )
            self._learn_task = asyncio.get_running_loop().create_task(learner.run())
        self._loaded.set()
        log.info("serving %s version %s", served.name, served.version)

    async def _swap(self, served: Served, load_seconds: float) -> None:
        service = await self._service()
        previous = service.served.version
        service.swap(served)
        freeze_heap()
        self.metrics.swap_seconds.observe(load_seconds)
        if served.published_at:
            self.metrics.publish_to_serve.observe(max(time.time() - served.published_at, 0.0))
        log.info(
            "swapped model %s -> %s (loaded and checked in %.2f s)", previous, served.version, load_seconds
        )

    async def _service(self) -> InferenceService:
        await self._loaded.wait()
        assert self.service is not None
        return self.service

    # -- table access with an explicit changelog partition ----------------------------------------------
    async def _put(self, key: str, value: Session, partition: int) -> None:
        """The session's full chunks not yet sealed, then its own record (`stream.worker.session`)."""
        self.table.data.hold(key, value)
        self.idle.touch(key, value.mark, value.seen, partition)
        for chunk, record in value.seal(key):
            await self._write(partition, chunk, record)
        await self._write(partition, key, value.to_json())

    async def _delete(self, key: str, partition: int, chunks: list[str]) -> None:
        """The session's record first, then its chunks: a crash in between leaves chunks without a
        session (`assemble` drops them), never a session without its first clicks."""
        self.table.data.drop(key)
        self.idle.forget(key)
        for record in (key, *chunks):
            await self._write(partition, record, None)

    async def _write(self, partition: int, key: str, value: bytes | None) -> None:
        """One changelog record (JSON key, as Faust writes a table's), straight to the producer like every
        other write here, not through Faust's `send_changelog` buffer, whose flush returns after 0.1 s
        without a send even with records still in it: a rebalance could then read the changelog's end
        before this worker's last writes. The broker's acknowledgement tells the store how far it holds the
        partition (`BulkRestoredStore.set_persisted_offset`); a store on disk keeps the record itself
        (`RocksSessionStore.write`), before it is sent."""
        key_bytes = orjson.dumps(key)
        self.table.data.write(partition, key_bytes, value)
        sent = await self._send(self.table.changelog_topic, key_bytes, value, partition=partition)
        sent.add_done_callback(self._written)

    def _written(self, sent: asyncio.Future) -> None:
        if sent.cancelled() or sent.exception() is not None:
            self.metrics.changelog_write_failures.inc()
            log.error("a changelog write failed (%r): a restart may restore that session older",
                      None if sent.cancelled() else sent.exception())  # fmt: skip
            return
        meta = sent.result()
        self.table.data.set_persisted_offset(TP(meta.topic, meta.partition), meta.offset)

    async def _send(
        self,
        topic: Any,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future:
        """One record to one of our topics (the table's changelog included), straight to Faust's producer
        (its buffer, its flush on rebalance), the value already bytes; returns the broker's answer to come."""
        return await self.app.producer.send(self.topic_names[topic], key, value, partition, None, headers)

    # -- the agent ---------------------------------------------------------------------------------------
    async def process(self, stream: StreamT) -> None:
        s = self.settings
        batches = take_ready(
            stream, s.batch_size, assigned=self.app.consumer.assignment, settle=s.batch_wait_ms / 1000.0
        )
        async for events in batches:
            async with self._batch:  # see _on_revoked
                await self._handle(events)

    async def _handle(self, events: list[EventT]) -> None:
        """One consumed batch: validate, repair (Tansu), answer, write."""
        t0 = time.perf_counter()
        clicks: list[tuple[EventT, Click]] = []
        for event in events:
            click = await self._validate(event)
            if click is not None:
                clicks.append((event, click))
        if clicks:
            await self._answer_or_dead_letter(clicks)
        self.metrics.active_sessions.set(len(self.idle))
        self.metrics.consumed_batch.observe(len(events))
        self.metrics.consumed_batch_latency.observe(time.perf_counter() - t0)

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
            headers = [("reason", bad.reason.encode()), ("detail", bad.detail[:200].encode())]
            await self._send(self.dlq, key, raw or b"", headers)
            self.metrics.dlq.labels(reason=bad.reason).inc()
            self.metrics.events.labels(outcome="invalid").inc()
            return None
        if key != click.session_id.encode():
            # keyed otherwise by the producer: repartition by session id so the session's table lives here
            await self._send(self.clicks, click.session_id.encode(), raw)
            self.metrics.events.labels(outcome="repartitioned").inc()
            return None
        return click

    async def _answer_or_dead_letter(self, clicks: list[tuple[EventT, Click]]) -> None:
        """Clicks that cannot be answered (a model failure) go to the DLQ, their sessions untouched; the
        worker goes on."""
        try:
            await self._answer(clicks)
        except Exception as exc:
            log.exception("a batch of %d clicks failed", len(clicks))
            for event, _ in clicks:
                headers = [("reason", b"internal_error"), ("detail", repr(exc)[:200].encode())]
                await self._send(self.dlq, event.message.key, event.message.value or b"", headers)
            self.metrics.dlq.labels(reason="internal_error").inc(len(clicks))
            self.metrics.events.labels(outcome="failed").inc(len(clicks))

    def _working_state(self, click: Click, partition: int) -> Session:
        """A copy of the session's stored state to update (the store's `session` gives one); the table
        changes only once the batch is answered."""
        stored = self.table.data.session(click.session_id, partition)
        return Session(user=click.user_id, partition=partition) if stored is None else stored

    async def _answer(self, clicks: list[tuple[EventT, Click]]) -> None:
        """One model call for the whole consumed batch, in click order within each session: the i-th click
        of a session in the batch is asked about with the history up to and including it."""
        s = self.settings
        states: dict[str, Session] = {}
        asks: list[tuple[list[str], str | None]] = []
        replayed: list[bool] = []
        for event, click in clicks:
            msg = event.message
            state = states.get(click.session_id)
            if state is None:
                state = states[click.session_id] = self._working_state(click, msg.partition)
            again = msg.offset <= self.absorbed.get(msg.partition, -1) or (
                state.partition == msg.partition and msg.offset <= state.offset
            )
            if not again:
                wall = time.time()
                stamp = click.timestamp if click.timestamp is not None else (msg.timestamp or wall)
                state.items.append(sys.intern(click.item_id))  # one string per item (stream.worker.session)
                state.times.append(stamp)
                state.partition, state.offset = msg.partition, msg.offset
                # idle time starts at the click's stamp, kept between the worker's event time and its wall
                # clock (stream.worker.expiry): no producer's clock ages another visitor's session
                state.mark, state.seen = self.clock.observe(click.session_id, stamp, wall), wall
            # a redelivered click (at-least-once: a rebalance or crash before the offset commit) is in the
            # history already: it is answered again from the history as it stands and appended nothing;
            # the i-th click of a session in the batch is asked about with its first i items; one of a
            # session closed since (nothing left of it here) with its own item
            asks.append((state.items[:] or [click.item_id], None if again else click.session_id))
            replayed.append(again)
        service = await self._service()
        answers = await service.recommend_many(asks)
        for (event, click), answer, again in zip(clicks, answers, replayed, strict=True):
            state = states[click.session_id]
            if again:
                self.redelivered.inc()
            else:
                if state.recs:
                    self._evaluate_online(state.recs.split(RECS_SEP), click.item_id)
                state.recs = joined(answer.items)
            await self._publish(event, click, answer)
        absorbed = dict.fromkeys(
            c.session_id for (_, c), again in zip(clicks, replayed, strict=True) if not again
        )
        for session_id in absorbed:  # one changelog write per session for the whole batch, none if unchanged
            state = states[session_id]
            await self._put(session_id, state, state.partition)
            if len(state.items) >= s.max_session_length:
                await self._close(session_id, state, "too_long")
        await self._mark_absorbed(event.message for event, _ in clicks)

    async def _mark_absorbed(self, messages: Iterable[Any]) -> None:
        """After the batch's session records: how far each of its partitions is absorbed (`Absorbed`)."""
        reached: dict[int, int] = {}
        for msg in messages:
            reached[msg.partition] = max(msg.offset, reached.get(msg.partition, -1))
        for partition, offset in reached.items():
            if offset > self.absorbed.get(partition, -1):
                self.absorbed[partition] = offset
                await self._write(partition, absorbed_key(partition), Absorbed(partition, offset).to_json())

    async def _publish(self, event: EventT, click: Click, answer: Answer) -> None:
        now = time.time()
        latency = now - (event.message.timestamp or now)
        value = {
            "session_id": click.session_id,
            "event_id": click.event_id or f"{event.message.partition}:{event.message.offset}",
            "items": answer.items,
            "scores": answer.scores,
            "model": answer.model,
            "model_version": answer.version,
            "source": answer.source,  # "model", or "fallback": the recent popularity list
            "latency_ms": round(latency * 1000.0, 3),
            "created_at": now,
        }
        await self._send(self.recommendations, click.session_id.encode(), orjson.dumps(value))
        self.metrics.e2e.observe(max(latency, 0.0))
        self.answered.inc()
        self.answered_from[answer.source].inc()

    # -- rebalances ----------------------------------------------------------------------------------------
    async def _on_revoked(self, *args: Any, **kwargs: Any) -> None:
        """Let the batch in flight finish and its changelog writes land before the rebalance goes on.

        Faust flushes its producer when partitions are revoked, but a batch still being answered writes its
        sessions after that flush; Faust's recovery of the partitions handed back then read the changelog
        without them and put the older histories back over the newer ones in the table (on Apache Kafka
        after a 10 s broker stall: sessions lost clicks). Faust awaits this signal before it reassigns."""
        async with self._batch:
            await self.app.producer.flush()
            await asyncio.sleep(0)  # the acknowledgements' callbacks (`_written`) run before the reassignment

    async def _on_rebalance_complete(self, *args: Any, **kwargs: Any) -> None:
        """After Faust's recovery, before the stream resumes (Faust awaits this signal): forget the
        sessions of partitions that went to another worker, repair what recovery missed (Tansu), then make
        whole sessions of what recovery read and index them for expiry (`_index_restored`)."""
        held = {
            tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.clicks.get_topic_name()
        }
        gone = self.table.data.forget_except(held, self.idle.by_click)
        if self.service is not None:
            self.service.forget(gone)
        if gone:
            log.info("rebalance: %d sessions now held by another worker forgotten", len(gone))
        if held:
            await self._catch_up(held)
        orphans = self._index_restored(held)
        for key, partition in orphans:  # a crash between a session's deletion and its chunks'
            await self._write(partition, key, None)

    def _index_restored(self, held: set[int]) -> list[tuple[str, int]]:
        """Take the partitions' absorbed marks, assemble the sessions recovery read (the memory store),
        rebuild the idle index from what the store holds (`scan`); returns the chunks without a session, to
        delete.

        With a million restored sessions every pass counts: no collection runs meanwhile, and what is
        alive after, the restored sessions with it, is frozen (`collector_paused_then_frozen`)."""
        with collector_paused_then_frozen():
            found = self.table.data.scan(sorted(held))
            self.absorbed = {p: offset for p, offset in self.absorbed.items() if p in held}
            for partition, offset in found.absorbed.items():  # how far each partition is absorbed
                self.absorbed[partition] = max(offset, self.absorbed.get(partition, -1))
            if found.broken:
                log.error("%d restored sessions miss some of their sealed clicks in the changelog (first: "
                          "%r)", len(found.broken), found.broken[0])  # fmt: skip
            self.idle.rebuild(found.sessions)
            self.metrics.active_sessions.set(len(self.idle))
            return found.orphans

    async def _catch_up(self, partitions: set[int]) -> None:
        """Read what Faust's table recovery can have missed: the changelog from where recovery stopped.

        Faust's recovery stops at the broker's reported end offset. The embedded Tansu broker reports the
        base offset of the last record batch + 1, so recovery silently drops the rest of that batch
        (../shared/notes/embedded-broker.md): a restarted worker would lose a session's last clicks. This
        reads each partition from the highwater recovery read to (Faust's `active_highwaters`: the reported
        end - 1, the last batch's base offset), or from the last record the store already holds if that
        is further (the store's `persisted_offset`: the bulk read went to the real end, or this worker's
        own acknowledged writes), until that record and the reported end are passed and a fetch comes back
        empty, and applies every record (last write wins, tombstones delete): a few records, not the whole
        changelog again (from the last batch's base alone, a CI run re-read 63 of 179 records after a bulk
        read had read them all). Not from Faust's `active_offsets`: records fetched after recovery ended
        are counted there but sit unapplied in Faust's recovery buffer (a CI run lost a session's clicks
        that way); the repair supersedes them, so they are dropped from that buffer, where a later flush
        would otherwise put them back over newer state. It runs inside the rebalance,
        where the stream is paused anyway, never in the agent. It runs only on Tansu (`_catch_up_needed`):
        on Apache Kafka recovery is exact (a test shows both sides).

        A partition this worker served before the rebalance may have changelog writes still in the
        producer's buffer: reading before they land would restore an older history over the newer one (a
        kill -9 test under load caught it), so the producer is flushed first. A failed read is retried;
        after the last try it is logged as an error and counted (`nextclick_changelog_catchup_total
        {outcome="failed"}`), never dropped silently."""
        if not await self._catch_up_needed():
            return
        topic = self.table.changelog_topic.get_topic_name()
        recovery = self.app.tables.recovery
        held_to = self.table.data.persisted_offset  # read in bulk, or written and acknowledged
        start = {  # each an offset that holds a record (`read_changelog`), read again: last write wins
            p: max(recovery.active_highwaters.get(TP(topic, p)) or 0, held_to(TP(topic, p)) or 0, 0)
            for p in sorted(partitions)
        }
        for attempt in range(1, CATCHUP_ATTEMPTS + 1):
            try:
                await self.app.producer.flush()
                records, restored = await asyncio.wait_for(
                    self.table.data.read_since(self.settings.bootstrap, topic, start), CATCHUP_TIMEOUT
                )
                break
            except Exception as exc:
                if attempt == CATCHUP_ATTEMPTS:
                    self.metrics.catchup.labels(outcome="failed").inc()
                    log.error("changelog catch-up of %s %s failed %d times (last: %r): sessions there may "
                              "miss their last clicks", topic, start, attempt, exc)  # fmt: skip
                    return
                await asyncio.sleep(attempt)
        buffered = recovery.buffers.get(self.table)
        if buffered:  # older than what was just read (see above)
            buffered[:] = [event for event in buffered if event.message.partition not in partitions]
        self.metrics.catchup.labels(outcome="done").inc()
        self.metrics.catchup_records.inc(records)
        log.info("changelog catch-up of partitions %s from offsets %s: %d records read, %d sessions beyond "
                 "Faust's recovery", sorted(partitions), start, records, restored)  # fmt: skip

    async def _catch_up_needed(self) -> bool:
        """NEXTCLICK_CHANGELOG_CATCHUP=1 / 0 decide; left at auto, only a broker recognised as Tansu gets
        the repair (`stream.kafka.broker.is_tansu`, asked once)."""
        if self.settings.changelog_catchup is None:
            tansu = await self.app.loop.run_in_executor(None, is_tansu, self.settings.bootstrap)
            self.settings.changelog_catchup = tansu
            log.info("broker %s Tansu: changelog catch-up %s", "is" if tansu else "is not",
                     "on" if tansu else "off")  # fmt: skip
        return self.settings.changelog_catchup

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
    async def _close(self, session_id: str, state: Session, reason: str) -> None:
        value = {
            "session_id": session_id,
            "items": state.items,
            "timestamps": state.times.tolist(),
            "user_id": state.user,
            "reason": reason,
            "closed_at": time.time(),
        }
        await self._send(self.sessions_out, session_id.encode(), orjson.dumps(value))
        await self._delete(session_id, state.partition, state.chunk_keys(session_id))
        if self.service is not None:
            self.service.forget([session_id])
        self.metrics.sessions_closed.labels(reason=reason).inc()

    async def expire(self) -> None:
        """Close the idle sessions `IdleIndex` names: the cost is what expires, not what is live."""
        wall, ttl = time.time(), self.settings.session_ttl
        for key in self.idle.due(self.clock.now, wall, ttl):
            partition = self.idle.partition_of(key)  # None: closed meanwhile by a batch
            state = None if partition is None else self.table.data.session(key, partition)
            if state is None:
                self.idle.forget(key)
            elif is_idle(state.mark, state.seen, self.clock.now, wall, ttl):
                await self._close(key, state, "idle")
            else:  # cannot happen while the index follows the table; never lose a session's expiry
                self.idle.touch(key, state.mark, state.seen, state.partition)
        self.metrics.active_sessions.set(len(self.idle))
        if self.service is not None:
            self.service.report_cache()


def base_app(s: WorkerSettings) -> App:
    """A Faust app with the settings this product needs from its broker, without the pipeline (the
    benchmarks' bare agent, `scripts/bare_agent.py`, runs on it to measure the floor under the worker)."""
    conf: dict[str, Any] = dict(
        broker=f"kafka://{s.bootstrap}",
        store=s.store,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        topic_allow_declare=s.create_topics,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        # a request the broker never answers is retried after this, not after Faust's 90 s (an unanswered
        # fetch is reported against Tansu upstream; not proven here to be behind the restart stall)
        broker_request_timeout=s.request_timeout,
        producer_linger_ms=s.producer_linger_ms,
        # at-least-once: Faust's exactly_once does not hold for tables (RELIABILITY.md, "Exactly-once")
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        # no standby copies of other workers' sessions: a memory store would hold them twice, and a
        # takeover reads the partition to its end anyway (`BulkRestoredStore`); with Faust's standbys a
        # kill -9 takeover in CI lost the first clicks it served on the partitions it took over
        table_standby_replicas=0,
        # the store's offsets are the broker's own (a bulk read's last record, a write's acknowledgement);
        # Tansu reports an end offset below them, which Faust's check takes for a changelog gone back
        recovery_consistency_check=False,
        datadir=s.data_dir,
        web_enabled=bool(s.web_port),
        web_port=s.web_port or 6066,
        topic_disable_leader=True,
    )
    credentials = faust_credentials()
    if credentials is not None:
        conf["broker_credentials"] = credentials
    app = App(s.app_id, **conf)
    app.fetch_wait_ms = s.fetch_wait_ms
    return app


def create_app(settings: WorkerSettings | None = None) -> App:
    s = settings or WorkerSettings.from_env()
    app = base_app(s)
    app.pipeline = Pipeline(app, s)  # type: ignore[attr-defined]
    return app
