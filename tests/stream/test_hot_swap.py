"""Continuous training end to end: a real broker, two real workers on a registry, the real trainer CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from model.data.synthetic import item_id, synthetic_data, synthetic_sessions
from model.lifecycle.checkpoint import WEIGHTS
from model.lifecycle.experiment import fit_model, make_model
from model.lifecycle.registry import Registry
from model.lifecycle.sessionlog import SessionLog
from stream.kafka.clients import producer
from stream.metrics import scrape, serving_version
from stream.worker.process import WorkerProcess
from tests.stream.harness import click, collect, send, wait_until

pytestmark = pytest.mark.slow

GRU = {"layers": [32], "batch_size": 32}


def _steady_load(bootstrap: str, topic: str, stop: threading.Event, sent: list[str], rate: float = 40.0):
    s = synthetic_sessions(400, n_items=300, seed=7)
    prod = producer(bootstrap)
    i = 0
    while not stop.is_set():
        j = i % s.n_events
        session = f"load-{int(s.session_of_event()[j])}-{i // s.n_events}"
        key, value = click(session, str(item_id(int(s.items[j]))), f"e{i}")
        prod.send(topic, key=key, value=value)
        sent.append(f"e{i}")
        i += 1
        time.sleep(1.0 / rate)
    prod.flush()
    prod.close()


def _serving(worker: WorkerProcess) -> str | None:
    version = serving_version(scrape(worker.metrics_port))
    return None if version == "-" else version


def test_trainer_publishes_every_worker_swaps_no_click_is_lost_and_a_corrupt_version_is_refused(
    bootstrap, topics, tmp_path
):
    registry = Registry(tmp_path / "registry")
    data = synthetic_data(n_sessions=800, n_items=300, seed=0)
    first = make_model("gru4rec", data, sets=GRU, epochs=1)
    fit_model(first, data)
    registry.publish(first)
    s = synthetic_sessions(1500, n_items=300, seed=1)
    SessionLog(tmp_path / "log").append(
        {
            "session_id": f"log-{i}",
            "items": list(item_id(s[i])),
            "timestamps": s.times[s.offsets[i] : s.offsets[i + 1]].tolist(),
        }
        for i in range(len(s))
    )
    # a long poll interval: a swap within seconds must come from the model-updates announcement
    env = {"NEXTCLICK_REGISTRY_POLL_INTERVAL": "60"}
    workers = [
        WorkerProcess(bootstrap, topics, None, tmp_path, registry=registry.root, **env) for _ in range(2)
    ]
    stop, sent = threading.Event(), []
    load = threading.Thread(target=_steady_load, args=(bootstrap, topics.clicks, stop, sent))
    try:
        for w in workers:
            w.wait_ready()
        wait_until(lambda: all(_serving(w) == "v000001" for w in workers), 30)  # raises TimeoutError
        load.start()
        time.sleep(4)
        trainer = subprocess.run(
            [
                sys.executable,
                "-m",
                "stream.cli",
                "trainer",
                "--registry",
                str(registry.root),
                "--log-dir",
                str(tmp_path / "log"),
                "--once",
                "--epochs",
                "1",
                "--set",
                "layers=[32]",
                "--set",
                "batch_size=32",
                "--metrics-port",
                "0",
                "--device",
                "cpu",
            ],
            env={**os.environ, **topics.env(), "KAFKA_BOOTSTRAP": bootstrap},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert trainer.returncode == 0, trainer.stderr[-2000:]
        assert '"outcome": "published"' in trainer.stderr, trainer.stderr[-2000:]
        assert registry.latest() == "v000002"
        swap_seconds = wait_until(lambda: all(_serving(w) == "v000002" for w in workers), 20)
        print(f"announcement to both workers serving v000002: {swap_seconds:.1f} s")
        for w in workers:  # one swap each, measured from the registry's publication time
            assert w.metric("nextclick_model_swaps_total") == 1
            assert w.metric("nextclick_model_publish_to_serve_seconds_count") == 1
            assert 0 < w.metric("nextclick_model_publish_to_serve_seconds_sum") < 20
        time.sleep(3)

        # a corrupted version in the store (truncated weights), announced: refused, v000002 keeps serving
        bad = registry.root / "v000003"
        shutil.copytree(registry.path("v000002"), bad)
        weights = bad / WEIGHTS
        weights.write_bytes(weights.read_bytes()[:100])
        (registry.root / "LATEST").write_text("v000003\n")
        send(bootstrap, topics.model_updates, [(None, json.dumps({"version": "v000003"}).encode())])
        wait_until(lambda: all(w.metric("nextclick_model_load_failures_total") >= 1 for w in workers), 20)
        assert all(_serving(w) == "v000002" for w in workers)
        time.sleep(2)
    finally:
        stop.set()
        if load.is_alive():
            load.join()
        try:
            recs = collect(bootstrap, topics.recommendations, len(sent), events=set(sent), timeout=60)
        finally:
            for w in workers:
                w.stop()
    answered = Counter(json.loads(r.value)["event_id"] for r in recs)
    versions = Counter(json.loads(r.value)["model_version"] for r in recs)
    print(f"{len(sent)} clicks sent over the swap; versions answering: {dict(versions)}")
    assert set(answered) == set(sent)
    assert max(answered.values()) == 1, "a click was answered twice"
    assert versions["v000001"] > 0 and versions["v000002"] > 0 and "v000003" not in versions
