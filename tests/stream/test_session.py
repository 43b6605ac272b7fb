"""The session record the worker keeps in its table and changelog (`stream.worker.session`)."""

from __future__ import annotations

import json
import time

from stream.worker.session import Session, SessionTable


def test_a_session_round_trips_through_its_changelog_json():
    session = Session(["a", "b"], [1.5, 2.0], ["c", "d"], "u1", partition=3, offset=41, mark=2.0, seen=9.5)
    stored = json.loads(session.to_json())  # what the changelog holds, as any JSON reader sees it
    assert stored == {"items": ["a", "b"], "times": [1.5, 2.0], "recs": ["c", "d"], "user": "u1", "p": 3,
                      "o": 41, "mark": 2.0, "seen": 9.5}  # fmt: skip
    assert Session.from_stored(stored) == session


def test_a_working_copy_never_changes_the_stored_session():
    stored = Session(["a"], [1.0])
    work = stored.copy()
    work.items.append("b")
    work.times.append(2.0)
    work.recs = ["x"]
    assert stored == Session(["a"], [1.0])


def test_a_value_written_before_the_clocks_were_kept_ages_from_its_last_click_and_from_now():
    before = time.time()
    session = Session.from_stored(
        {"items": ["a"], "times": [100.0], "recs": [], "user": None, "p": 0, "o": 7}
    )
    assert session.mark == 100.0 and session.seen >= before and (session.partition, session.offset) == (0, 7)


def test_recovery_makes_sessions_of_the_changelogs_json_and_keeps_tombstones():
    to_value = SessionTable._to_value
    assert to_value(None, None) is None
    assert to_value(None, json.loads(Session(["a"], [1.0]).to_json())) == Session(["a"], [1.0])
