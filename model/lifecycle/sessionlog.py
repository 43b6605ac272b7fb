"""The trainer's durable session log: finished sessions as JSON lines in hourly segment files.

    DIR/sessions-2026112209.jsonl    one finished session a line, appended and fsync'd in batches

The stream publishes every closed session to the `sessions` topic; the trainer appends what it consumes
here and commits its consumer offsets only after the fsync, so a session survives a trainer restart, and
the log survives a broker restart (the embedded broker keeps nothing). At-least-once delivery can repeat a
session: `read` keeps the first copy of each (session id, first click time). Retention drops whole segments
older than `retention_days`; `read` returns at most the newest `max_sessions`.
"""

from __future__ import annotations

import calendar
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PREFIX = "sessions-"


class SessionLog:
    def __init__(self, root: str | Path, retention_days: float = 30.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.retention_days = retention_days

    def segments(self) -> list[Path]:
        return sorted(self.root.glob(f"{PREFIX}*.jsonl"))

    def append(self, sessions: Iterable[dict[str, Any]], now: float | None = None) -> int:
        """Append sessions that have at least one click; returns how many were written (and fsync'd)."""
        lines = [
            json.dumps(
                {"session_id": str(s["session_id"]), "items": s["items"], "timestamps": s.get("timestamps")}
            )
            for s in sessions
            if s.get("items")
        ]
        if not lines:
            return 0
        stamp = time.strftime("%Y%m%d%H", time.gmtime(now if now is not None else time.time()))
        with open(self.root / f"{PREFIX}{stamp}.jsonl", "a") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return len(lines)

    def read(self, max_sessions: int | None = None) -> list[dict[str, Any]]:
        """Sessions in log order (oldest first), duplicates removed, at most the newest `max_sessions`.
        A torn last line (a crash mid-write) is skipped, never fatal."""
        seen: set[tuple[str, Any]] = set()
        out: list[dict[str, Any]] = []
        for segment in self.segments():
            with open(segment) as fh:
                for line in fh:
                    try:
                        s = json.loads(line)
                        key = (s["session_id"], (s.get("timestamps") or [None])[0], len(s["items"]))
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
                    if key not in seen:
                        seen.add(key)
                        out.append(s)
        return out[-max_sessions:] if max_sessions else out

    def count(self) -> int:
        return len(self.read())

    def retain(self, now: float | None = None) -> list[Path]:
        """Delete segments whose hour ended more than `retention_days` ago; returns what was deleted."""
        horizon = (now if now is not None else time.time()) - self.retention_days * 86400
        doomed = []
        for segment in self.segments():
            hour = time.strptime(segment.stem.removeprefix(PREFIX), "%Y%m%d%H")
            if calendar.timegm(hour) + 3600 < horizon:
                segment.unlink(missing_ok=True)
                doomed.append(segment)
        return doomed
