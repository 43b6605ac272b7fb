"""When a session is idle: an event clock that no one producer's clock can move.

A click's timestamp comes from its producer, and producers' clocks are wrong in both directions: a click
stamped 20 h ahead (accepted: the limit is a day) used to move the worker's event time 20 h forward and
close every other visitor's session as idle; a producer an hour behind would have had each of its
sessions closed after every click. Two rules keep each producer's clock to its own clicks:

- The worker's event time is the lower median of the newest click times of the `window` sessions that
  clicked last (each session counts once, however many clicks it sends), and it never goes back. One
  session far ahead, or a flood from one session, cannot move it; it moves once most recently active
  sessions agree, and never past the worker's own wall clock (a lone first click from the future cannot
  set it ahead either). It trails the newest click by about the median gap of those sessions, so sessions
  close a little after `ttl`, never before.
- A session's idle time starts at its last click's stamp, but never before the event time the worker had
  when that click arrived, nor after the worker's wall clock (`mark`): a late producer's session ages
  from its arrival, an early one's from now, like everyone else's.
  A session also closes after `ttl` seconds without a click on the worker's own clock (`seen`), so a quiet
  stream, where event time stands still, still closes its sessions.

Replays of old data (the demo, `nextclick replay`) move event time as fast as they replay, so their
sessions close in replay time. What this does not stop: many sessions from one producer with one skewed
clock (a bot) can move the median; the input limits and the DLQ are the defence there.

Finding the idle sessions costs what expires, not what is live (`IdleIndex`): the sessions in the order of
their last click (`seen` grows with it) and a heap of their `mark`s, instead of a scan of the whole table
every `expiry_interval`, which holds the event loop in proportion to the live sessions.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable


class EventClock:
    def __init__(self, window: int = 25) -> None:
        self.window = window
        self.latest: OrderedDict[str, float] = OrderedDict()  # session -> its newest click time
        self.now = 0.0

    def observe(self, session_id: str, timestamp: float, wall: float) -> float:
        """Take a session's newest click time into account (`wall`: the worker's clock now); returns the
        session's `mark`, the event time its idle time starts from."""
        self.latest[session_id] = max(timestamp, self.latest.get(session_id, timestamp))
        self.latest.move_to_end(session_id)
        while len(self.latest) > self.window:
            self.latest.popitem(last=False)
        times = sorted(self.latest.values())
        self.now = max(self.now, min(times[(len(times) - 1) // 2], wall))
        return max(self.now, min(timestamp, wall))


def is_idle(mark: float, seen: float, clock: float, wall: float, ttl: float) -> bool:
    """`mark`: event time when the session's last click arrived; `seen`: the worker's wall clock then."""
    return (clock > 0 and clock - mark > ttl) or wall - seen > ttl


class IdleIndex:
    """The sessions that can be idle now, found without looking at the others.

    `seen` is the worker's wall clock at a session's last click, so the sessions in the order of their
    last click are in the order of `seen`: the ones idle on the wall clock are a prefix of that order (a
    consumed batch writes its sessions in the order of their first click in it, so within a batch the
    order can be off by the batch's duration: such a session closes one `expiry_interval` later).
    `mark`s do not follow click order (a click's stamp can be ahead of the event clock), so they sit in a
    min-heap; a session's older entries stay there until they surface and are skipped (the one equal to the
    session's current mark is current), and the heap is rebuilt when stale entries outnumber live ones.
    Both clocks of a session are one tuple in the click order, not a second dict of marks: the rebuild
    after restoring a million sessions made that dict in 1.8 s (py-spy, `scripts/bench_scale.py`). The
    tuple also holds the changelog partition the session's records live in: a store on disk
    (`stream.worker.rocks`) reads a session from its partition's database."""

    def __init__(self) -> None:
        # session -> (mark, seen, partition), oldest last click first
        self.by_click: OrderedDict[str, tuple[float, float, int]] = OrderedDict()
        self.heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.by_click)

    def touch(self, session_id: str, mark: float, seen: float, partition: int) -> None:
        """A session's clocks after its latest click (or as restored)."""
        before = self.by_click.get(session_id)
        self.by_click[session_id] = (mark, seen, partition)
        self.by_click.move_to_end(session_id)
        if before is None or before[0] != mark:
            heapq.heappush(self.heap, (mark, session_id))
            if len(self.heap) > 2 * len(self.by_click) + 1024:
                self.heap = [(entry[0], key) for key, entry in self.by_click.items()]
                heapq.heapify(self.heap)

    def forget(self, session_id: str) -> None:
        self.by_click.pop(session_id, None)

    def partition_of(self, session_id: str) -> int | None:
        entry = self.by_click.get(session_id)
        return None if entry is None else entry[2]

    def rebuild(self, sessions: Iterable[tuple[str, float, float, int]]) -> None:
        """From (session, mark, seen, partition) of every session held (after a rebalance's recovery)."""
        ordered = sorted(sessions, key=lambda entry: entry[2])
        self.by_click = OrderedDict((key, (mark, seen, partition)) for key, mark, seen, partition in ordered)
        self.heap = [(mark, key) for key, mark, _, _ in ordered]
        heapq.heapify(self.heap)

    def due(self, clock: float, wall: float, ttl: float) -> list[str]:
        """Every session `is_idle` would close now (and none it would not): the ones whose last click is
        `ttl` old on the wall clock, then the ones whose mark is `ttl` behind the event clock."""
        due = []
        for key, (_, seen, _) in self.by_click.items():
            if wall - seen <= ttl:
                break
            due.append(key)
        while clock > 0 and self.heap and clock - self.heap[0][0] > ttl:
            mark, key = heapq.heappop(self.heap)
            current = self.by_click.get(key)
            if current is not None and current[0] == mark:
                due.append(key)
        return list(dict.fromkeys(due))
