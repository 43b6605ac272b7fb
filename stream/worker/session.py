"""A visitor's session as the worker keeps it: the value of the `sessions` table and of its changelog.

What must survive a restart or a rebalance: the clicks (item ids and their timestamps, at most
`max_session_length`; the trainer gets both when the session closes), the last recommendation list's
items (online evaluation scores the next click against it), the user id, where the last absorbed click came
from (partition and offset: a redelivered click is answered again but never appended twice) and the two
clocks idle time starts from (`stream.worker.expiry`). Nothing else: no scores, no model state.

In the changelog a session is one JSON object with short keys (`items`, `times`, `recs`, `user`, `p`, `o`,
`mark`, `seen`), written with orjson; `SessionTable` makes Faust's recovery hand back `Session` records,
not dicts.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import faust
import orjson


@dataclasses.dataclass(slots=True)
class Session:
    items: list[str] = dataclasses.field(default_factory=list)
    times: list[float] = dataclasses.field(default_factory=list)
    recs: list[str] = dataclasses.field(default_factory=list)
    user: str | None = None
    partition: int = -1  # of the last absorbed click
    offset: int = -1
    mark: float = 0.0  # event time the session's idle time starts from
    seen: float = 0.0  # the worker's wall clock at its last click

    def copy(self) -> Session:
        """A working copy for one consumed batch: the table changes only once the batch is answered."""
        return dataclasses.replace(self, items=list(self.items), times=list(self.times))

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"items": self.items, "times": self.times, "recs": self.recs, "user": self.user,
             "p": self.partition, "o": self.offset, "mark": self.mark, "seen": self.seen}
        )  # fmt: skip

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> Session:
        """From the changelog's JSON object (as `to_json` wrote it)."""
        return cls(
            items=list(value["items"]),
            times=[float(t) for t in value["times"]],
            recs=list(value.get("recs") or []),
            user=value.get("user"),
            partition=int(value.get("p", -1)),
            offset=int(value.get("o", -1)),
            # written before the worker kept them: idle time starts at the last click, on the wall clock now
            mark=float(value["mark"] if value.get("mark") is not None else value["times"][-1]),
            seen=float(value["seen"] if value.get("seen") is not None else time.time()),
        )


class SessionTable(faust.Table):
    """The `sessions` table: `Session` values, written to the changelog as `Session.to_json` bytes (raw)
    and read back by Faust's recovery as JSON, which `_to_value` (Faust's hook for it) makes a `Session`."""

    def _to_value(self, v: Any) -> Any:
        return None if v is None else Session.from_stored(v)
