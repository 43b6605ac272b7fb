"""The session table's in-memory store, restored in bulk at a rebalance instead of record by record.

Faust's recovery hands each changelog record through its recovery loop one at a time (a queue, a timeout,
bookkeeping and debug strings per record): about 5,000 records a second on this project's 2-core box, so
a worker with 100k live sessions was ready 24 s after its start and one with 1M would take minutes
(`scripts/bench_scale.py`). When Faust assigns this worker a changelog partition it did not hold, this
store reads the partition itself first, with one consumer fetching a megabyte at a time (the same reader
as the Tansu repair, `stream.worker.changelog.read_changelog`: to the partition's real end on either
broker), and tells Faust's recovery it holds the partition up to the last offset read (`persisted_offset`,
the hook Faust's RocksDB store uses for what it kept on disk). Faust's recovery then reads only what was
written after that, as before.

A partition handed to another worker is forgotten (its offset is dropped with it), so getting it back
later reads it again in full: another worker may have written it meanwhile. The records are applied as
Faust would (last write wins, tombstones delete, `SessionTable._to_value`); whole sessions are made of
them after recovery, with the rest (`stream.worker.pipeline.Pipeline._on_rebalance_complete`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from faust.stores.memory import Store
from faust.types import TP

from stream.worker.changelog import read_changelog

log = logging.getLogger("nextclick.worker")


RESTORE_TIMEOUT = 300.0  # seconds for the bulk read (1M sessions: ~35 s here) before Faust's recovery does it


class BulkRestoredStore(Store):
    """Faust's memory store, restoring newly assigned changelog partitions itself (see the module)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.restored_to: dict[TP, int] = {}  # changelog partition -> last offset read in bulk

    def persisted_offset(self, tp: TP) -> int | None:
        return self.restored_to.get(tp)

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        for tp in revoked:
            self.restored_to.pop(tp, None)
        changelog = self.table.changelog_topic.get_topic_name()
        standbys = self.app.assignor.assigned_standbys()
        fresh = sorted(
            tp.partition
            for tp in newly_assigned
            if tp.topic == changelog and tp not in standbys and tp not in self.restored_to
        )
        if fresh:
            await self.restore(changelog, fresh)

    async def restore(self, topic: str, partitions: list[int]) -> None:
        t0 = time.perf_counter()
        bootstrap = ",".join(f"{url.host}:{url.port or 9092}" for url in self.app.conf.broker)
        try:
            latest, records, last, reported_end = await asyncio.wait_for(
                read_changelog(bootstrap, topic, partitions, decode=self.table._to_value), RESTORE_TIMEOUT
            )
        except Exception as exc:  # Faust's recovery reads them from the start instead: slower, as complete
            log.error("bulk restore of partitions %s of %s failed (%r): Faust's recovery reads them",
                      partitions, topic, exc)  # fmt: skip
            return
        for key, record in latest.items():
            self.table.put_stored(key, record)
        for partition, offset in last.items():
            # never past the broker's reported end: Faust refuses to recover a partition whose persisted
            # offset is beyond it, and Tansu reports too low an end (its catch-up reads the rest again)
            self.restored_to[TP(topic, partition)] = min(offset, reported_end[partition] - 1)
        log.info("restored partitions %s of %s in bulk: %d records, %d keys in %.1f s", partitions, topic,
                 records, len(latest), time.perf_counter() - t0)  # fmt: skip
