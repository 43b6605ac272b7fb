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
"""

from __future__ import annotations

from collections import OrderedDict


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
