"""A real Prometheus scrapes a real worker and trainer; every dashboard and alert expression returns data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from model.data.synthetic import item_id, synthetic_sessions
from model.lifecycle.checkpoint import load_checkpoint
from model.lifecycle.registry import Registry
from model.lifecycle.sessionlog import SessionLog
from stream.kafka.broker import free_port, port_open
from stream.worker.process import WorkerProcess
from tests.stream.harness import click, send, start_trainer
from tests.test_deploy import ALERTS, alert_rules, dashboard_exprs, signal_of

pytestmark = pytest.mark.slow


def _query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:  # a bad expression: 400 with the parser's message
        return json.loads(err.read())


def test_prometheus_scrapes_a_worker_and_the_trainer_and_every_expression_returns_data(
    bootstrap, topics, served_checkpoint, tmp_path
):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (.ci/run installs the Debian package)")
    model, _meta = load_checkpoint(served_checkpoint)
    registry = Registry(tmp_path / "registry")
    registry.publish(model)
    s = synthetic_sessions(300, n_items=300, seed=1)
    SessionLog(tmp_path / "log").append(
        {"session_id": f"h{i}", "items": list(item_id(s[i])), "timestamps": [1.0] * len(s[i])}
        for i in range(len(s))
    )
    worker = WorkerProcess(bootstrap, topics, None, tmp_path, registry=registry.root)
    trainer_port, prom_port = free_port(), free_port()
    # --gate-tolerance 1: publish whatever it trains (this test is about metrics; the gate has its own test)
    trainer = start_trainer(
        bootstrap, topics, registry.root, tmp_path / "log", tmp_path / "trainer.log",
        "--model", "vsknn", "--interval", "1", "--min-new-sessions", "1", "--gate-tolerance", "1",
        "--metrics-port", str(trainer_port), "--loglevel", "info",
    )  # fmt: skip
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML: the deploy alert rules, local targets, scraped every second
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "nextclick-worker",
                        "static_configs": [{"targets": [f"127.0.0.1:{worker.metrics_port}"]}],
                    },
                    {
                        "job_name": "nextclick-trainer",
                        "static_configs": [{"targets": [f"127.0.0.1:{trainer_port}"]}],
                    },
                ],
            }
        )
    )
    prom = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115 - the child keeps it
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        worker.wait_ready()
        vocab = model.vocab.ids[1:]
        for second in range(12):  # traffic, a malformed message, finished sessions for the trainer
            batch = [
                click(f"s{second}-{j % 7}", vocab[(second * 31 + j) % len(vocab)], f"e{second}-{j}")
                for j in range(40)
            ]
            send(bootstrap, topics.clicks, [*batch, (b"bad", b"{not json")])
            if second == 2:
                sessions = [
                    {"session_id": f"done{j}", "items": vocab[j : j + 4], "timestamps": [2.0] * 4}
                    for j in range(20)
                ]
                send(bootstrap, topics.sessions, [(None, json.dumps(x).encode()) for x in sessions])
            time.sleep(1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and registry.latest() == "v000001":
            time.sleep(0.5)
        # the trainer may publish more than once while the sessions keep coming: any new version will do
        assert registry.latest() != "v000001", (tmp_path / "trainer.log").read_text()[-2000:]
        time.sleep(4)  # the swap, and a few more scrapes
        assert port_open("127.0.0.1", prom_port)
        targets = _query(prom_port, "up")["data"]["result"]
        assert sorted(float(t["value"][1]) for t in targets) == [1.0, 1.0], targets

        failures = []
        for expr in dashboard_exprs():
            expr = expr.replace("$__rate_interval", "30s")
            got = _query(prom_port, expr)
            if got.get("status") != "success" or not got["data"]["result"]:
                failures.append((expr, got.get("error") or "no data"))
        for rule in alert_rules():
            full = _query(prom_port, rule["expr"])
            if full.get("status") != "success":
                failures.append((rule["alert"], full.get("error")))
            signal = _query(prom_port, signal_of(rule["expr"]))
            if signal.get("status") != "success" or not signal["data"]["result"]:
                failures.append((rule["alert"] + " signal", signal.get("error") or "no data"))
        assert not failures, failures
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5) as r:
            groups = json.loads(r.read())["data"]["groups"]
        assert [rule["health"] for g in groups for rule in g["rules"]] == ["ok"] * len(alert_rules())
    finally:
        prom.terminate()
        trainer.terminate()
        worker.stop()
        prom.wait(timeout=10)
        trainer.wait(timeout=20)
