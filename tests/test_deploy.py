"""deploy/: the compose file, Prometheus config and alert rules, and the Grafana dashboard.

The live test runs the real Prometheus server (Debian package `prometheus`, installed by .ci/run) against
a real worker and trainer on a real broker, and evaluates every PromQL expression of the dashboard and of
the alert rules: each must parse, and each must return data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "nextclick.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def signal_of(expr: str) -> str:
    """The part of `<signal> <comparison> <threshold>` that must return data while nothing is wrong."""
    m = re.match(r"^(.*\S)\s*(>|<|==|>=|<=|!=)\s*[-0-9.e*\s]+$", " ".join(expr.split()), re.S)
    assert m, f"alert expression not of the form <signal> <op> <threshold>: {expr}"
    return m.group(1)


def test_compose_file_wires_kafka_workers_trainer_replay_prometheus_and_grafana():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "worker-1", "worker-2", "trainer", "replay", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    for name in ("worker-1", "worker-2", "trainer"):
        assert services[name]["environment"]["KAFKA_BOOTSTRAP"] == "kafka:9092"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"worker-1:9100", "worker-2:9100", "trainer:9101"}
    gpu = yaml.safe_load((DEPLOY / "docker-compose.gpu.yml").read_text())
    devices = gpu["services"]["worker-1"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert (DEPLOY / "Dockerfile").is_file() and "cuda" in (DEPLOY / "Dockerfile.gpu").read_text()


def test_compose_kafka_is_the_kafka_the_tests_run_on():
    """Same Apache Kafka version as deploy/kafka/pom.xml, same one-node settings as `KafkaBroker`."""
    from xml.etree import ElementTree

    from stream.kafka.broker import KAFKA_HEAP, KAFKA_PROPERTIES

    kafka = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["kafka"]
    pom = ElementTree.parse(DEPLOY / "kafka" / "pom.xml").getroot()
    version = pom.find(
        "{http://maven.apache.org/POM/4.0.0}properties/{http://maven.apache.org/POM/4.0.0}kafka.version"
    )
    assert kafka["image"] == f"apache/kafka:{version.text}"
    ours = dict(line.split("=", 1) for line in KAFKA_PROPERTIES.splitlines() if line)
    env = kafka["environment"]
    for name in ("num.partitions", "default.replication.factor", "offsets.topic.replication.factor",
                 "transaction.state.log.replication.factor", "transaction.state.log.min.isr",
                 "share.coordinator.state.topic.replication.factor", "share.coordinator.state.topic.min.isr",
                 "group.initial.rebalance.delay.ms", "process.roles"):  # fmt: skip
        assert str(env["KAFKA_" + name.upper().replace(".", "_")]) == ours[name], name
    assert env["KAFKA_HEAP_OPTS"] == KAFKA_HEAP


def test_docker_compose_config_is_valid():
    if (
        not shutil.which("docker")
        or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("no docker compose client here")
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]):
        args = [a for f in files for a in ("-f", str(DEPLOY / f))]
        proc = subprocess.run(["docker", "compose", *args, "config", "-q"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (.ci/run installs the Debian package prometheus)")
    return tool


def test_promtool_accepts_the_config_and_the_rules():
    tool = _promtool()
    for args in (
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        ["check", "rules", str(ALERTS)],
    ):
        proc = subprocess.run([tool, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_signal_a_threshold_and_a_summary():
    rules = alert_rules()
    assert {r["alert"] for r in rules} == {
        "NextclickLatencyP99High",
        "NextclickOnlineMrrFalling",
        "NextclickTrainerStale",
        "NextclickDlqRate",
        "NextclickNoRecommendations",
        "NextclickChangelogRepairFailed",
        "NextclickChangelogWriteFailed",
    }
    for r in rules:
        signal_of(r["expr"])
        assert r["annotations"]["summary"]
