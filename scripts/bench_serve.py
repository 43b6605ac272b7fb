"""End-to-end serving latency: a broker + one `nextclick worker` + a load generator, on one machine.

    .venv/bin/python scripts/bench_serve.py --models srgnn gru4rec --rates 250 500 1000 2000 --seconds 20
    .venv/bin/python scripts/bench_serve.py --bare ...   # first the floors, same rates, same run
    .venv/bin/python scripts/bench_serve.py --engines tansu kafka ...   # each measurement on both brokers

`--bare` puts two floors in the same run, before the models: `scripts/echo_floor.py`, a raw aiokafka
consumer -> producer echo (no state, no model, no Faust: the floor under any worker on this broker), and
`scripts/bare_agent.py`, a bare Faust agent (one table write and one answer per click), one by one and
batched. Every model's p50 / p99 is also given as a multiple of the echo's at the same rate and broker
(`p50_x_floor`, `p99_x_floor`), and `--plot FILE` draws p50 and p99 against the rate for each.

The load generator: a kafka-python producer (linger 5 ms, acks=1, one send per click at the rate's
schedule) and, in a thread of the same process, a kafka-python consumer (fetch wait 20 ms).

`--engines`: the embedded Tansu and/or Apache Kafka (`nextclick broker --engine kafka`'s, log dirs in a
fresh temporary folder), a fresh broker for every measurement. Each result carries the CPU each process
used over the measured run, in cores (CPU seconds / wall seconds): worker, broker, and this process (the
load generator and the timing consumer).

For each model (untrained weights over Tmall's 40,727-item vocabulary: latency does not depend on what the
weights learnt; the kNN models, V-SKNN and rerank, index the training sessions, rerank's scorer trained for
one epoch) a worker serves k = 20. The load generator replays Tmall sessions (newest training
sessions, keyed by session id) at a fixed rate and a consumer thread timestamps every recommendation:
e2e = time the recommendation was received - time its click was sent, both on this machine's clock.
Prints one JSON line per (model, rate) and a summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.load import load_data
from model.lifecycle.checkpoint import save_checkpoint
from model.lifecycle.experiment import fit_model, make_model
from model.models.fallback import recent_popularity
from stream.kafka.broker import ENGINES, local_broker
from stream.kafka.clients import consumer, producer
from stream.settings import Topics
from stream.worker.process import WorkerProcess


class AnswerTimes:
    """A consumer thread that stamps each answer's arrival (`time.perf_counter`) by its event id, joined
    to the group before the load starts."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.received: dict[str, float] = {}
        self._stop = threading.Event()
        self._consumer = consumer(bootstrap, topic, from_beginning=False)
        self._consumer.poll(timeout_ms=500)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for records in self._consumer.poll(timeout_ms=50).values():
                now = time.perf_counter()
                for r in records:
                    self.received.setdefault(json.loads(r.value)["event_id"], now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def run_rate(
    bootstrap: str, topics: Topics, clicks: list[tuple[str, str]], rate: float, seconds: float
) -> dict:
    n = int(rate * seconds)
    sent: dict[str, float] = {}
    answers = AnswerTimes(bootstrap, topics.recommendations)
    received = answers.received
    prod = producer(bootstrap)
    tag = f"{rate:g}-{time.time():.0f}"
    t0 = time.perf_counter()
    for i in range(n):
        ahead = t0 + i / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        session, item = clicks[i % len(clicks)]
        event = f"{tag}-{i}"
        value = json.dumps({"session_id": f"{tag}-{session}", "item_id": item, "event_id": event}).encode()
        sent[event] = time.perf_counter()
        prod.send(topics.clicks, key=f"{tag}-{session}".encode(), value=value)
    prod.flush()
    achieved = n / (time.perf_counter() - t0)
    # drain: wait while answers keep coming (a backlog at an unsustainable rate must not leak into the next run)
    last, still = -1, time.perf_counter()
    while len(received) < n and time.perf_counter() - still < 5:
        if len(received) != last:
            last, still = len(received), time.perf_counter()
        time.sleep(0.1)
    answers.close()
    lat = np.array([received[e] - sent[e] for e in sent if e in received]) * 1000.0
    return {
        "rate": rate,
        "achieved_rate": round(achieved, 1),
        "sent": n,
        "answered": int(lat.size),
        "e2e_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "e2e_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tmall")
    ap.add_argument("--models", nargs="*", default=["srgnn", "gru4rec"])
    ap.add_argument("--rates", type=float, nargs="+", default=[100, 250, 500, 1000, 2000])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrent", type=int, default=1000, help="sessions open at once in the stream")
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=["tansu"], help="brokers")
    ap.add_argument(
        "--hold", type=float, default=60.0, help="then hold the best passing rate this long (0 = skip)"
    )
    ap.add_argument(
        "--bare",
        action="store_true",
        help="also measure the floors first: scripts/echo_floor.py (raw aiokafka echo) and "
        "scripts/bare_agent.py (one table update + one output per click, no model), taking clicks one by "
        "one and in batches as the worker does",
    )
    ap.add_argument("--plot", type=Path, help="draw p50 / p99 against the rate into this PNG")
    ap.add_argument(
        "--profile",
        type=Path,
        help="sample each measured worker with py-spy into this folder (collapsed stacks, one file per "
        "agent, broker and rate; scripts/profile_summary.py reads them)",
    )
    args = ap.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    data = load_data(args.data)
    sessions = data.train.select(np.arange(len(data.train) - 5000, len(data.train)))
    ids = data.vocab.ids
    clicks = interleave([ids_of(sessions[s], ids) for s in range(len(sessions))], args.concurrent)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    results = []
    for name in (list(FLOORS) if args.bare else []) + args.models:
        ck = None
        if name not in FLOORS:
            if name in INDEXED:  # a kNN model's cost depends on its index: index the training sessions
                model = make_model(name, data, epochs=1 if name == "rerank" else None)
                fit_model(model, data)
            else:  # untrained weights: the benchmark measures speed, not accuracy
                model = make_model(name, data)
                model.fallback = recent_popularity(data.train, data.vocab)
            ck = save_checkpoint(model, work / name)
        for engine in args.engines:
            for rate in args.rates:
                results.append(
                    measure(ck, work, clicks, name, rate, args.seconds, engine, profile=args.profile)
                )
            ours = [r for r in results if r["model"] == name and r["broker"] == engine]
            best = max((r["rate"] for r in ours if passed(r)), default=None)
            if best is not None and args.hold > 0:
                results.append(measure(ck, work, clicks, name, best, args.hold, engine, hold=True))
    against_floor(results)
    if args.plot:
        plot(results, args.plot)
    held = {}
    for r in results:
        if r.get("hold") and passed(r):
            held[f"{r['model']}@{r['broker']}"] = r["rate"]
    print(
        json.dumps(
            {"summary": f"rate held for {args.hold:g} s with p99 <= 100 ms and every click answered", **held}
        )
    )


INDEXED = ("vsknn", "rerank")  # fitted (rerank for one epoch) before they are served
ECHO, BARE, BARE_BATCHED = "aiokafka-echo", "bare-faust-agent", "bare-faust-agent-batched"
FLOORS = {  # name -> the script and its arguments (run in place of `nextclick worker`)
    ECHO: ["echo_floor.py"],
    BARE: ["bare_agent.py", "worker"],
    BARE_BATCHED: ["bare_agent.py", "worker"],
}


def against_floor(results: list[dict]) -> None:
    """Each result's p50 / p99 as a multiple of the echo floor's at the same rate and broker (when the
    floor was measured in this run), printed again as one JSON line each."""
    floor = {(r["broker"], r["rate"]): r for r in results if r["model"] == ECHO and not r["hold"]}
    for r in results:
        f = floor.get((r["broker"], r["rate"]))
        if f is None or r["model"] == ECHO or r["e2e_p50_ms"] is None or not f["e2e_p50_ms"]:
            continue
        r["p50_x_floor"] = round(r["e2e_p50_ms"] / f["e2e_p50_ms"], 2)
        r["p99_x_floor"] = round(r["e2e_p99_ms"] / f["e2e_p99_ms"], 2)
        print(json.dumps({k: r[k] for k in ("model", "broker", "rate", "p50_x_floor", "p99_x_floor")}))


def plot(results: list[dict], path: Path) -> None:
    """p50 (solid) and p99 (dashed) against the rate, one colour per agent and broker, log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    keys = dict.fromkeys((r["model"], r["broker"]) for r in results if not r["hold"])
    for i, (model, broker) in enumerate(keys):
        rows = sorted((r for r in results if (r["model"], r["broker"]) == (model, broker) and not r["hold"]
                       and r["e2e_p50_ms"] is not None), key=lambda r: r["rate"])  # fmt: skip
        rates = [r["rate"] for r in rows]
        colour = f"C{i % 10}"
        ax.plot(rates, [r["e2e_p50_ms"] for r in rows], "o-", color=colour, label=f"{model} ({broker}) p50")
        ax.plot(rates, [r["e2e_p99_ms"] for r in rows], "x--", color=colour, label=f"{model} ({broker}) p99")
    ax.set(xscale="log", yscale="log", xlabel="clicks / s", ylabel="click -> recommendation, ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def measure(
    ck: Path | None,
    work: Path,
    clicks: list[tuple[str, str]],
    name: str,
    rate: float,
    seconds: float,
    engine: str = "tansu",
    hold: bool = False,
    profile: Path | None = None,
) -> dict:
    """One rate against a fresh broker and worker: an overloaded run never slows the next one, and no run
    pays for the data earlier ones left in the broker (Tansu keeps every record in memory, uncompacted)."""
    is_bare = name in FLOORS
    bare = None
    if is_bare:
        script, *arguments = FLOORS[name]
        bare = [sys.executable, str(Path(__file__).with_name(script)), *arguments]
    with (
        tempfile.TemporaryDirectory(prefix="bench-kafka-") as data,
        local_broker(engine, data_dir=data) as broker,
    ):
        topics = Topics()
        batched = {"BARE_AGENT_BATCH": "1"} if name == BARE_BATCHED else {}
        worker = WorkerProcess(
            broker.bootstrap, topics, ck, work, command=bare, NEXTCLICK_DEVICE="cpu", **batched
        )
        try:
            worker.wait_ready()
            time.sleep(3)
            run_rate(broker.bootstrap, topics, clicks, 100, 3)  # warm-up
            before = worker_stats(worker)
            pids = {"worker": worker.proc.pid, "broker": broker.proc.pid, "load": os.getpid()}
            spy = (
                profiler(worker.proc.pid, profile / f"{name}-{engine}-{rate:g}.txt", seconds)
                if profile
                else None
            )
            cpu0, t0 = {k: cpu_seconds(p) for k, p in pids.items()}, time.perf_counter()
            r = {"model": name, "broker": engine, "hold": hold,
                 **run_rate(broker.bootstrap, topics, clicks, rate, seconds)}  # fmt: skip
            wall = time.perf_counter() - t0
            r.update({f"cpu_{k}_cores": round((cpu_seconds(p) - cpu0[k]) / wall, 2) for k, p in pids.items()})
            if not is_bare:  # the floors have no metrics
                r.update(stats_delta(before, worker_stats(worker)))
            if spy is not None:
                spy.wait(timeout=30)
        finally:
            worker.stop()
    print(json.dumps(r), flush=True)
    return r


def profiler(pid: int, out: Path, seconds: float) -> subprocess.Popen:
    """py-spy sampling the worker (all threads, idle ones left out) for the measured run."""
    spy = Path(sys.executable).with_name("py-spy")
    argv = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    argv += ["--format", "raw", "--threads", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


STATS = (
    "nextclick_inference_batch_size",
    "nextclick_inference_latency_seconds",
    "nextclick_consumed_batch_size",
    "nextclick_consumed_batch_seconds",
)


def worker_stats(worker: WorkerProcess) -> dict[str, float]:
    return {f"{n}_{part}": worker.metric(f"{n}_{part}") for n in STATS for part in ("sum", "count")}


def stats_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean inference batch, inference time, consumed batch and its handling time over one run."""
    out = {}
    for n in STATS:
        count = after[f"{n}_count"] - before[f"{n}_count"]
        mean = (after[f"{n}_sum"] - before[f"{n}_sum"]) / count if count else float("nan")
        short = n.removeprefix("nextclick_").replace("_seconds", "_ms").replace("_latency", "")
        out[f"mean_{short}"] = round(mean * 1000 if n.endswith("seconds") else mean, 2)
    return out


def ids_of(session: np.ndarray, ids: list[str]) -> list[str]:
    return [ids[int(i)] for i in session]


def interleave(sessions: list[list[str]], concurrent: int, seed: int = 0) -> list[tuple[str, str]]:
    """A live stream's click order: `concurrent` sessions are open at once and each click comes from a random
    open one; a finished session is replaced by the next. Replaying sessions back to back instead would
    make every click wait for its predecessor in the same session, which no real site produces."""
    rng = np.random.default_rng(seed)
    queue = iter(enumerate(sessions))
    open_: list[tuple[int, list[str], int]] = []
    out: list[tuple[str, str]] = []
    for _ in range(concurrent):
        nxt = next(queue, None)
        if nxt is not None:
            open_.append((nxt[0], nxt[1], 0))
    while open_:
        slot = int(rng.integers(len(open_)))
        sid, items, pos = open_[slot]
        out.append((f"s{sid}", items[pos]))
        if pos + 1 < len(items):
            open_[slot] = (sid, items, pos + 1)
        else:
            nxt = next(queue, None)
            if nxt is None:
                open_[slot] = open_[-1]
                open_.pop()
            else:
                open_[slot] = (nxt[0], nxt[1], 0)
    return out


def passed(r: dict) -> bool:
    return r["e2e_p99_ms"] is not None and r["e2e_p99_ms"] <= 100 and r["answered"] == r["sent"]


if __name__ == "__main__":
    main()
