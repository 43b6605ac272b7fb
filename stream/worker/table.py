"""The `sessions` table: a Faust table of `stream.worker.session` records, on one of two stores.

`NEXTCLICK_STORE` chooses: `memory://` (the default) keeps whole `Session` objects in the worker's heap and
reads newly assigned changelog partitions in bulk (`stream.worker.store`); `rocksdb://` keeps each
partition's changelog records in RocksDB on disk and reads a session when a click of it comes
(`stream.worker.rocks`). The pipeline reaches either through the same few calls on `table.data`:
`session(key, partition)` (a copy to change), `hold` (memory keeps the session), `write` (the disk keeps
each changelog record), `drop`, `forget_except` (the sessions of partitions gone at a rebalance), `scan`
(what the partitions held contain after one) and `read_since` (the Tansu repair).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import faust
from faust.types import EventT

from stream.worker.rocks import RocksSessionStore
from stream.worker.session import Session, SessionChunk, from_stored, unassembled
from stream.worker.store import BulkRestoredStore


class SessionTable(faust.Table):
    """The `sessions` table: `Session` values, written to the changelog as raw bytes (`Session.to_json`,
    `Session.seal`) and read back by Faust's recovery as JSON, which `_to_value` (Faust's hook for it)
    makes a `Session` or a `SessionChunk`.

    Recovery after a rebalance also re-reads, for a partition the worker kept, the records it wrote itself
    since the last recovery: a session's record without the chunks sealed before (a CI-style run with
    workers joining and leaving lost 106 sessions' first 16 clicks that way). A session held whole keeps
    its sealed clicks through that (`Session.resume`). (All of this is the memory store's: on disk a chunk
    is a record of its own, never rewritten, and a session is assembled when it is read.)

    `unassembled` names the keys recovery (Faust's or the bulk read) put a chunk or a pending session
    under since the last `assemble`, so assembling visits those, not every session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unassembled: set[str] = set()

    @property
    def raw(self) -> dict[str, Any]:
        """The store's own dict where it has one (the memory store): its mapping methods cost a call a
        key, which a pass over a million sessions feels."""
        return getattr(self.data, "data", self.data)

    def _to_value(self, v: Any) -> Any:
        return from_stored(v)

    @property
    def on_disk(self) -> bool:
        return isinstance(self.data, RocksSessionStore)

    def _new_store(self) -> Any:
        """In memory, restored in bulk at a rebalance (`stream.worker.store`), or on disk
        (`stream.worker.rocks`)."""
        url = str(self._store or self.app.conf.store)
        kinds = {"memory": BulkRestoredStore, "rocksdb": RocksSessionStore}
        kind = kinds.get(url.partition(":")[0])
        if kind is None:
            raise ValueError(f"NEXTCLICK_STORE={url}: the session table is kept in memory:// or rocksdb://")
        return kind(url, self.app, self, table_name=self.name, key_type=self.key_type,
                    key_serializer=self.key_serializer, value_serializer=self.value_serializer,
                    value_type=self.value_type, loop=self.loop, options=self.options)  # fmt: skip

    def put_stored(self, key: str, record: Session | SessionChunk | None) -> bool:
        """One changelog record read outside Faust's recovery (the bulk restore, the Tansu catch-up), as
        recovery applies it: last write wins, None deletes, and a record re-read for a session held whole
        keeps its sealed clicks. Returns whether a value changed (a deletion is not counted)."""
        data = self.raw
        current = data.get(key)
        if record is None:
            data.pop(key, None)
            return False
        if isinstance(record, Session):
            record.resume(current)
        if unassembled(record):
            self.unassembled.add(key)
        data[key] = record
        return current is None or current != record  # a new key (every one of a bulk restore) first

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        if self.on_disk:  # the records' bytes, as they are (Faust's RocksDB store)
            super().apply_changelog_batch(batch)
            return
        events = list(batch)
        held = {}
        for event in events:
            key = self._to_key(event.key)
            current = self.data.get(key)
            if isinstance(current, Session) and not current.pending:
                held.setdefault(key, current)
        super().apply_changelog_batch(events)
        for key, session in held.items():
            restored = self.data.get(key)
            if isinstance(restored, Session):
                restored.resume(session)
        for event in events:
            key = self._to_key(event.key)
            if unassembled(self.data.get(key)):
                self.unassembled.add(key)
