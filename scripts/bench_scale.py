"""Costs as the live sessions grow: a worker's restart-to-ready, memory and latency with N live sessions.

    .venv/bin/python scripts/bench_scale.py --sessions 0 10000 100000 1000000 --engine kafka

For each N, on a fresh broker: the worker's table changelog (compacted, the worker's partitions) is filled
with N sessions as the worker writes them (`stream.worker.session.Session`: the clicks of a Tmall
session, cycled through the newest training sessions, their timestamps, the last 20 recommendations,
clocks of now), each in the partition its session id hashes to, where the session's clicks go. Writing them
through a worker instead would take N clicks at the worker's rate (1M: about half an hour at its best);
what a restart reads is the same.

Then a `nextclick worker` (GRU4Rec, untrained weights: what is measured does not depend on the model) is
started and timed: **ready** = from starting the process to the answer of a click sent at that moment (the
worker answers it after Faust's recovery of the table, so recovery is inside). Then, with the N sessions
live, 10 s at 100 clicks/s on restored sessions: the latency (p50 / p99; the expiry scan of every
`expiry_interval` included) and the worker's resident memory (VmRSS) after it. Then the worker is stopped
and started again on the same data folder (**restart**: what a store kept on disk saves). Prints one JSON
line per N, after one line per session length with the changelog bytes a click costs, chunked as the
worker writes them and as whole-session records (before). `--profile DIR` samples each start with py-spy
(collapsed stacks, `DIR/ready-N-COMMIT.txt`, `DIR/restart-N-COMMIT.txt`). `--trees A B` runs the worker from
each of the checkouts A and B in turn (PYTHONPATH) on the same filled changelog: a before / after in one run.
`--stores memory:// rocksdb://` runs each tree with each session store in turn on the same changelog
(`NEXTCLICK_STORE`; the RocksDB databases' size on disk after the restart is `disk_mb`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_serve import AnswerTimes

from model.data.load import load_data
from model.lifecycle.checkpoint import save_checkpoint
from model.lifecycle.experiment import make_model
from model.models.fallback import recent_popularity
from stream.kafka.broker import ENGINES, local_broker
from stream.kafka.clients import consumer, producer
from stream.settings import Topics, WorkerSettings
from stream.worker.process import WorkerProcess
from stream.worker.session import Session, joined

PARTITIONS = WorkerSettings.partitions


def fill_changelog(bootstrap: str, topics: Topics, n: int, sessions: list[list[str]], recs: list[str]) -> int:
    """N sessions written to the table's changelog as the worker writes them (sealed chunks, then the
    session's record); returns the bytes of their values."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.partitioner.default import murmur2

    topic = f"{topics.app_id}-sessions-changelog"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})])
    admin.close()
    prod = producer(bootstrap)
    now = time.time()
    total = 0
    for i in range(n):
        sid = f"live-{i}"
        items = sessions[i % len(sessions)]
        times = [now - 30.0 * (len(items) - j) for j in range(len(items))]
        partition = (murmur2(sid.encode()) & 0x7FFFFFFF) % PARTITIONS
        session = Session(list(items), times, joined(recs), None, partition, i, times[-1], now)
        for key, value in [*session.seal(sid), (sid, session.to_json())]:
            total += len(value)
            prod.send(topic, key=json.dumps(key).encode(), value=value, partition=partition)
    prod.flush()
    prod.close()
    return total


def changelog_bytes_per_click(length: int, items: list[str], chunked: bool) -> float:
    """Mean changelog bytes written per click over a session's first `length` clicks, one click per
    write (the worst case: a batch holding several of a session's clicks writes it once), as the worker
    writes it (`chunked`) or as one whole-session record per write (before)."""
    session, total = Session(partition=0, recs=joined(items[:20])), 0
    for i in range(length):
        session.items.append(items[i % len(items)])
        session.times.append(1_700_000_000.0 + 30.0 * i)
        session.offset, session.mark, session.seen = 10**6 + i, session.times[-1], time.time()
        chunks = session.seal("a-session-id") if chunked else []
        total += sum(len(value) for _, value in chunks) + len(session.to_json())
    return total / length


def answer_of(
    bootstrap: str, topics: Topics, start: callable, session: str, item: str, timeout: float
) -> float:
    """Seconds from `start()` (a worker starting) to the answer of a click sent right then."""
    cons = consumer(bootstrap, topics.recommendations, from_beginning=False)
    cons.poll(timeout_ms=500)
    prod = producer(bootstrap)
    t0 = time.perf_counter()
    start()
    event = f"ready-{t0}"
    value = json.dumps({"session_id": session, "item_id": item, "event_id": event}).encode()
    prod.send(topics.clicks, key=session.encode(), value=value)
    prod.flush()
    try:
        while time.perf_counter() - t0 < timeout:
            for records in cons.poll(timeout_ms=100).values():
                if any(json.loads(r.value)["event_id"] == event for r in records):
                    return time.perf_counter() - t0
        raise TimeoutError(f"no answer within {timeout} s")
    finally:
        prod.close()
        cons.close()


def load_latency(
    bootstrap: str, topics: Topics, n: int, items: list[str], rate: float, seconds: float
) -> dict:
    """`rate` clicks/s on restored sessions (or new ones when there are none) for `seconds`."""
    sent: dict[str, float] = {}
    answers = AnswerTimes(bootstrap, topics.recommendations)
    received = answers.received
    prod = producer(bootstrap)
    rng = np.random.default_rng(0)
    total = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(total):
        ahead = t0 + i / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        sid = f"live-{int(rng.integers(n))}" if n else f"new-{i % 1000}"
        event = f"load-{i}"
        value = json.dumps({"session_id": sid, "item_id": items[i % len(items)], "event_id": event})
        sent[event] = time.perf_counter()
        prod.send(topics.clicks, key=sid.encode(), value=value.encode())
    prod.flush()
    deadline = time.perf_counter() + 10
    while len(received) < total and time.perf_counter() < deadline:
        time.sleep(0.1)
    answers.close()
    prod.close()
    lat = np.array([received[e] - sent[e] for e in sent if e in received]) * 1000.0
    return {
        "answered": int(lat.size),
        "sent": total,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def profiler(pid: int, out: Path) -> subprocess.Popen:
    """py-spy sampling the worker (50 Hz, collapsed stacks) until it is sent SIGINT."""
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", "50", "--format", "raw",
                             "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip


def tree_label(tree: Path | None) -> str:
    """The commit a worker code tree is at (its folder's name where git cannot say)."""
    where = tree or Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or where.name


def measure(
    n: int,
    engine: str,
    ck: Path,
    sessions: list[list[str]],
    recs: list[str],
    env: dict,
    profile: Path | None,
    trees: list[Path | None],
    stores: list[str],
) -> list[dict]:
    """One filled changelog, then each worker code tree with each store in turn on it (ready, latency,
    restart)."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp,
        local_broker(engine, data_dir=Path(tmp) / "broker") as broker,
    ):
        topics = Topics()
        t0 = time.perf_counter()
        value_bytes = fill_changelog(broker.bootstrap, topics, n, sessions, recs)
        filled = {"sessions": n, "broker": engine, **env, "fill_s": round(time.perf_counter() - t0, 1),
                  "changelog_value_bytes_mean": round(value_bytes / n, 1) if n else None}  # fmt: skip
        results = []
        for number, (tree, store) in enumerate(itertools.product(trees, stores)):
            code = {"PYTHONPATH": str(tree)} if tree is not None else {}
            code["NEXTCLICK_STORE"] = store
            result = {**filled, "tree": tree_label(tree), "store": store}
            data_dir = str(Path(tmp) / f"worker-data-{number}")
            probe = (f"live-{n - 1}" if n else "new-probe", recs[0])
            for phase in ("ready", "restart"):
                worker = spy = None

                def start(
                    phase: str = phase,
                    data_dir: str = data_dir,
                    code: dict = code,
                    label: str = result["tree"],
                ) -> None:
                    nonlocal worker, spy
                    worker = WorkerProcess(broker.bootstrap, topics, ck, Path(tmp), NEXTCLICK_DATA_DIR=data_dir,
                                           NEXTCLICK_DEVICE="cpu", **code, **env)  # fmt: skip
                    if profile is not None:
                        spy = profiler(worker.proc.pid, profile / f"{phase}-{n}-{label}.txt")

                try:
                    result[f"{phase}_s"] = round(answer_of(broker.bootstrap, topics, start, *probe, 600), 2)
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(60)
                    bulk = re.findall(
                        r"in bulk: (\d+) records(?:, \d+ keys)? in ([\d.]+) s", worker.log.read_text()
                    )
                    result[f"{phase}_bulk_restore_s"] = (
                        round(sum(float(t) for _, t in bulk), 2) if bulk else None
                    )
                    if phase == "ready":
                        result["restored"] = int(worker.metric("nextclick_active_sessions"))
                        result["rss_ready_mb"] = rss_mb(worker.proc.pid)
                        result |= load_latency(broker.bootstrap, topics, n, recs, 100, 10)
                        result["rss_after_load_mb"] = rss_mb(worker.proc.pid)
                finally:
                    if worker is not None:
                        worker.stop()
            result["disk_mb"] = round(
                sum(f.stat().st_size for f in Path(data_dir).rglob("*") if f.is_file()) / 2**20, 1
            )
            results.append(result)
        return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tmall")
    ap.add_argument("--sessions", type=int, nargs="+", default=[0, 10_000, 100_000, 1_000_000])
    ap.add_argument("--engine", choices=ENGINES, default="kafka")
    ap.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings for the worker")
    ap.add_argument("--profile", type=Path, help="folder for py-spy's collapsed stacks of start to ready")
    ap.add_argument("--trees", type=Path, nargs="+", default=[None],
                    help="worker code trees (checkouts of this repository) measured in turn on one filled "
                         "changelog, for a side-by-side comparison; default: this one")  # fmt: skip
    ap.add_argument("--stores", nargs="+", default=["memory://"], choices=["memory://", "rocksdb://"],
                    help="session stores measured in turn on one filled changelog")  # fmt: skip
    args = ap.parse_args()
    if args.profile:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    trees = [tree.resolve() if tree is not None else None for tree in args.trees]
    env = dict(pair.split("=", 1) for pair in args.env)

    data = load_data(args.data)
    ids = data.vocab.ids
    newest = data.train.select(np.arange(len(data.train) - 5000, len(data.train)))
    sessions = [[ids[int(i)] for i in newest[s]] for s in range(len(newest))]
    model = make_model("gru4rec", data)
    model.fallback = recent_popularity(data.train, data.vocab)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    # the workers start from here: `python -m` puts its folder first on the path, before a tree's PYTHONPATH
    os.chdir(work)
    ck = save_checkpoint(model, work / "gru4rec")
    recs = list(model.fallback.items[:20])
    for length in (1, 6, 16, 50, 200):
        row = {"session_length": length}
        for name, chunked in (("whole_record", False), ("chunked", True)):
            row[f"changelog_bytes_per_click_{name}"] = round(
                changelog_bytes_per_click(length, recs, chunked), 1
            )
        print(json.dumps(row))
    for n in args.sessions:
        for result in measure(n, args.engine, ck, sessions, recs, env, args.profile, trees, args.stores):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
