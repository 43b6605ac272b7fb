"""README.md's commands, read from README.md itself and run as written, in a fresh folder.

The quickstart's demo, then "Run the pieces yourself" line by line on the embedded broker, with nothing a
user's commands would not supply: no data dir, no topics, no fallback list, no ports of our choosing (the
README's defaults, 9092, 9100 and 9101, must be free). `.venv/bin/` stands for this interpreter's folder;
an `NAME=value` prefix is the line's environment. Long-running commands (broker, worker, trainer, tail)
start as a user's terminals would and are stopped with Ctrl-C (SIGINT) at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model.data.load import click_events
from model.lifecycle.checkpoint import load_checkpoint
from stream.kafka.broker import port_open
from stream.kafka.clients import producer
from stream.metrics import scrape
from stream.processes import stop_group

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
LONG_RUNNING = {"broker", "worker", "trainer", "tail"}
PORTS = (9092, 9100, 9101)


def readme_commands(heading: str) -> list[str]:
    """The command lines of the first code block under `heading`, comments and blank lines dropped."""
    text = README.read_text()
    section = text[text.index(f"\n## {heading}\n") :]
    block = re.search(r"\n```\n(.*?)\n```", section, flags=re.S)
    assert block, f"no code block under {heading!r}"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def as_argv(line: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(line)
    env = {}
    while "=" in words[0] and not words[0].startswith("."):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words[0].startswith(".venv/bin/"), line
    return env, [str(BIN / words[0].removeprefix(".venv/bin/")), *words[1:]]


class Terminal:
    """One long-running README command, as a user's terminal runs it."""

    def __init__(self, line: str, cwd: Path) -> None:
        env, argv = as_argv(line)
        self.name = argv[1]
        self.out = cwd / f"{self.name}.out"
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=open(self.out, "wb"),  # noqa: SIM115 - the child keeps it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def ctrl_c(self) -> int | None:
        stop_group(self.proc, timeout=30, sig=signal.SIGINT)
        return self.proc.returncode


def run(line: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env, argv = as_argv(line)
    done = subprocess.run(
        argv, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def wait_for(what: str, predicate, timeout: float, *terminals: Terminal) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for t in terminals:
            assert t.proc.poll() is None, f"{t.name} exited while waiting for {what}:\n{t.text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(t.text()[-1500:] for t in terminals))


def serving(port: int) -> str | None:
    versions = [k.split(":", 1)[1] for k in scrape(port) if k.startswith("version:")]
    return versions[0] if versions else None


@pytest.fixture()
def readme_ports_free():
    busy = [p for p in PORTS if port_open("127.0.0.1", p)]
    assert not busy, f"README's ports {busy} are taken: the README test runs its commands as written"


def test_quickstart_demo_as_written(tmp_path, readme_ports_free):
    (line,) = [c for c in readme_commands("Quickstart") if " demo" in c]
    summary_text = run(line, tmp_path, timeout=400).stdout
    summary = json.loads(summary_text[summary_text.index("{") :])
    assert summary["dlq"] > 0  # the demo mixes in malformed messages
    assert summary["recommendations"] == summary["events"] - summary["dlq"]
    assert summary["duplicates"] == 0
    assert summary["model_swaps"] >= 1 and summary["model_version"] != "v000001"
    assert summary["online_mrr@20"] > 0 and summary["online_recall@20"] > summary["online_mrr@20"]
    assert 0 < summary["e2e_p50_ms"] <= summary["e2e_p99_ms"]
    assert not any(port_open("127.0.0.1", p) for p in PORTS[:2]), "the demo left a port open"


def test_run_the_pieces_yourself_as_written(tmp_path, readme_ports_free):
    lines = readme_commands("Run the pieces yourself")
    by_command = {}
    for line in lines:
        argv = as_argv(line)[1]
        by_command[" ".join(argv[1:3]) if argv[1] == "model" else argv[1]] = line
    assert set(by_command) == {"train", "model publish", "broker", "worker", "trainer", "tail", "replay",
                               "model list", "model promote"}, lines  # fmt: skip
    run(by_command["train"], tmp_path)
    run(by_command["model publish"], tmp_path)
    terminals: list[Terminal] = []
    try:
        broker = Terminal(by_command["broker"], tmp_path)
        terminals.append(broker)
        wait_for("the broker", lambda: "broker on 127.0.0.1:9092" in broker.text(), 60, broker)
        worker = Terminal(by_command["worker"], tmp_path)  # in a fresh folder: no .nextclick/ yet
        terminals.append(worker)
        wait_for("the worker to serve v000001", lambda: serving(9100) == "v000001", 90, worker)
        trainer = Terminal(by_command["trainer"], tmp_path)
        tail = Terminal(by_command["tail"], tmp_path)
        terminals += [trainer, tail]

        # a new visitor on a new item, from the shop's own producer, until `tail` shows the answer (which
        # also means `tail` is reading before the replay starts)
        shop = producer("127.0.0.1:9092")
        sent_cold = 0

        def cold_answered() -> bool:
            nonlocal sent_cold
            value = {"session_id": f"newcomer-{sent_cold}", "item_id": "an-item-never-seen"}
            shop.send("clicks", key=value["session_id"].encode(), value=json.dumps(value).encode())
            shop.flush()
            sent_cold += 1
            return '"newcomer-' in tail.text()

        wait_for("tail to show a cold session's answer", cold_answered, 60, worker, tail)
        replayed = json.loads(run(by_command["replay"], tmp_path).stdout.strip().splitlines()[-1])
        frame = click_events("synthetic:2000")
        assert replayed["sent"] == len(frame)

        def answers() -> list[dict]:
            return [json.loads(line)["value"] for line in tail.text().splitlines() if line.startswith("{")]

        def replay_answered() -> bool:
            return {a["event_id"] for a in answers() if a["session_id"].startswith("s")} >= {
                f"e{i}" for i in range(len(frame))
            }

        wait_for("every replayed click's answer", replay_answered, 120, worker, tail)
        # each retrain the gate lets through is published and served: v000002, and maybe more as sessions close
        wait_for("the trainer to publish and the worker to swap", lambda: serving(9100) not in (None, "v000001"),
                 240, worker, trainer)  # fmt: skip
        listed = run(by_command["model list"], tmp_path).stdout
        newest = re.search(r"^\* (v\d{6})", listed, flags=re.M)
        assert newest and newest.group(1) >= "v000002" and re.search(r"^  v000001", listed, flags=re.M)
        trainer.ctrl_c()  # as the README says, to keep the rollback
        trainer_log = trainer.text()
        run(by_command["model promote"], tmp_path)
        wait_for("the worker to roll back to v000001", lambda: serving(9100) == "v000001", 30, worker)
        swaps = scrape(9100)["nextclick_model_swaps_total"]
    finally:
        stopped = {t.name: t.ctrl_c() for t in reversed(terminals)}
    # at least one published version served and the rollback; at most a swap per published version + 1
    published = trainer_log.count('"outcome": "published"')
    assert published >= 1 and 2 <= swaps <= published + 1
    assert not any(port_open("127.0.0.1", p) for p in PORTS), f"a port outlived Ctrl-C ({stopped})"

    got = answers()
    replay_answers = [a for a in got if a["session_id"].startswith("s")]
    assert len(replay_answers) == len(frame)  # each click answered once
    # known items: the model's answer for the session's history up to the click, from the version that
    # answered (v000001's answers checked against the published checkpoint)
    model, meta = load_checkpoint(tmp_path / "registry" / "v000001")
    history: dict[str, list[str]] = {}
    sessions, items = frame["session"].tolist(), frame["item"].tolist()
    by_event = {a["event_id"]: a for a in replay_answers}
    checked = 0
    for i in range(len(frame)):
        history.setdefault(sessions[i], []).append(items[i])
        answer = by_event[f"e{i}"]
        if answer["model_version"] != "v000001" or checked >= 200:
            continue
        known = model.vocab.lookup(history[sessions[i]])
        known = known[known >= 1]
        if not known.size:  # the replay has items the first model never saw
            assert answer["source"] == "fallback" and answer["items"] == meta["fallback"]["items"][:20]
            continue
        want, _ = model.recommend([known], k=20)
        assert answer["source"] == "model" and answer["items"] == model.vocab.decode(want[0].tolist())
        assert np.all(np.diff(answer["scores"]) <= 0)
        checked += 1
    assert checked == 200
    # a cold session: the training data's recent popularity, with its click shares, labelled
    cold = [a for a in got if a["session_id"].startswith("newcomer-")]
    assert cold and all(a["source"] == "fallback" for a in cold)
    assert cold[0]["items"] == meta["fallback"]["items"][:20]
    assert cold[0]["scores"] == pytest.approx(meta["fallback"]["scores"][:20])
    assert cold[0]["items"][:5] != sorted(model.vocab.ids[1:])[:5]  # not the alphabetically first ids
    assert stopped["worker"] is not None and stopped["broker"] is not None
