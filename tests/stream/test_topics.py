"""The topics a worker creates, as a cluster holds them: partitions, replication factor, the compacted table
changelog; and a worker on a cluster where an operator created them by hand."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from model.lifecycle.checkpoint import load_checkpoint
from stream.kafka.broker import is_tansu
from stream.settings import Topics
from stream.worker.process import WorkerProcess
from tests.stream.harness import click, collect, send, stored_sessions

pytestmark = pytest.mark.slow


def _describe(admin: KafkaAdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResourceType.TOPIC, topic)
    result = admin.describe_configs([resource])
    return {name: entry["value"] for name, entry in result["topic"][topic].items()}


def _record_count(bootstrap: str, topic: str) -> int:
    """Records that a reader from the beginning gets (after compaction: at least one per key)."""
    cons = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in cons.partitions_for_topic(topic) or []]
        begin, end = cons.beginning_offsets(parts), cons.end_offsets(parts)
        cons.assign(parts)
        cons.seek_to_beginning()
        count = 0
        while any(cons.position(tp) < end[tp] for tp in parts):
            count += sum(len(rs) for rs in cons.poll(timeout_ms=500).values())
        assert all(begin[tp] <= end[tp] for tp in parts)
        return count
    finally:
        cons.close()


def _answers(bootstrap: str, topics: Topics, wanted: set[str]) -> set[str]:
    recs = collect(bootstrap, topics.recommendations, len(wanted), events=wanted, settle=0.5)
    return {json.loads(r.value)["event_id"] for r in recs}


def test_the_worker_creates_its_topics_with_the_configured_partitions_and_a_compacted_changelog(
    bootstrap, topics, served_checkpoint, tmp_path
):
    model, _ = load_checkpoint(served_checkpoint)
    worker = WorkerProcess(bootstrap, topics, served_checkpoint, tmp_path, NEXTCLICK_PARTITIONS="3")
    try:
        worker.wait_ready()
        send(bootstrap, topics.clicks, [click("s1", model.vocab.ids[1], "e1")])
        assert _answers(bootstrap, topics, {"e1"}) == {"e1"}
    finally:
        worker.stop()
    changelog = f"{topics.app_id}-sessions-changelog"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics([topics.clicks, topics.recommendations,
                                                                   topics.dlq, topics.sessions, changelog])}  # fmt: skip
        policy = None if is_tansu(bootstrap) else _describe(admin, changelog)["cleanup.policy"]
    finally:
        admin.close()
    assert {name: len(t["partitions"]) for name, t in described.items()} == dict.fromkeys(described, 3)
    assert all(len(p["replica_nodes"]) == 1 for t in described.values() for p in t["partitions"])
    if policy is not None:  # Tansu answers no DescribeConfigs (and never compacts)
        assert policy == "compact"


def test_compaction_bounds_the_session_changelog_on_kafka(bootstrap, topics, served_checkpoint, tmp_path):
    """2,000 updates of 20 sessions: once the log cleaner has run, the changelog holds about one record per
    key (20 sessions and their 6 sealed chunks of 16 clicks each: 140; the 4 partitions' absorbed marks)
    and closed segment, not one per update, and still every history whole.
    The test only makes the cleaner run within seconds (segments rolled every 200 ms, any dirty ratio);
    what is compacted is the changelog exactly as the worker created it."""
    if is_tansu(bootstrap):
        pytest.skip("Tansu never compacts (../shared/notes/embedded-broker.md)")
    model, _ = load_checkpoint(served_checkpoint)
    vocab = model.vocab.ids[1:]
    changelog = f"{topics.app_id}-sessions-changelog"
    worker = WorkerProcess(bootstrap, topics, served_checkpoint, tmp_path, NEXTCLICK_BATCH_WAIT_MS="1")
    history: dict[str, list[str]] = {f"c{j}": [] for j in range(20)}
    try:
        worker.wait_ready()
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        fast = {"segment.ms": "200", "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0"}
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, changelog, configs=fast)])
        wanted = set()
        for r in range(100):  # a wave at a time: one changelog write per session and wave
            wave = []
            for session in history:
                item = vocab[(r * 7 + len(session) * 3 + int(session[1:])) % len(vocab)]
                history[session].append(item)
                wave.append(click(session, item, f"{session}-{r}"))
                wanted.add(f"{session}-{r}")
            send(bootstrap, topics.clicks, wave)
            time.sleep(0.03)
        assert _answers(bootstrap, topics, wanted) == wanted
        written = worker.metric("nextclick_events_total")
        deadline = time.monotonic() + 90
        while (kept := _record_count(bootstrap, changelog)) > 400 and time.monotonic() < deadline:
            send(
                bootstrap, topics.clicks, [click("c0", vocab[0], f"roll-{time.monotonic()}")]
            )  # rolls a segment
            history["c0"].append(vocab[0])
            time.sleep(2)
        described = _describe(admin, changelog)
        admin.close()
    finally:
        worker.stop()
    print(f"changelog: {written:.0f} clicks answered, {kept} records kept after compaction")
    assert described["cleanup.policy"] == "compact"
    assert kept <= 400, f"{kept} records: the changelog was not compacted"
    stored = stored_sessions(bootstrap, topics)  # what a restarted worker would recover
    assert {s: (stored.get(s) or {}).get("items") for s in history} == history


def test_a_worker_serves_topics_an_operator_created_by_hand(bootstrap, served_checkpoint, tmp_path):
    """NEXTCLICK_CREATE_TOPICS=0, on a cluster where the worker may not create topics: the topics listed in
    README ("Topics on a locked-down cluster"), created beforehand, are all it needs."""
    topics = Topics()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        names = [topics.clicks, topics.recommendations, topics.dlq, topics.sessions, topics.model_updates]
        new = [NewTopic(name, num_partitions=4, replication_factor=1) for name in names]
        new.append(NewTopic(f"{topics.app_id}-sessions-changelog", num_partitions=4, replication_factor=1,
                            topic_configs={"cleanup.policy": "compact"}))  # fmt: skip
        admin.create_topics(new)
    finally:
        admin.close()
    model, _ = load_checkpoint(served_checkpoint)
    worker = WorkerProcess(bootstrap, topics, served_checkpoint, tmp_path, NEXTCLICK_CREATE_TOPICS="0")
    try:
        worker.wait_ready()
        send(bootstrap, topics.clicks, [click("h1", model.vocab.ids[1], "h1-0"), (b"h2", b"not json")])
        assert _answers(bootstrap, topics, {"h1-0"}) == {"h1-0"}
        assert len(collect(bootstrap, topics.dlq, 1, timeout=20)) == 1
    finally:
        worker.stop()
    assert "Creating topic" not in worker.log.read_text(errors="replace")


def test_partitions_replication_and_topic_creation_reach_faust():
    """What a one-broker test cluster cannot show: a replication factor of 3 and no topic creation reach the
    Faust app the worker runs, for every topic it declares."""
    from stream.settings import WorkerSettings
    from stream.worker.pipeline import base_app

    conf = base_app(WorkerSettings(partitions=12, replication_factor=3, create_topics=False)).conf
    assert (conf.topic_partitions, conf.topic_replication_factor, conf.topic_allow_declare) == (12, 3, False)
