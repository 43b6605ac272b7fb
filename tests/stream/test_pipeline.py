"""End to end through a real broker and real `nextclick worker` processes."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import defaultdict

import numpy as np
import pytest

from model.lifecycle.checkpoint import load_checkpoint
from stream.kafka.broker import is_tansu
from stream.worker.changelog import read_changelog
from stream.worker.process import WorkerProcess
from tests.stream.harness import click, collect, group_positions, local_broker, send

pytestmark = pytest.mark.slow


def _clicks(n_sessions: int, per_session: int, vocab_ids: list[str], seed: int = 0, prefix: str = "s"):
    """Interleaved clicks: round r holds the r-th click of every session."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(per_session):
        for s in range(n_sessions):
            item = vocab_ids[int(rng.integers(len(vocab_ids)))]
            out.append((f"{prefix}{s}", item, f"{prefix}{s}-{r}"))
    return out


def _by_event(records) -> dict[str, list[dict]]:
    seen: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        value = json.loads(r.value)
        seen[value["event_id"]].append(value)
    return seen


def test_fausts_own_command_line_serves_through_the_entry_module(
    bootstrap, topics, served_checkpoint, tmp_path
):
    """`faust -A stream.app worker`, as README says, with the settings in the environment only."""
    faust = [sys.executable, "-m", "faust", "-A", "stream.app", "worker"]
    worker = WorkerProcess(
        bootstrap, topics, None, tmp_path, command=faust, NEXTCLICK_CHECKPOINT=str(served_checkpoint)
    )
    try:
        worker.wait_ready()
        send(bootstrap, topics.clicks, [click("f1", "i1", "f1-0"), click("f1", "i2", "f1-1")])
        recs = collect(bootstrap, topics.recommendations, 2, events={"f1-0", "f1-1"})
    finally:
        worker.stop()
    answered = [json.loads(r.value) for r in recs]
    assert sorted(a["event_id"] for a in answered) == ["f1-0", "f1-1"]
    assert all(a["model"] == "vsknn" and len(a["items"]) == 20 for a in answered)


def test_every_valid_click_is_answered_once_in_order_and_bad_ones_go_to_the_dlq(
    smoke_bootstrap, topics, served_checkpoint, tmp_path
):
    bootstrap = smoke_bootstrap
    model, _ = load_checkpoint(served_checkpoint)
    vocab = model.vocab.ids[1:]
    clicks = [*_clicks(20, 8, vocab), ("s0", "never-seen-item", "s0-unknown")]
    bad = [
        (b"x1", b"not json"),
        (b"x2", json.dumps({"session_id": "x2"}).encode()),  # no item_id
        (b"x3", json.dumps({"session_id": "x3", "item_id": "i1", "timestamp": -5}).encode()),
        (b"x4", b""),
        (b"x5", json.dumps({"session_id": "x" * 5000, "item_id": "i1"}).encode()),
        (b"x6", b"\xff\xfe\xfd"),
        (b"x7", json.dumps([1, 2, 3]).encode()),
    ]
    worker = WorkerProcess(bootstrap, topics, served_checkpoint, tmp_path)
    try:
        worker.wait_ready()
        messages = [click(s, i, e) for s, i, e in clicks]
        mixed = messages[:50] + bad + messages[50:]
        send(bootstrap, topics.clicks, mixed)
        recs = collect(bootstrap, topics.recommendations, len(clicks))
        dlq = collect(bootstrap, topics.dlq, len(bad), timeout=20)
    finally:
        worker.stop()

    answered = _by_event(recs)
    assert set(answered) == {e for _, _, e in clicks}  # every valid click ...
    assert all(len(v) == 1 for v in answered.values())  # ... exactly once
    per_session = defaultdict(list)
    for r in recs:
        value = json.loads(r.value)
        per_session[value["session_id"]].append(value["event_id"])
        assert len(value["items"]) == 20 and set(value["items"]) <= set(vocab)
        assert value["model"] == "vsknn" and value["model_version"] == "vsknn"
        assert value["latency_ms"] >= 0 and len(value["scores"]) == 20
    for session, events in per_session.items():
        expected = [e for s, _, e in clicks if s == session]
        assert events == expected  # in session order
    reasons = {r.key: dict(r.headers)["reason"].decode() for r in dlq}
    assert reasons == {
        b"x1": "not_json",
        b"x2": "missing_item_id",
        b"x3": "bad_timestamp",
        b"x4": "empty",
        b"x5": "bad_id",
        b"x6": "not_utf8",
        b"x7": "not_object",
    }
    assert {r.value for r in dlq} == {v for _, v in bad}  # the original bytes, untouched


def _restart(
    bootstrap, topics, checkpoint, tmp_path, **env: str
) -> tuple[dict[str, list[dict]], float, float]:
    """A burst of updates, a restart, then one more click per session (sent at once). Returns, per session,
    the answers to its last click that differ from the model's answer for its whole history (a session
    whose recovered history lost clicks), the seconds from the restart to every answer, and the changelog
    records the restarted worker's repair read. Each session's last click is the item at its own rank in the
    list answered before the restart, so the restarted worker's online evaluation must score exactly those
    hits and ranks against the lists it restored."""
    model, _ = load_checkpoint(checkpoint)
    vocab = model.vocab.ids[1:]
    burst = _clicks(30, 20, vocab, seed=1)  # 20 clicks: each session's first 16 are a sealed chunk
    worker = WorkerProcess(bootstrap, topics, checkpoint, tmp_path, **env)
    try:
        worker.wait_ready()
        send(bootstrap, topics.clicks, [click(s, i, e) for s, i, e in burst])
        assert len(_by_event(collect(bootstrap, topics.recommendations, len(burst), settle=0.5))) == len(
            burst
        )
    finally:
        worker.stop()

    restarted = time.monotonic()
    again = WorkerProcess(bootstrap, topics, checkpoint, tmp_path, **env)
    try:
        final, ranks = [], []
        for n in range(30):
            known = model.vocab.lookup([i for s, i, _ in burst if s == f"s{n}"])
            listed, _ = model.recommend([known[known >= 1]], k=20)
            ranks.append(n % 20 + 1)
            final.append((f"s{n}", model.vocab.decode(listed[0].tolist())[n % 20], f"s{n}-0"))
        send(bootstrap, topics.clicks, [click(s, i, e + "-after") for s, i, e in final])  # sent at once
        wanted = {e + "-after" for _, _, e in final}
        recs = _by_event(collect(bootstrap, topics.recommendations, len(burst) + len(final), events=wanted))
        restart_to_answers = time.monotonic() - restarted
        # what the worker did (consumed, published) against what the test saw: on a stall, tells a worker
        # that stopped from a reader that could not get past some offset
        seen = {m: again.metric(m) for m in ("nextclick_events_total", "nextclick_recommendations_total")}
        repair_read = again.metric("nextclick_changelog_catchup_records_total")
        online = {m: again.metric(f"nextclick_online_{m}") for m in ("evaluated_total", "hits_total")}
        online["reciprocal_rank_sum"] = again.metric("nextclick_online_reciprocal_rank_sum")
        missing = wanted - set(recs)
        positions = group_positions(bootstrap, topics.app_id, topics.clicks) if missing else {}
    finally:
        again.stop()
    # the restarted worker read its sessions in bulk (stream.worker.store), not through Faust's recovery loop
    bulk = [int(n) for n in re.findall(r"in bulk: (\d+) records", again.log.read_text(errors="replace"))]
    assert sum(bulk) > 0, again.log_tail(1500)
    print(f"restart to all {len(final)} answers: {restart_to_answers:.1f} s")
    # A restarted worker once left some answers out for good (an "intermittent restart stall", xfailed
    # here until session 5). Same symptom as the rebalance defect fixed in stream/worker/transport.py (clicks
    # fetched around the seek skipped), most likely the same cause; not seen in 12 runs since the fix,
    # 6 of them with a CPU hog beside, nor in CI. A miss fails again, with what is needed to diagnose it.
    assert not missing, (
        f"{len(missing)} unanswered, {len(recs)} seen; worker {seen}; {positions}: " + again.log_tail(1500)
    )
    # every last click scored against the list restored with its session, at the rank it was given
    assert online == {"evaluated_total": 30, "hits_total": 30, "reciprocal_rank_sum": pytest.approx(
        sum(1 / rank for rank in ranks))}, online  # fmt: skip
    history = defaultdict(list)
    for s, i, _ in burst + final:
        history[s].append(i)
    wrong = {}
    for s, _, e in final:
        got = recs[e + "-after"]
        # at-least-once: a click redelivered after the restart may be answered twice, never differently
        assert 1 <= len(got) <= 2
        known = model.vocab.lookup(history[s])
        want, _ = model.recommend([known[known >= 1]], k=20)
        differing = [a for a in got if a["items"] != model.vocab.decode(want[0].tolist())]
        if differing:
            wrong[s] = differing
    return wrong, restart_to_answers, repair_read


def test_a_restarted_worker_recovers_every_session_history(
    smoke_bootstrap, topics, served_checkpoint, tmp_path
):
    """Each answer after the restart must equal the model's answer for the session's whole history (catches
    a truncated table recovery), with the broker repair left as the worker chooses it."""
    bootstrap = smoke_bootstrap
    wrong, seconds, repair_read = _restart(bootstrap, topics, served_checkpoint, tmp_path)
    assert not wrong, f"sessions that lost history: {sorted(wrong)}"
    # the repair (Tansu) runs, and reads only what neither the bulk read nor recovery covered (here, with
    # nothing written since, next to nothing), not the whole changelog or its last batches again
    changelog = asyncio.run(read_changelog(bootstrap, f"{topics.app_id}-sessions-changelog", [0, 1, 2, 3]))
    print(f"repair read {repair_read:.0f} of the changelog's {changelog[1]} records")
    logs = [log.read_text(errors="replace") for log in tmp_path.glob("worker-*.log")]
    if is_tansu(bootstrap):
        assert all("changelog catch-up of partitions [0, 1, 2, 3]" in log for log in logs)  # both workers
        assert repair_read < changelog[1] / 10
    assert seconds < 20.0  # seconds, not the ~30 s stall of Faust's defaults on this broker
    # the repair switched itself: on for Tansu, off for Apache Kafka, nothing set by the test
    choice = "on" if is_tansu(bootstrap) else "off"
    assert len(logs) == 2 and all(f"changelog catch-up {choice}" in log for log in logs)


@pytest.mark.parametrize("engine", ["tansu", "kafka"])
def test_a_restart_loses_nothing_with_the_changelog_repair_off_on_either_broker(
    engine, topics, served_checkpoint, tmp_path
):
    """With `Pipeline._catch_up` forced off, a restarted worker still gets every session whole: it reads
    its changelog partitions in bulk to their real end (`stream.worker.store`), where Faust's own recovery
    stopped at Tansu's wrong end offset and lost the last clicks of some sessions (this test's earlier
    version showed that loss on Tansu and none on Apache Kafka). And left at auto, the worker recognises
    which broker it is on."""
    # a 50 ms producer linger makes the changelog's last batches hold several sessions each, as under any
    # real load: Tansu's end offset is wrong only for multi-record batches. Both brokers get the same settings.
    env = {"NEXTCLICK_CHANGELOG_CATCHUP": "0", "NEXTCLICK_PRODUCER_LINGER_MS": "50"}
    with local_broker(engine) as broker:
        wrong, _, _ = _restart(broker.bootstrap, topics, served_checkpoint, tmp_path, **env)
        assert is_tansu(broker.bootstrap) == (engine == "tansu")
    print(f"{engine}, catch-up off: {len(wrong)} of 30 sessions lost clicks at the restart")
    assert not wrong, f"{engine}: the restart lost history of {sorted(wrong)}"


@pytest.mark.parametrize("broker", ["bootstrap", "tansu_bootstrap"])
def test_a_worker_on_rocksdb_restarts_from_its_disk_and_loses_nothing(
    broker, request, topics, served_checkpoint, tmp_path
):
    """`--store rocksdb://` (`stream.worker.rocks`): the restarted worker finds the sessions on its disk,
    reads only the changelog written after the offset its databases hold (not the whole changelog again),
    and every session comes back whole, its sealed chunk and its own record (20 clicks each), on the suite's
    broker and on Tansu (whose repair copies records onto the disk)."""
    bootstrap = request.getfixturevalue(broker)
    data = tmp_path / "data"  # one data folder for both workers, as a restart on the same host has
    wrong, _, _ = _restart(
        bootstrap,
        topics,
        served_checkpoint,
        tmp_path,
        NEXTCLICK_STORE="rocksdb://",
        NEXTCLICK_DATA_DIR=str(data),
    )
    assert not wrong, f"sessions that lost history: {sorted(wrong)}"
    assert sorted(path.name for path in data.rglob("sessions-*.db")) == [f"sessions-{p}.db" for p in range(4)]
    logs = sorted(tmp_path.glob("worker-*.log"), key=lambda path: path.stat().st_mtime)
    reads = [
        [int(n) for n in re.findall(r"in bulk: (\d+) records .* on disk\)", log.read_text(errors="replace"))]
        for log in logs
    ]
    changelog = asyncio.run(read_changelog(bootstrap, f"{topics.app_id}-sessions-changelog", [0, 1, 2, 3]))
    print(f"bulk reads {reads} of the changelog's {changelog[1]} records")
    assert len(reads) == 2 and reads[0] == [0] and 0 < sum(reads[1]) <= 8, (
        reads
    )  # each partition's last record


def _rewind_group(bootstrap: str, group: str, topic: str) -> None:
    """Commit offset 0 on every partition of `topic` for `group` (no member running): the next worker reads
    every click again, as after a crash or a rebalance before its commit, at its widest."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(0, "", -1) for p in partitions})
    finally:
        consumer.close()


def test_clicks_read_again_after_their_session_closed_are_answered_and_never_reopen_it(
    bootstrap, topics, served_checkpoint, tmp_path
):
    """A closed session leaves nothing in the table to remember its clicks by; a worker that reads them
    again (here all of them: the group's offsets rewound to 0 between two workers) answers each again and
    appends none: no session comes back, none closes twice, the open ones keep their histories, and a new
    click after them starts and extends sessions as usual."""
    model, _ = load_checkpoint(served_checkpoint)
    vocab = model.vocab.ids[1:]
    closing = _clicks(10, 4, vocab, seed=5, prefix="c")  # closed at their 4th click
    staying = _clicks(5, 2, vocab, seed=6, prefix="o")  # still open at the end
    first = closing + staying
    env = {"NEXTCLICK_MAX_SESSION_LENGTH": "4"}
    worker = WorkerProcess(bootstrap, topics, served_checkpoint, tmp_path, **env)
    try:
        worker.wait_ready()
        send(bootstrap, topics.clicks, [click(s, i, e) for s, i, e in first])
        collect(bootstrap, topics.recommendations, len(first), events={e for *_, e in first})
        closed = collect(bootstrap, topics.sessions, 10, settle=1.0)
    finally:
        worker.stop()
    assert len(closed) == 10
    _rewind_group(bootstrap, topics.app_id, topics.clicks)
    later = [("c0", vocab[1], "c0-again"), ("o0", vocab[2], "o0-more")]
    worker = WorkerProcess(bootstrap, topics, served_checkpoint, tmp_path, **env)
    try:
        worker.wait_ready()
        collect(bootstrap, topics.recommendations, 2 * len(first))  # every click read again answered
        send(bootstrap, topics.clicks, [click(s, i, e) for s, i, e in later])
        events = {e for *_, e in first + later}
        recs = _by_event(collect(bootstrap, topics.recommendations, 2 * len(first) + 2, events=events))
        sessions = collect(bootstrap, topics.sessions, 10, settle=3.0)
    finally:
        worker.stop()
    assert all(len(recs[e]) == 2 for *_, e in first), "every click answered again"
    assert len(sessions) == 10, f"{len(sessions) - 10} sessions closed a second time"
    from tests.stream.harness import stored_sessions

    stored = {key: value["items"] for key, value in stored_sessions(bootstrap, topics).items()}
    expected = {f"o{j}": [i for s, i, _ in staying if s == f"o{j}"] for j in range(5)}
    expected["o0"] = expected["o0"] + [vocab[2]]
    expected["c0"] = [vocab[1]]
    assert stored == expected


def test_two_workers_share_the_partitions_and_answer_every_click_once(
    bootstrap, topics, served_checkpoint, tmp_path
):
    model, _ = load_checkpoint(served_checkpoint)
    vocab = model.vocab.ids[1:]
    clicks = _clicks(40, 5, vocab, seed=3)
    a = WorkerProcess(bootstrap, topics, served_checkpoint, tmp_path)
    b = WorkerProcess(bootstrap, topics, served_checkpoint, tmp_path)
    try:
        a.wait_ready()
        b.wait_ready()
        time.sleep(3)  # let the group settle on both members
        send(bootstrap, topics.clicks, [click(s, i, e) for s, i, e in clicks])
        recs = _by_event(collect(bootstrap, topics.recommendations, len(clicks)))
        answered_a = a.metric("nextclick_events_total")
        answered_b = b.metric("nextclick_events_total")
    finally:
        a.stop()
        b.stop()
    assert set(recs) == {e for _, _, e in clicks}
    assert all(len(v) == 1 for v in recs.values())
    assert answered_a > 0 and answered_b > 0 and answered_a + answered_b == len(clicks)


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_idle_and_over_long_sessions_are_closed_and_published(
    store, bootstrap, topics, served_checkpoint, tmp_path
):
    model, _ = load_checkpoint(served_checkpoint)
    vocab = model.vocab.ids[1:]
    worker = WorkerProcess(
        bootstrap,
        topics,
        served_checkpoint,
        tmp_path,
        NEXTCLICK_SESSION_TTL="60",
        NEXTCLICK_MAX_SESSION_LENGTH="4",
        NEXTCLICK_STORE=store,
    )
    t0 = 1_700_000_000.0
    try:
        worker.wait_ready()
        send(
            bootstrap,
            topics.clicks,
            [
                click("old", vocab[0], "o1", t0),
                click("old", vocab[1], "o2", t0 + 10),
                *[click("long", vocab[i], f"l{i}", t0 + 20 + i) for i in range(4)],
            ],
        )
        collect(bootstrap, topics.recommendations, 6, settle=0.2)  # answered: they arrived before ...
        # ... clicks of three sessions 490 s after "old" went quiet: "old" is idle (one session alone
        # cannot move the worker's event time: stream.worker.expiry)
        send(bootstrap, topics.clicks, [click(f"new{j}", vocab[2], f"n{j}", t0 + 500) for j in range(3)])
        closed = collect(bootstrap, topics.sessions, 2, timeout=30)
        active = worker.metric("nextclick_active_sessions")
    finally:
        worker.stop()
    by_id = {json.loads(r.value)["session_id"]: json.loads(r.value) for r in closed}
    assert by_id["old"]["reason"] == "idle" and by_id["old"]["items"] == [vocab[0], vocab[1]]
    assert by_id["old"]["timestamps"] == [t0, t0 + 10]
    assert by_id["long"]["reason"] == "too_long" and by_id["long"]["items"] == vocab[:4]
    assert set(by_id) == {"old", "long"} and active == 3
