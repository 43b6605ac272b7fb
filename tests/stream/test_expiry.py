"""Session expiry that holds with skewed and late producers (`stream.worker.expiry`)."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.lifecycle.checkpoint import load_checkpoint
from stream.worker.expiry import EventClock, IdleIndex, is_idle
from stream.worker.process import WorkerProcess
from tests.stream.harness import click, collect, send, stored_sessions

NOW = 1_700_000_000.0
TTL = 1800.0


STEP = st.tuples(
    st.sampled_from(["click", "click", "click", "forget", "expire", "rebuild"]),
    st.integers(0, 30),  # session
    st.floats(-3000, 3000),  # the click's mark, relative to the wall clock
    st.floats(0, 900),  # wall clock advance
    st.floats(-100, 3000),  # event clock advance
)


@settings(max_examples=200, deadline=None)
@given(st.lists(STEP, max_size=120))
def test_the_idle_index_names_exactly_the_sessions_a_full_scan_would_close(steps):
    """Against a scan of every session with `is_idle` (what the worker did before): the same sessions, at
    every expiry, through clicks, deletions, rebuilds after a rebalance and both clocks moving."""
    index, live = IdleIndex(), {}
    wall, clock = NOW, 0.0
    for op, n, mark, dwall, dclock in steps:
        key = f"s{n}"
        wall += dwall
        clock = max(clock, clock + dclock) if clock else (NOW + dclock if dclock > 0 else 0.0)
        if op == "click":
            live[key] = (wall + mark, wall)
            index.touch(key, wall + mark, wall, n % 4)
        elif op == "forget":
            live.pop(key, None)
            index.forget(key)
        elif op == "rebuild":
            index.rebuild((k, m, seen, int(k[1:]) % 4) for k, (m, seen) in live.items())
        else:
            scan = {k for k, (m, seen) in live.items() if is_idle(m, seen, clock, wall, TTL)}
            due = index.due(clock, wall, TTL)
            assert len(due) == len(set(due)) and set(due) == scan
            for k in due:  # the worker closes them
                live.pop(k)
                index.forget(k)
    assert len(index) == len(live)
    assert all(index.partition_of(k) == int(k[1:]) % 4 for k in live)  # where a store on disk reads it


def test_one_session_far_ahead_or_a_flood_from_it_does_not_move_event_time():
    clock = EventClock()
    for j in range(5):
        clock.observe(f"s{j}", NOW + j, wall=NOW + 10)
    before = clock.now
    for _ in range(1000):  # a flood from one session with its clock 20 h ahead
        clock.observe("skewed", NOW + 20 * 3600, wall=NOW + 10)
    assert clock.now == before
    assert not any(is_idle(NOW + j, NOW + 10, clock.now, NOW + 11, TTL) for j in range(5))


def test_a_lone_first_click_from_the_future_cannot_set_the_clock_past_the_wall_clock():
    clock = EventClock()
    mark = clock.observe("skewed", NOW + 20 * 3600, wall=NOW)
    assert clock.now == NOW and mark == NOW  # its session ages from now


def test_a_session_ages_from_its_own_click_when_the_clock_lags_behind_it():
    """The clock trails the newest clicks; a session that just clicked must not be idle when the clock
    catches up."""
    clock = EventClock()
    clock.observe("old", NOW, wall=NOW + 1e6)
    mark = clock.observe("new0", NOW + 500, wall=NOW + 1e6)
    assert clock.now == NOW and mark == NOW + 500
    for j in range(1, 3):
        clock.observe(f"new{j}", NOW + 500, wall=NOW + 1e6)
    assert clock.now == NOW + 500 and not is_idle(mark, NOW + 1e6, clock.now, NOW + 1e6, 60)


def test_event_time_moves_once_most_recent_sessions_agree_and_never_goes_back():
    clock = EventClock(window=5)
    for j in range(5):
        clock.observe(f"old{j}", NOW, wall=NOW + 1e6)
    for j in range(3):
        clock.observe(f"new{j}", NOW + 3600, wall=NOW + 1e6)
    assert clock.now == NOW + 3600  # three of the five most recent sessions are an hour on
    clock.observe("late", NOW - 3600, wall=NOW + 1e6)
    assert clock.now == NOW + 3600


def test_a_late_producers_session_ages_from_when_its_click_arrived_not_from_its_stamp():
    clock = EventClock()
    for j in range(5):
        clock.observe(f"s{j}", NOW, wall=NOW)
    mark = clock.observe("late", NOW - 2 * TTL, wall=NOW)  # a producer an hour behind
    assert mark == NOW and not is_idle(mark, NOW, clock.now, NOW + 1, TTL)
    assert is_idle(mark, NOW, NOW + TTL + 1, NOW + 1, TTL)  # ... and closes like anyone else's


def test_a_quiet_stream_still_closes_sessions_on_the_workers_own_clock():
    assert is_idle(mark=NOW, seen=NOW, clock=NOW, wall=NOW + TTL + 1, ttl=TTL)
    assert not is_idle(mark=NOW, seen=NOW, clock=NOW, wall=NOW + TTL - 1, ttl=TTL)


@pytest.mark.slow
def test_a_click_stamped_20_hours_ahead_closes_no_other_visitors_session(
    bootstrap, topics, served_checkpoint, tmp_path
):
    """The issue's case on a live worker: before the fix, the skewed click moved the worker's event time
    20 h on and every other live session was closed as idle within seconds (the expiry scan runs every
    second here), their next clicks starting new sessions."""
    model, _ = load_checkpoint(served_checkpoint)
    vocab = model.vocab.ids[1:]
    worker = WorkerProcess(bootstrap, topics, served_checkpoint, tmp_path)
    now = time.time()
    try:
        worker.wait_ready()
        send(bootstrap, topics.clicks, [click(f"v{j}", vocab[j], f"v{j}-0", now) for j in range(5)])
        collect(bootstrap, topics.recommendations, 5, settle=0.2)
        send(bootstrap, topics.clicks, [click("skewed", vocab[9], "skewed-0", now + 20 * 3600)])
        collect(bootstrap, topics.recommendations, 6, settle=3.0)  # three expiry scans
        send(bootstrap, topics.clicks, [click(f"v{j}", vocab[j + 1], f"v{j}-1", now + 5) for j in range(5)])
        collect(bootstrap, topics.recommendations, 11, settle=0.2)
        closed = collect(bootstrap, topics.sessions, 0, timeout=3, settle=0.5)
        closed_metric = worker.metric("nextclick_sessions_closed_total")
    finally:
        worker.stop()
    assert [json.loads(r.value)["session_id"] for r in closed] == [] and closed_metric == 0
    stored = stored_sessions(bootstrap, topics)
    for j in range(5):
        assert stored[f"v{j}"]["items"] == [vocab[j], vocab[j + 1]]
    assert stored["skewed"]["times"] == [now + 20 * 3600]  # its own stamp is kept for the trainer
