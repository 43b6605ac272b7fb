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

A partition the worker keeps through a rebalance is not read again: what it holds is newer than or equal
to its changelog, and it tells Faust's recovery so with the offset of its own last write the broker
acknowledged (`set_persisted_offset`, which the pipeline calls as acknowledgements come in; Faust's
RocksDB store keeps the same offset on disk). Faust's recovery used to read such a partition again from
where it had last stopped, putting the worker's own older writes over what it held: any write not yet
landed when recovery read the end offset lost the clicks after it, and a Faust recovery waiting for
changelog records that never came stalled a takeover for minutes (both in CI runs under load).
A partition handed to another worker is forgotten (its offset is dropped with it), so getting it back
later reads it again in full: another worker may have written it meanwhile. The records are applied as
Faust would (last write wins, tombstones delete, `SessionTable._to_value`); whole sessions are made of
them after recovery, with the rest (`stream.worker.pipeline.Pipeline._on_rebalance_complete`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from faust.stores.memory import Store
from faust.types import TP

from stream.worker.changelog import ChangelogRead, read_changelog
from stream.worker.heap import collector_paused_then_frozen
from stream.worker.session import Absorbed, Session, absorbed_key, assemble, from_stored

log = logging.getLogger("nextclick.worker")


RESTORE_TIMEOUT = 300.0  # seconds for the bulk read (1M sessions: ~35 s here) before Faust's recovery does it


class Held(NamedTuple):
    """What a rebalance finds in the partitions held (`scan`): each session's clocks for the idle index,
    how far each partition's clicks are absorbed, chunks without a session (to delete, with their
    partition), and sessions some of whose chunks are missing (kept with the clicks there are)."""

    sessions: list[tuple[str, float, float, int]]
    absorbed: dict[int, int]
    orphans: list[tuple[str, int]]
    broken: list[str]


class BulkRestoredStore(Store):
    """Faust's memory store, restoring newly assigned changelog partitions itself (see the module)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.restored_to: dict[TP, int] = {}  # changelog partition -> last offset read in bulk or written
        self.held: set[TP] = set()  # the changelog partitions assigned to this worker now

    def persisted_offset(self, tp: TP) -> int | None:
        return self.restored_to.get(tp)

    # -- the pipeline's side (the same calls as `stream.worker.rocks.RocksSessionStore`) -------------------
    def session(self, key: str, partition: int) -> Session | None:
        """A copy of the session to change: the table changes only once its batch is answered (`hold`)."""
        stored = self.data.get(key)
        return None if stored is None else stored.copy()

    def hold(self, key: str, session: Session) -> None:
        self.data[key] = session

    def drop(self, key: str) -> None:
        self.data.pop(key, None)

    def write(self, partition: int, key: bytes, value: bytes | None) -> None:
        """The changelog's records are not kept here: whole sessions are (`hold`)."""

    def forget_except(self, held: set[int], indexed: dict[str, Any]) -> list[str]:
        """Forget the sessions of partitions no longer held, all of them (Faust's memory store forgets only
        what it recovered itself, and some were restored in bulk)."""
        data = self.data
        gone = [key for key, state in data.items() if state is not None and state.partition not in held]
        for key in gone:
            del data[key]
        return gone

    def scan(self, partitions: Iterable[int]) -> Held:
        """Take the partitions' absorbed marks out of the table, assemble the sessions recovery read (the
        keys `SessionTable.unassembled` names, not every session), and list every session's clocks."""
        data, found = self.data, Held([], {}, [], [])
        for partition in partitions:
            mark = data.pop(absorbed_key(partition), None)
            if isinstance(mark, Absorbed):
                found.absorbed[partition] = mark.offset
        orphans, broken = assemble(data, self.table.unassembled)
        self.table.unassembled.clear()
        found.orphans.extend(orphans)
        found.broken.extend(broken)
        found.sessions.extend(
            (key, state.mark, state.seen, state.partition) for key, state in data.items() if state is not None
        )
        return found

    async def read_since(self, bootstrap: str, topic: str, start: dict[int, int]) -> tuple[int, int]:
        """The changelog from `start` applied to the table (the Tansu repair); returns the records read and
        the sessions they changed."""
        read = await read_changelog(bootstrap, topic, start, decode=from_stored)
        return read.records, sum(self.table.put_stored(key, record) for key, record in read.latest.items())

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """The broker acknowledged this worker's write at `offset`: the store holds the partition to it (not
        one handed away meanwhile: getting it back must read it again)."""
        if tp in self.held:
            self.restored_to[tp] = max(offset, self.restored_to.get(tp, -1))

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        changelog = self.table.changelog_topic.get_topic_name()
        self.held = {tp for tp in assigned if tp.topic == changelog}
        for tp in revoked:
            self.restored_to.pop(tp, None)
        # no standby replicas (`stream.worker.pipeline.base_app`): every changelog partition assigned is active
        fresh = sorted(
            tp.partition for tp in newly_assigned if tp.topic == changelog and tp not in self.restored_to
        )
        if fresh:
            await self.restore(changelog, fresh)

    async def restore(self, topic: str, partitions: list[int]) -> None:
        t0 = time.perf_counter()
        # each record into the table as it is read, in order (last write wins, tombstones delete); the
        # sessions made are frozen out of the collector's sight, or the next collections walk them all
        with collector_paused_then_frozen():
            read = await read_in_bulk(
                self.app, topic, partitions, decode=self.table._to_value, apply=self.table.put_stored
            )
        if read is None:
            return
        for partition, offset in read.last.items():
            # the real last offset, which can lie beyond Tansu's reported end: the app turns off Faust's
            # check that refuses a persisted offset past it (`stream.worker.pipeline.base_app`)
            self.restored_to[TP(topic, partition)] = offset
        log.info("restored partitions %s of %s in bulk: %d records in %.1f s", partitions, topic,
                 read.records, time.perf_counter() - t0)  # fmt: skip


async def read_in_bulk(
    app: Any, topic: str, partitions: list[int] | dict[int, int], **how: Any
) -> ChangelogRead | None:
    """`read_changelog` on the app's brokers within `RESTORE_TIMEOUT`; None, logged, when it fails: Faust's
    recovery then reads those partitions instead, from the offsets the store held before, over what the read
    applied (last write wins: the same end state), slower, as complete."""
    bootstrap = ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)
    try:
        return await asyncio.wait_for(read_changelog(bootstrap, topic, partitions, **how), RESTORE_TIMEOUT)
    except Exception as exc:
        log.error("bulk restore of partitions %s of %s failed (%r): Faust's recovery reads them",
                  sorted(partitions), topic, exc)  # fmt: skip
        return None
