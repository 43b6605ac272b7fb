"""The session table on disk (`NEXTCLICK_STORE=rocksdb://`): sessions in RocksDB, not in the Python heap,
and a restart on the same host reads only the changelog written since it stopped.

Each changelog partition has its own database (Faust's `faust.stores.rocksdb.Store`, on `rocksdict`), and
it holds exactly the changelog's records: the same JSON keys and values (a session's own record, its sealed
chunks, the partition's absorbed mark, `stream.worker.session`), last write wins, tombstones delete. So a
write is the same bytes locally and to the changelog (`write`), Faust's recovery applies records as it
does for any RocksDB table (raw, remembering the offset: `persisted_offset`), and nothing is assembled at
a restart: a session is read with its chunks when a click of it comes (`session`).

What differs from Faust's store:
- The partition is always given. Faust's store takes it from the current event, which a micro-batch of
  clicks does not have, and looks a key up in every partition's database when it has none.
- Newly assigned partitions are read in bulk, as the memory store reads them (`BulkRestoredStore`), but
  from the offset the database holds them to and without decoding a record: their bytes are copied in
  write batches. A first start reads the whole changelog a megabyte a fetch, not through Faust's recovery
  loop (about 5,000 records a second here); a restart reads what was written since it stopped.
- Writes and acknowledgements for a partition this worker no longer holds touch no database (Faust's
  store would open it again): getting the partition back reads the changelog from the database's offset,
  which covers them.
- Small buffers and caches (`OPTIONS`): Faust's defaults are a 2 GB block cache and three 64 MB write
  buffers per partition.

A partition handed to another worker keeps its database here with its offset; getting it back reads the
changelog from that offset, which holds every change made meanwhile as long as the changelog's compaction
keeps tombstones (Kafka's `delete.retention.ms`, a day by default): a partition away for longer can keep
sessions closed meanwhile, which then close again when idle (Faust's RocksDB tables share that limit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
from faust.stores import rocksdb
from faust.types import TP

from stream.worker.changelog import read_changelog
from stream.worker.session import SEP, Session, SessionChunk, assemble
from stream.worker.store import Held, read_in_bulk

log = logging.getLogger("nextclick.worker")

OPTIONS = {  # per partition's database
    "write_buffer_size": 16 * 1024**2,
    "max_write_buffer_number": 2,
    "target_file_size_base": 32 * 1024**2,
    "block_cache_size": 64 * 1024**2,
}
WRITE_BATCH = 20_000  # records copied per write batch in a bulk read


class RocksSessionStore(rocksdb.Store):
    """Faust's RocksDB store, each partition's database a copy of its changelog partition (see the module)."""

    def __init__(self, url: Any, app: Any, table: Any, **kwargs: Any) -> None:
        options = {**OPTIONS, **(kwargs.pop("options", None) or {})}
        super().__init__(url, app, table, options=options, driver="rocksdict", **kwargs)

    def _open(self, partition: int) -> Any | None:
        return self._dbs.get(partition)

    # -- the pipeline's side ----------------------------------------------------------------------------
    def session(self, key: str, partition: int) -> Session | None:
        """The session read from its partition's database: a new object, the caller's to change."""
        db = self._open(partition)
        value = None if db is None else db.get(orjson.dumps(key))
        if value is None:
            return None
        session = Session.from_stored(orjson.loads(value))
        if session.pending:  # its sealed clicks, from their chunk records
            parts: dict[str, Any] = {key: session}
            for chunk in session.chunk_keys(key):
                stored = db.get(orjson.dumps(chunk))
                if stored is not None:
                    parts[chunk] = SessionChunk.from_stored(orjson.loads(stored))
            _, broken = assemble(parts, list(parts))
            if broken:
                log.error("session %r misses some of its sealed clicks on disk", key)
        return session

    def hold(self, key: str, session: Session) -> None:
        """Nothing to keep in memory: the session's records are written as they go to the changelog."""

    def drop(self, key: str) -> None:
        """Nothing to drop in memory: the tombstones are written as they go to the changelog."""

    def write(self, partition: int, key: bytes, value: bytes | None) -> None:
        """One changelog record, as it goes to the changelog, into its partition's database."""
        db = self._open(partition)
        if db is None:
            return
        if value is None:
            db.delete(key)
        else:
            db.put(key, value)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        if self._open(tp.partition) is not None:
            super().set_persisted_offset(tp, offset)

    def forget_except(self, held: set[int], indexed: dict[str, tuple[float, float, int]]) -> list[str]:
        """The sessions of partitions no longer held (their databases are closed already): those the idle
        index names there."""
        return [key for key, (_, _, partition) in indexed.items() if partition not in held]

    def scan(self, partitions: Iterable[int]) -> Held:
        """Every session's clocks, each partition's absorbed mark and the chunks without a session, read
        from the databases (values decoded only for their two clocks)."""
        found = Held([], {}, [], [])
        chunks: list[tuple[str, int]] = []
        now = time.time()
        once = rocksdb.rocksdict.ReadOptions()
        once.fill_cache(False)  # a pass over everything: it would fill the block cache with cold sessions
        for partition in partitions:
            for raw_key, raw in self._db_for_partition(partition).items(read_opt=once):
                if raw_key == self.offset_key:
                    continue
                key = orjson.loads(raw_key)
                value = orjson.loads(raw)
                if SEP not in key:
                    mark = value.get("mark")
                    seen = value.get("seen")
                    found.sessions.append((
                        key,
                        float(mark if mark is not None else value["times"][-1]),
                        float(seen if seen is not None else now),
                        partition,
                    ))  # fmt: skip
                elif "absorbed" in value:
                    found.absorbed[partition] = max(int(value["absorbed"]), found.absorbed.get(partition, -1))
                else:
                    chunks.append((key, partition))
        live = {key for key, *_ in found.sessions}
        found.orphans.extend((key, p) for key, p in chunks if key.rpartition(SEP)[0] not in live)
        return found

    async def read_since(self, bootstrap: str, topic: str, start: dict[int, int]) -> tuple[int, int]:
        """The changelog from `start` copied into the databases (the Tansu repair); returns the records read
        and how many of them were written."""
        read = await read_changelog(bootstrap, topic, start, copy=self.write)
        return read.records, read.records

    # -- rebalances --------------------------------------------------------------------------------------
    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        changelog = self.table.changelog_topic.get_topic_name()
        fresh = sorted(tp.partition for tp in newly_assigned if tp.topic == changelog)
        if fresh:
            await self.restore(changelog, fresh)

    async def restore(self, topic: str, partitions: list[int]) -> None:
        """Each partition from the offset its database holds it to (that record read again: last write
        wins), or from its start, copied in write batches."""
        t0 = time.perf_counter()
        start = {p: self.persisted_offset(TP(topic, p)) or 0 for p in partitions}
        batches: dict[int, Any] = {}
        pending = 0

        def flush() -> None:
            nonlocal pending
            for partition, batch in batches.items():
                self._db_for_partition(partition).write(batch)
            batches.clear()
            pending = 0

        def copy(partition: int, key: bytes, value: bytes | None) -> None:
            nonlocal pending
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = rocksdb.rocksdict.WriteBatch(raw_mode=True)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            pending += 1
            if pending >= WRITE_BATCH:
                flush()

        read = await read_in_bulk(self.app, topic, start, copy=copy)
        flush()  # after a failed read too: what was read is in order, and the offsets held stay as they were
        if read is None:
            return
        for partition, offset in read.last.items():
            super().set_persisted_offset(TP(topic, partition), offset)
        log.info("restored partitions %s of %s in bulk: %d records in %.1f s (from offsets %s, on disk)",
                 partitions, topic, read.records, time.perf_counter() - t0, start)  # fmt: skip
