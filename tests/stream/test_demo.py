"""`nextclick demo` end to end, as a newcomer runs it: summary, a hot swap, and a clean Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from stream.kafka.broker import kafka_available, port_open

pytestmark = pytest.mark.slow


def _leftovers(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


# on the embedded Tansu, the default, tests/test_readme.py runs the README's `nextclick demo` as written
@pytest.mark.parametrize("engine", ["kafka"])
def test_demo_answers_every_valid_click_swaps_a_model_and_reports_online_accuracy(engine, tmp_path):
    if engine == "kafka" and not kafka_available():
        pytest.skip("no local Apache Kafka (Java and scripts/install_kafka.sh)")
    work = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "demo",
            "--events",
            "2000",
            "--rate",
            "250",
            "--json",
            "--quiet",
            "--metrics-port",
            "0",
            "--workdir",
            str(work),
            "--engine",
            engine,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(summary)
    assert set(summary) >= {
        "events",
        "recommendations",
        "dlq",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "online_mrr@20",
        "online_recall@20",
        "model_swaps",
    }
    assert summary["dlq"] > 0  # the demo mixes in malformed messages
    assert summary["recommendations"] == summary["events"] - summary["dlq"] == 2000
    assert summary["duplicates"] == 0
    assert summary["model_swaps"] >= 1 and summary["model_version"] != "v000001"
    assert summary["online_mrr@20"] > 0 and summary["online_recall@20"] > summary["online_mrr@20"]
    assert 0 < summary["e2e_p50_ms"] <= summary["e2e_p99_ms"]
    assert not _leftovers(str(work)), "a child process outlived the demo"


def test_ctrl_c_stops_every_process_and_frees_the_ports(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "demo",
            "--events",
            "100000",
            "--metrics-port",
            "0",
            "--workdir",
            str(work),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    broker_port = None
    deadline = time.monotonic() + 120
    lines = []
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "broker on 127.0.0.1:" in line:  # the default: the embedded Tansu
                broker_port = int(line.split("127.0.0.1:")[1].split(";")[0])
            if line.startswith("[") and "clicks" in line:  # streaming: broker, worker and trainer all up
                break
    finally:
        if broker_port is None:  # the demo never got going: stop it anyway, it must not outlive the test
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    assert broker_port, "".join(lines)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    time.sleep(1)
    assert not _leftovers(str(work)), "a child process outlived Ctrl-C"
    assert not port_open("127.0.0.1", broker_port), "the broker port is still open"
