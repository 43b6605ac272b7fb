"""Faust's aiokafka transport with a configurable fetch wait and a seek that cannot lose records.

Fetch wait. Faust hard-codes `fetch_max_wait_ms=1500` for its worker consumer. A broker may hold a fetch for
up to that long when no new data is there, which on the embedded Tansu broker cost ~0.75 s per hop
(measured: stock Faust p50 1.2 s at 500 clicks/s; 18 ms with a 20 ms wait). The consumer is created by Faust
and started later, so setting its wait before start is enough.

Seek after a rebalance. After every rebalance Faust seeks the stream partitions back to their committed
offsets (`Consumer.perform_seek`), because records it had fetched but not yet processed were dropped from
the agents' queues. In faust-streaming 0.15.3 that seek races its own fetcher, and a worker skipped clicks
that arrived during a rebalance (the failover test lost 5-47 clicks in a quarter of its runs):
- the fetcher runs while the seek waits for the broker, so a batch fetched from the old position is still
  delivered after the seek; its records set the read offset past the committed one, and the fetcher's
  read-offset filter (`offset >= read_offset`) then drops the re-fetched records below them as "read";
- a record in flight when the seek ends writes its (old, higher) read offset after the seek reset it;
- aiokafka's `seek_to_committed` leaves a partition whose committed offset is 0 or missing where the
  fetcher had got to, so the records fetched before the rebalance are never fetched again;
- Faust resumes the fetcher while it recovers the tables, before that seek, so records from wherever the
  fetch position stood (past the committed offset) reach the agent first and the re-fetched ones below
  them after: out of order. The pipeline then takes the earlier click for a redelivery, answers it and
  never appends it (one click missing from a session's history; the churn test saw 8 to 11 sessions).
The fix keeps, per stream partition, an epoch that the consumer thread bumps in the same step as it moves
the fetch position, and tags every batch with the epochs it was fetched under. aiokafka hands out records
only from the current position, so a batch is either wholly from before a seek or wholly after it.
`_Consumer` skips a record whose batch is older than its partition's epoch, or whose partition the
rebalance under way assigned and its seek has not moved yet (either way it is fetched again from the new
position), and before the first record after a seek writes the seek's position as the read offset again.
Every stream partition is moved, committed or not. A record may come twice (the pipeline answers a
redelivered click again and appends it once), never zero times, and a partition's records reach the agent
in offset order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from time import monotonic
from typing import Any

import aiokafka
import faust
from faust.transport.consumer import RecordMap
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, Message

from stream.kafka.broker import is_tansu

log = logging.getLogger("nextclick.transport")


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = int(getattr(self.app, "fetch_wait_ms", 1500))
        return consumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epochs: dict[TP, int] = {}  # per stream partition: how often this consumer moved its position
        self.positions: dict[TP, int] = {}  # and where to, the last time
        self.unsought: set[TP] = set()  # assigned by the rebalance under way, not yet moved by its seek

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """Faust's rebalance handling, recovery and the seek included, runs inside this call."""
        self.unsought |= {tp for tp in assigned if not self.consumer._is_changelog_tp(tp)}
        await super().on_partitions_assigned(assigned, generation_id)

    async def subscribe(self, topics: Iterable[str]) -> None:
        await super().subscribe(topics)
        await self.call_thread(self._watch_for_topics, set(topics))

    async def _watch_for_topics(self, topics: set[str]) -> None:
        # kept: the event loop holds only a weak reference to a task
        self._topic_watch = asyncio.get_running_loop().create_task(self._until_topics_known(topics))

    async def _until_topics_known(self, topics: set[str], timeout: float = 60.0) -> None:
        """Refresh the metadata until every subscribed topic is in it.

        Faust creates the clicks topic right before it subscribes; on Apache Kafka the group's first join
        can still use metadata without it ("Ignoring missing topic"), and aiokafka looks again only after
        metadata_max_age_ms (5 minutes), serving nothing meanwhile. The metadata change makes aiokafka's
        group coordinator rejoin with the topic's partitions."""
        client = self._ensure_consumer()._client
        deadline = monotonic() + timeout
        while not topics <= client.cluster.topics():
            if monotonic() > deadline:
                log.warning("topics %s are still missing; create them (README: topics on a locked-down "
                            "cluster); the worker looks again every 5 minutes", sorted(topics - client.cluster.topics()))  # fmt: skip
                return
            await asyncio.sleep(0.25)
            await client.force_metadata_update()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed)

    async def _seek_to_committed(self) -> Mapping[TP, int]:
        """aiokafka's `seek_to_committed`, except that every stream partition moves (committed offset 0 or
        none included: to 0, or to where `auto_offset_reset` says) and that all of them move in one step,
        after the last broker answer, each with its epoch bumped. Changelog partitions move as aiokafka moves
        them; Faust's recovery reads those."""
        consumer = self._ensure_consumer()
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
        changelog = {tp for tp in committed if self.consumer._is_changelog_tp(tp)}
        unset = [tp for tp, o in committed.items() if (o is None or o < 0) and tp not in changelog]
        earliest = self.app.conf.consumer_auto_offset_reset == "earliest"
        start = (
            await (consumer.beginning_offsets if earliest else consumer.end_offsets)(unset) if unset else {}
        )
        # aiokafka's TopicPartition equals and hashes as Faust's TP: both are (topic, partition) tuples
        for tp, offset in committed.items():  # no await from here on: no batch can be handed out half-way
            if tp in changelog:
                if offset and offset > 0:
                    consumer.seek(tp, offset)
                continue
            self.positions[tp] = start.get(tp, offset)
            consumer.seek(tp, self.positions[tp])
            self.epochs[tp] = self.epochs.get(tp, 0) + 1
            self.unsought.discard(tp)
        return committed

    async def _fetch_records(self, *args: Any, **kwargs: Any) -> RecordMap:
        records = await super()._fetch_records(*args, **kwargs)
        return _Batch(records, {tp: self.epochs.get(tp, 0) for tp in records})  # no await since the fetch


class _Batch(dict):
    """A fetched batch and the epochs of its partitions when the fetcher handed it out."""

    def __init__(self, records: RecordMap, epochs: dict[TP, int]):
        super().__init__(records)
        self.epochs = epochs


class _Consumer(driver.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_epochs: dict[TP, int] = {}  # of the batch being delivered
        self._delivered_epochs: dict[TP, int] = {}  # of the last record delivered, per partition

    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> RecordMap:
        records = await super()._getmany(active_partitions, timeout)
        self._batch_epochs = getattr(records, "epochs", {})
        return records

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's getmany, minus records fetched before their partition's latest seek or before the seek
        that ends a rebalance: the seek moves the fetch position back, so they come again, in order."""
        thread, delivered = self._thread, self._delivered_epochs
        records = super().getmany(timeout)
        try:
            async for tp, message in records:
                epoch = thread.epochs.get(tp, 0)
                if self._batch_epochs.get(tp, 0) != epoch or tp in thread.unsought:
                    continue
                if delivered.get(tp, 0) != epoch:  # a stale record in flight may have moved it since the seek
                    self._read_offset[tp] = thread.positions[tp]
                    delivered[tp] = epoch
                yield tp, message
        finally:
            await records.aclose()


class _Producer(driver.Producer):
    def _settings_extra(self) -> Mapping[str, Any]:
        """Idempotent, as Kafka's own clients are by default since 3.0: a write retried across a broker
        stall lands once and in order, so a session's changelog never ends on an older record than the
        one the worker wrote last (Faust turns it on only for exactly-once). Not on the embedded Tansu,
        which refuses aiokafka's InitProducerId (`stream.kafka.broker`); asked once, when the producer is
        made at the worker's start."""
        extra = dict(super()._settings_extra())
        bootstrap = ",".join(self._settings_default()["bootstrap_servers"])
        if not is_tansu(bootstrap):
            extra.update(acks="all", enable_idempotence=True)
        return extra


class Transport(driver.Transport):
    Consumer = _Consumer
    Producer = _Producer


class App(faust.App):
    """faust.App on the transport above; `fetch_wait_ms` (milliseconds) is the worker's fetch wait."""

    fetch_wait_ms: int = 1500

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)

    def _create_directories(self) -> None:
        """Faust makes its data dir without its parents: a worker started in a fresh folder died on the
        default `.nextclick/worker` (FileNotFoundError)."""
        self.conf.datadir.mkdir(parents=True, exist_ok=True)
        super()._create_directories()
