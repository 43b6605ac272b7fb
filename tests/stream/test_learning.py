"""Between retrains a worker serving V-SKNN learns from the sessions that close (`stream.worker.learning`):
a real broker, `nextclick worker` as the README starts it, the sessions closing as visitors' do."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from model.lifecycle.checkpoint import load_checkpoint
from model.lifecycle.experiment import fit_model, make_model
from stream.metrics import Metrics
from stream.worker.inference import InferenceService, Served
from stream.worker.learning import ClosedSession, SessionLearner, next_due, parse_closed
from stream.worker.process import WorkerProcess
from tests.stream.harness import click, collect, send, wait_until


def _answer(bootstrap, topics, session: str, item: str) -> list[str]:
    send(bootstrap, topics.clicks, [click(session, item, f"{session}-0")])
    recs = collect(bootstrap, topics.recommendations, 1, events={f"{session}-0"}, settle=0.2)
    return next(json.loads(r.value) for r in recs if json.loads(r.value)["event_id"] == f"{session}-0")


@pytest.mark.slow
def test_a_pair_clicked_together_in_closed_sessions_is_recommended_before_any_retrain(
    bootstrap, topics, served_checkpoint, tmp_path
):
    model, _ = load_checkpoint(served_checkpoint)
    ids = model.vocab.ids[1:]
    # sessions close right after their second click's answer (as over-long ones do), learnt each second
    worker = WorkerProcess(
        bootstrap,
        topics,
        served_checkpoint,
        tmp_path,
        NEXTCLICK_MAX_SESSION_LENGTH="2",
        NEXTCLICK_LEARN_INTERVAL="1",
    )
    try:
        worker.wait_ready()
        wait_until(lambda: "learning from the sessions closed" in worker.log_tail(100_000), 30)
        first = ids[0]
        before = _answer(bootstrap, topics, "probe-before", first)
        pair = next(i for i in ids[1:] if i not in before["items"])  # an item the model did not propose
        together = [
            m
            for j in range(30)
            for m in (click(f"pair{j}", first, f"p{j}a"), click(f"pair{j}", pair, f"p{j}b"))
        ]
        send(bootstrap, topics.clicks, together)
        wait_until(lambda: worker.metric("nextclick_learned_sessions") >= 30, 30)
        after = _answer(bootstrap, topics, "probe-after", first)
        swaps = worker.metric("nextclick_model_swaps_total")
    finally:
        worker.stop()
    proposed = [i for i in after["items"] if i != first]  # V-SKNN may propose the clicked item itself
    assert proposed[0] == pair, after["items"][:5]
    assert after["model_version"] == before["model_version"] and after["model"] == "vsknn" and swaps == 0


def test_a_swapped_in_version_learns_only_what_closed_after_it_was_published(tiny_data):
    """Sessions that closed before a version was published are the trainer's (in its log before the cycle
    began); those after it are learnt into it. A model without an index (GRU4Rec) learns nothing here."""

    def served(name: str, version: str, published_at: float | None) -> Served:
        model = make_model(name, tiny_data, epochs=1 if name == "gru4rec" else None)
        fit_model(model, tiny_data)
        return Served(model, name, version, (["i1"], [1.0]), published_at=published_at)

    first = served("vsknn", "v1", None)
    service = InferenceService(first, Metrics())
    learner = SessionLearner(service, bootstrap="", topic="sessions", interval=1.0, max_items=200)
    ids = tiny_data.vocab.ids
    held = len(first.model.session_offsets) - 1

    async def scenario() -> list[int]:
        learner.add(ClosedSession([ids[3], ids[5], "never-seen"], closed_at=100.0))
        learner.add(ClosedSession([ids[4], "never-seen"], closed_at=101.0))  # one known item: no evidence
        learnt = [await learner.learn(), await learner.learn()]  # the second: nothing new
        assert service.served.version == "v1" and service.served.model is not first.model
        assert len(service.served.model.session_offsets) - 1 == held + 1
        np.testing.assert_array_equal(
            service.served.model.session_items[-2:], tiny_data.vocab.lookup(ids[3:6:2])
        )
        assert len(first.model.session_offsets) - 1 == held  # the version as loaded is untouched

        service.swap(second := served("vsknn", "v2", 150.0))
        learner.add(ClosedSession([ids[7], ids[8]], closed_at=160.0))
        learnt.append(await learner.learn())
        assert service.served.version == "v2" and service.served.model is not second.model
        assert len(service.served.model.session_offsets) - 1 == held + 1  # not the session of before v2
        np.testing.assert_array_equal(
            service.served.model.session_items[-2:], tiny_data.vocab.lookup(ids[7:9])
        )

        service.swap(served("gru4rec", "v3", 170.0))
        learner.add(ClosedSession([ids[7], ids[9]], closed_at=180.0))
        learnt.append(await learner.learn())
        assert service.served.version == "v3" and not learner.pending
        return learnt

    assert asyncio.run(scenario()) == [1, 0, 1, 0]
    assert service.metrics.model_swaps._value.get() == 2  # learning is no swap


def test_a_worker_holds_the_newest_closed_sessions_only(tiny_data):
    """With a fixed checkpoint nothing ever replaces the learnt index: it keeps the newest `max_sessions`
    closed sessions, so memory and a re-index's time stay bounded."""
    model = make_model("vsknn", tiny_data)
    fit_model(model, tiny_data)
    service = InferenceService(Served(model, "vsknn", "v1", (["i1"], [1.0])), Metrics())
    learner = SessionLearner(
        service, bootstrap="", topic="sessions", interval=1.0, max_items=200, max_sessions=2
    )
    ids = tiny_data.vocab.ids
    held = len(model.session_offsets) - 1

    async def scenario() -> list[int]:
        for a, b in ((1, 2), (3, 4), (5, 6)):
            learner.add(ClosedSession([ids[a], ids[b]], closed_at=float(a)))
        learnt = [await learner.learn()]
        learner.add(ClosedSession([ids[7], ids[8]], closed_at=7.0))
        learnt.append(await learner.learn())  # one new: the oldest of the two held falls out
        return learnt

    assert asyncio.run(scenario()) == [2, 2]
    served = service.served.model
    assert len(served.session_offsets) - 1 == held + 2
    np.testing.assert_array_equal(
        served.session_items[-4:], tiny_data.vocab.lookup([ids[5], ids[6], ids[7], ids[8]])
    )


def test_only_the_workers_own_session_records_are_read():
    closed = parse_closed(json.dumps({"session_id": "s", "items": ["a", "b"], "closed_at": 5.0}).encode(), 3)
    assert closed == ClosedSession(["a", "b"], 5.0)
    too_long = json.dumps({"items": ["a", "b", "c", "d"]}).encode()  # longer than a worker closes at
    for bad in (b"{", b"[]", b'{"items": "ab"}', b'{"items": [1, 2]}', b"\xff", too_long):
        assert parse_closed(bad, 3) is None


def test_re_indexing_takes_at_most_a_tenth_of_the_time():
    assert next_due(100.0, 100.5, 30.0) == 130.0  # a quick re-index: the interval
    assert next_due(100.0, 105.0, 30.0) == 150.0  # 5 s of work: 45 s of rest before the next
