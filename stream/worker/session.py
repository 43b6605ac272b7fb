"""A visitor's session as the worker keeps it: the value of the `sessions` table and of its changelog.

What must survive a restart or a rebalance: the clicks (item ids and their timestamps, at most
`max_session_length`; the trainer gets both when the session closes), the last recommendation list's
items (online evaluation scores the next click against it), the user id, where the last absorbed click came
from (partition and offset: a redelivered click is answered again but never appended twice) and the two
clocks idle time starts from (`stream.worker.expiry`). Nothing else: no scores, no model state.

Item ids are interned (`sys.intern`), restored or clicked: a session holds references to one string per
item, not a copy per click. The clicks' times are an `array` of doubles: 8 bytes a click, where a list of
floats took 32 (about 150 MB of a million restored sessions). The last recommendations are one string,
their ids joined by `RECS_SEP` (`recs`): read back as a list, a restored session's 20 recommendations were
20 new strings to make and intern, 40 % of the time a million restored sessions took to decode (and 60 MB
more).

In the changelog a session is one JSON object with short keys (`items`, `times`, `recs` (one string),
`user`, `p`, `o`, `mark`, `seen`, `sealed`), written with orjson; `stream.worker.table.SessionTable`
makes Faust's recovery hand back `Session` records, not dicts.

The changelog's bytes per click do not grow with the session. Its clicks go to the changelog in sealed
chunks of `CHUNK`, each written once under its own key (`chunk_key`: the session id, `SEP`, the chunk's
number), and the session's own record holds only the clicks after the last full chunk (fewer than
`CHUNK`) with the count of sealed ones (`sealed`). Rewriting the whole history on every click instead made
a 200-click session's last record about 6 KB. A recovered record is `pending` until `assemble` puts its
sealed clicks back in front, from the chunk records recovery read with it (same key partition: the click's).
A closed session's record is deleted first, then its chunks, so a crash in between leaves chunks without a
session, which `assemble` drops and names for deletion, never a session without its first clicks.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from array import array
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson

CHUNK = 16  # clicks per sealed chunk: Tmall's sessions average 6.4 clicks, so most never seal one
SEP = "\x1f"  # between a session id and its chunk's number: a valid click's ids have no control characters
# between the ids of `Session.recs`: DEL, a control character too (no valid id has one), which JSON carries
# as one byte (\x1f as six: `\u001f`, 95 bytes more on a record of 20 recommendations)
RECS_SEP = "\x7f"


def joined(ids: list[str]) -> str:
    """Item ids as one string (`Session.recs`); `str.split(RECS_SEP)` gives them back."""
    return RECS_SEP.join(ids)


def chunk_key(session_id: str, number: int) -> str:
    return f"{session_id}{SEP}{number}"


@dataclasses.dataclass(slots=True)
class Session:
    items: list[str] = dataclasses.field(default_factory=list)
    times: array[float] = dataclasses.field(default_factory=lambda: array("d"))  # 8 bytes a click
    recs: str = ""  # the last recommendation list's item ids, joined by RECS_SEP (`joined`)
    user: str | None = None
    partition: int = -1  # of the last absorbed click
    offset: int = -1
    mark: float = 0.0  # event time the session's idle time starts from
    seen: float = 0.0  # the worker's wall clock at its last click
    sealed: int = 0  # leading clicks already in the changelog as sealed chunks
    pending: bool = False  # restored without its sealed clicks yet (`assemble`); never written

    def __post_init__(self) -> None:
        if not isinstance(self.times, array):
            self.times = array("d", self.times)

    def copy(self) -> Session:
        """A working copy for one consumed batch: the table changes only once the batch is answered."""
        return dataclasses.replace(self, items=list(self.items), times=array("d", self.times))

    def seal(self, session_id: str) -> list[tuple[str, bytes]]:
        """The chunk records (key, value) of every full `CHUNK` of clicks not sealed yet, now counted as
        sealed: written before the session's own record."""
        chunks = []
        while len(self.items) - self.sealed >= CHUNK:
            number, start, end = self.sealed // CHUNK, self.sealed, self.sealed + CHUNK
            value = {"chunk": number, "items": self.items[start:end], "times": self.times[start:end].tolist(),
                     "p": self.partition}  # fmt: skip
            chunks.append((chunk_key(session_id, number), orjson.dumps(value)))
            self.sealed = end
        return chunks

    def resume(self, held: Session | None) -> None:
        """A pending record read again for a session the worker holds whole (the Tansu catch-up re-reads
        the worker's own writes): its sealed clicks are the held session's first ones, which never change
        once sealed."""
        if self.pending and isinstance(held, Session) and not held.pending and len(held.items) >= self.sealed:
            self.items = held.items[: self.sealed] + self.items
            self.times = held.times[: self.sealed] + self.times
            self.pending = False

    def chunk_keys(self, session_id: str) -> list[str]:
        return [chunk_key(session_id, number) for number in range(self.sealed // CHUNK)]

    def to_json(self) -> bytes:
        """The session's own record: the clicks after the sealed ones."""
        s = self.sealed
        return orjson.dumps(
            {"items": self.items[s:], "times": self.times[s:].tolist(), "recs": self.recs, "user": self.user,
             "p": self.partition, "o": self.offset, "mark": self.mark, "seen": self.seen, "sealed": s}
        )  # fmt: skip

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> Session:
        """From the changelog's JSON object (as `to_json` wrote it); `pending` if it has sealed clicks."""
        sealed = int(value.get("sealed") or 0)
        recs = value.get("recs") or ""  # a list where written before they were one string
        return cls(
            items=list(map(sys.intern, value["items"])),
            times=array("d", value["times"]),
            recs=recs if isinstance(recs, str) else joined(recs),
            user=value.get("user"),
            partition=int(value.get("p", -1)),
            offset=int(value.get("o", -1)),
            # written before the worker kept them: idle time starts at the last click, on the wall clock now
            mark=float(value["mark"] if value.get("mark") is not None else value["times"][-1]),
            seen=float(value["seen"] if value.get("seen") is not None else time.time()),
            sealed=sealed,
            pending=sealed > 0,
        )


@dataclasses.dataclass(slots=True)
class SessionChunk:
    """A sealed chunk as recovery reads it: in the table only until `assemble`."""

    number: int
    items: list[str]
    times: list[float]
    partition: int

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> SessionChunk:
        times = [float(t) for t in value["times"]]
        items = [sys.intern(item) for item in value["items"]]
        return cls(int(value["chunk"]), items, times, int(value.get("p", -1)))


@dataclasses.dataclass(slots=True)
class Absorbed:
    """How far a clicks partition has been absorbed: every click at or below `offset` is in its session's
    history, or was in a session since closed. Written to the changelog partition of the same number once
    per consumed batch, after the batch's session records and tombstones, so a worker that reads it also
    reads what it covers (one partition keeps its order). A redelivered click of a closed session (a
    rebalance or crash before the offset commit) has no session left to remember its offset; without this
    it came back as a new session and closed a second time with its clicks repeated (a CI run where the
    broker froze for 10 s). In the table only until the pipeline takes it out after a rebalance."""

    partition: int
    offset: int

    def to_json(self) -> bytes:
        return orjson.dumps({"absorbed": self.offset, "p": self.partition})


def absorbed_key(partition: int) -> str:
    return f"{SEP}absorbed{SEP}{partition}"  # no session id is empty or has a control character


def from_stored(value: dict[str, Any] | None) -> Session | SessionChunk | Absorbed | None:
    """A changelog value (JSON object, or None for a tombstone) as a record."""
    if value is None:
        return None
    if "chunk" in value:
        return SessionChunk.from_stored(value)
    if "absorbed" in value:
        return Absorbed(int(value["p"]), int(value["absorbed"]))
    return Session.from_stored(value)


def unassembled(record: Session | SessionChunk | Absorbed | None) -> bool:
    """A record `assemble` has work with: a chunk, or a session still waiting for its chunks."""
    return isinstance(record, SessionChunk) or (isinstance(record, Session) and record.pending)


def assemble(
    data: MutableMapping[str, Any], keys: Iterable[str] | None = None
) -> tuple[list[tuple[str, int]], list[str]]:
    """Give every pending session its sealed clicks back and take the chunk records out of `data` (a
    table's contents after recovery). Returns the chunks that belong to no session (key, partition), to be
    deleted from the changelog (the chunks of a session held whole leave the table and stay there), and
    the sessions some of whose chunks were missing (a changelog that lost records; the caller logs them):
    those keep the clicks that are there, in order, counted as not sealed, so their next write seals them
    again from the first.

    `keys`: where the chunks and pending sessions can be (`SessionTable.unassembled`), so a restart with a
    million sessions, most of them shorter than a chunk, visits those few, not every session (5 s of a
    1M restart here); None looks at every key."""
    candidates = list(data) if keys is None else list(keys)
    chunks: dict[str, SessionChunk] = {}
    pending: list[str] = []
    for key in candidates:
        value = data.get(key)
        if isinstance(value, SessionChunk):
            chunks[key] = value
            del data[key]
        elif isinstance(value, Session) and value.pending:
            pending.append(key)
    broken = []
    for key in dict.fromkeys(pending):
        session = data[key]
        parts = [chunks.pop(k, None) for k in session.chunk_keys(key)]
        found = [part for part in parts if part is not None]
        session.items = [item for part in found for item in part.items] + session.items
        session.times = array("d", [t for part in found for t in part.times]) + session.times
        session.pending = False
        if len(found) < len(parts):
            session.sealed = 0
            broken.append(key)
    orphans = [(key, chunk.partition) for key, chunk in chunks.items() if key.rpartition(SEP)[0] not in data]
    return orphans, broken
