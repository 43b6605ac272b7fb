"""The session record the worker keeps in its table and changelog (`stream.worker.session`)."""

from __future__ import annotations

import json
import time

from stream.worker.session import (
    CHUNK,
    RECS_SEP,
    Session,
    SessionChunk,
    assemble,
    from_stored,
    joined,
    unassembled,
)
from stream.worker.table import SessionTable


def test_a_session_round_trips_through_its_changelog_json():
    session = Session(
        ["a", "b"], [1.5, 2.0], joined(["c", "d"]), "u1", partition=3, offset=41, mark=2.0, seen=9.5
    )
    stored = json.loads(session.to_json())  # what the changelog holds, as any JSON reader sees it
    assert stored == {"items": ["a", "b"], "times": [1.5, 2.0], "recs": "c\x7fd", "user": "u1", "p": 3,
                      "o": 41, "mark": 2.0, "seen": 9.5, "sealed": 0}  # fmt: skip
    assert Session.from_stored(stored) == session
    assert session.recs.split(RECS_SEP) == ["c", "d"]
    # written when the recommendations were a list of ids: read as the same session
    assert Session.from_stored({**stored, "recs": ["c", "d"]}) == session


def test_a_working_copy_never_changes_the_stored_session():
    stored = Session(["a"], [1.0])
    work = stored.copy()
    work.items.append("b")
    work.times.append(2.0)
    work.recs = "x"
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


def write_clicks(session_id: str, n: int, changelog: dict, per_write: int = 1) -> tuple[Session, list[int]]:
    """A session growing to n clicks the way the worker writes it, `per_write` clicks per consumed batch:
    `changelog` keeps each key's last value (what compaction keeps); returns the session and the bytes
    written at each write."""
    session, written = Session(partition=2), []
    for i in range(n):
        session.items.append(f"item-{i % 7}")
        session.times.append(1_700_000_000.0 + 30 * i)
        session.recs = joined([f"rec-{j}" for j in range(20)])
        session.offset = i
        if (i + 1) % per_write and i + 1 < n:
            continue
        records = [*session.seal(session_id), (session_id, session.to_json())]
        changelog.update({key: json.loads(value) for key, value in records})
        written.append(sum(len(value) for _, value in records))
    return session, written


def restored(changelog: dict) -> dict:
    """Assembled both ways: looking at every key, and at only those recovery saw a chunk or a pending
    session under (what the worker does, `SessionTable.unassembled`), with the same result."""
    records = {key: from_stored(value) for key, value in changelog.items()}
    named = {key: from_stored(value) for key, value in changelog.items()}
    assert assemble(records) == ([], [])
    assert assemble(named, [key for key, record in named.items() if unassembled(record)]) == ([], [])
    assert named == records
    return records


def test_the_bytes_written_per_click_do_not_grow_with_the_session():
    """The changelog gets the clicks after the last sealed chunk and each chunk once: a 200-click session's
    writes cost what a 20-click session's do (whole-session records grew about 30 bytes per click)."""
    _, written = write_clicks("long", 200, {})
    early, late = written[CHUNK : 2 * CHUNK], written[-CHUNK:]
    assert max(late) <= max(early) + 40 and sum(late) <= sum(early) + 40 * CHUNK
    assert max(written) < 1400  # a record of 15 clicks, 20 recommendations and a sealed chunk


def test_a_session_restored_from_its_records_and_chunks_is_the_session_written():
    for n, per_write in ((1, 1), (CHUNK - 1, 1), (CHUNK, 1), (3 * CHUNK + 5, 1), (200, 1), (70, 37)):
        changelog: dict = {}
        session, _ = write_clicks("s", n, changelog, per_write)
        assert len(changelog) == 1 + n // CHUNK  # the session's record and its sealed chunks
        back = restored(changelog)
        assert list(back) == ["s"] and back["s"] == session and back["s"].items == session.items


def test_assembly_drops_chunks_without_a_session_and_keeps_what_there_is_of_a_damaged_one():
    changelog: dict = {}
    write_clicks("gone", 2 * CHUNK + 1, changelog)
    del changelog["gone"]  # a crash between the session's deletion and its chunks'
    damaged, _ = write_clicks("damaged", 3 * CHUNK + 2, changelog)
    del changelog["damaged\x1f1"]  # a changelog that lost a record
    records = {key: from_stored(value) for key, value in changelog.items()}
    named = {key: from_stored(value) for key, value in changelog.items()}
    orphans, broken = assemble(records)
    assert sorted(orphans) == [("gone\x1f0", 2), ("gone\x1f1", 2)] and broken == ["damaged"]
    assert assemble(named, [key for key, record in named.items() if unassembled(record)]) == (orphans, broken)
    assert named == records
    kept = damaged.items[:CHUNK] + damaged.items[2 * CHUNK :]
    assert list(records) == ["damaged"] and records["damaged"].items == kept
    assert records["damaged"].sealed == 0  # its next write seals it again from the first click
    assert isinstance(SessionTable._to_value(None, changelog["damaged\x1f0"]), SessionChunk)


def test_a_record_read_again_for_a_session_held_whole_keeps_its_first_clicks_and_chunks():
    """The Tansu catch-up re-reads the worker's own writes: a session's record (its last clicks only) takes
    its sealed clicks from the session held, and the re-read chunks are dropped, never deleted."""
    changelog: dict = {}
    held, _ = write_clicks("s", 2 * CHUNK + 3, changelog)
    data = {"s": held}
    for key, value in changelog.items():
        record = from_stored(value)
        if isinstance(record, Session):
            record.resume(data.get(key))
        data[key] = record
    assert assemble(data) == ([], []) and list(data) == ["s"] and data["s"] == held
