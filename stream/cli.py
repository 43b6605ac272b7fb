"""The `nextclick` command line. User mistakes end in one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model.errors import UserError
from stream.kafka.broker import ENGINES
from stream.settings import STORES, KafkaSettings, TrainerSettings, WorkerSettings

EXIT_USER_ERROR = 2
# the trainer's flags, each a field of TrainerSettings of the same name: (field, type, help text)
TRAINER_FLAGS = (
    ("registry", str, "registry folder"),
    ("log_dir", str, "session log folder (unset: REGISTRY/../session-log)"),
    ("interval", float, "retrain at least this often, seconds"),
    ("min_new_sessions", int, "... or after this many new sessions"),
    ("model", str, "model kind (unset: the serving one's, rerank for an empty registry)"),
    ("epochs", int, "epochs a cycle trains"),
    ("gate_metric", str, "the metric the gate compares"),
    ("gate_tolerance", float, "publish if >= serving - this"),
    ("retention_days", float, "days of sessions the log keeps"),
    ("max_sessions", int, "train on at most the newest N sessions"),
    ("keep_versions", int, "versions kept in the registry"),
    ("metrics_port", int, "Prometheus /metrics port, 0 = off"),
    ("metrics_addr", str, "address /metrics binds to"),
    ("device", str, "auto, cpu or cuda[:N]"),
)


def _print_result(result: dict[str, Any], as_json: bool, ks: list[int]) -> None:
    for k in ks:
        print(
            f"Recall@{k} {100 * result[f'recall@{k}']:.2f} %   MRR@{k} {100 * result[f'mrr@{k}']:.2f} %   "
            f"NDCG@{k} {100 * result[f'ndcg@{k}']:.2f} %"
        )
    print(f"{result['n']} test samples, evaluated in {result.get('eval_seconds', 0):.1f} s")
    if as_json:
        print(json.dumps(result))


def cmd_train(args: argparse.Namespace) -> int:
    from model.data.load import load_data
    from model.lifecycle.checkpoint import save_checkpoint
    from model.lifecycle.experiment import (
        evaluate_model,
        fit_model,
        make_model,
        seed_everything,
    )
    from model.models.base import resolve_device
    from model.models.neural import NeuralRecommender
    from model.training import distributed
    from model.training.params import parse_sets, read_config

    device = resolve_device(args.device)
    parallel = distributed.init_from_env(device)
    seed_everything(args.seed)
    data = load_data(args.data, args.format)
    config = read_config(args.config) if args.config else None
    model = make_model(
        args.model, data, config=config, sets=parse_sets(args.set), epochs=args.epochs, device=device
    )
    if parallel and not isinstance(model, NeuralRecommender):
        raise UserError(f"data-parallel training (torchrun) supports srgnn and mtaw, not {args.model}")
    where = f"{device}" + (
        f", process {distributed.rank()} of {distributed.world_size()}" if parallel else ""
    )
    print(f"training {args.model} on {data.name}: {data.summary()} on {where}", file=sys.stderr)
    history = fit_model(model, data, progress=not args.quiet)
    history["world_size"] = distributed.world_size()
    if not distributed.is_main():
        distributed.shutdown()
        return 0
    metrics = evaluate_model(model, data, args.k, progress=not args.quiet)
    out = Path(args.out or f"checkpoints/{args.model}-{Path(data.name).stem}")
    result = {
        "model": args.model,
        "data": str(args.data),
        **metrics,
        "train_seconds": history["train_seconds"],
    }
    save_checkpoint(
        model,
        out,
        data={**data.record(), "path": str(args.data)},
        metrics=metrics,
        history=history,
    )
    print(f"checkpoint: {out} (trained in {history['train_seconds']:.1f} s)")
    _print_result(result, args.json, args.k)
    distributed.shutdown()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from model.data.load import load_data
    from model.lifecycle.checkpoint import load_checkpoint
    from model.lifecycle.experiment import evaluate_model, remap_test
    from model.models.base import resolve_device

    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    data = load_data(args.data, args.format)
    misses = 0
    if data.vocab.ids != model.vocab.ids:
        data, misses = remap_test(data, model.vocab)
        print(
            f"note: the data's vocabulary differs from the checkpoint's; {misses} test samples with no "
            "known prefix item or an unknown label count as misses",
            file=sys.stderr,
        )
    metrics = evaluate_model(
        model, data, args.k, progress=not args.quiet, batch_size=args.batch_size, extra_misses=misses
    )
    result = {"model": meta["model"], "data": str(args.data), **metrics}
    _print_result(result, args.json, args.k)
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from stream.kafka.broker import local_broker

    broker = local_broker(args.engine, args.port, data_dir=args.data_dir).start()
    print(f"{broker.name} broker on {broker.bootstrap} ({broker.storage}); Ctrl-C stops it", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set() and broker.proc is not None and broker.proc.poll() is None:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from faust import Worker

    from model.models.base import resolve_device
    from stream.kafka.clients import require_broker
    from stream.metrics import require_free_port
    from stream.worker.pipeline import create_app

    settings = WorkerSettings.from_env(
        checkpoint=args.checkpoint,
        registry=args.registry,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        store=args.store,
    )
    if not settings.checkpoint and not settings.registry:
        raise UserError("nextclick worker needs --checkpoint DIR or --registry DIR")
    if settings.store not in STORES:
        raise UserError(
            f"NEXTCLICK_STORE={settings.store}: the session table is kept in {' or '.join(STORES)}"
        )
    if settings.checkpoint:
        from model.lifecycle.checkpoint import read_meta

        read_meta(settings.checkpoint)  # a bad path is one line here, not a traceback inside the worker
    resolve_device(settings.device)  # NEXTCLICK_DEVICE=cuda without a GPU: one line, before Faust starts
    require_free_port(settings.metrics_port, settings.metrics_addr, "--metrics-port")
    require_broker(settings.bootstrap)
    app = create_app(settings)
    Worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


def cmd_trainer(args: argparse.Namespace) -> int:
    import logging

    from model.models.base import resolve_device
    from model.training.params import parse_sets
    from stream.kafka.clients import require_broker
    from stream.metrics import require_free_port
    from stream.trainer import Trainer

    logging.basicConfig(
        level=getattr(logging, args.loglevel.upper()), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    flags = {name: getattr(args, name) for name, _, _ in TRAINER_FLAGS}
    settings = TrainerSettings.from_env(
        **flags, warm_start=False if args.scratch else None, sets=parse_sets(args.set) or None
    )
    if not settings.registry:
        raise UserError("nextclick trainer needs --registry DIR (env NEXTCLICK_REGISTRY)")
    resolve_device(settings.device)
    require_free_port(settings.metrics_port, settings.metrics_addr, "--metrics-port")
    require_broker(settings.bootstrap)
    Trainer(settings).run(once=args.once)
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    import time

    from model.lifecycle.checkpoint import load_checkpoint
    from model.lifecycle.registry import Registry

    root = args.registry or WorkerSettings.from_env().registry
    if not root:
        raise UserError(f"nextclick model {args.action} needs --registry DIR (env NEXTCLICK_REGISTRY)")
    registry = Registry(root)
    if args.action == "list":
        rows = registry.versions()
        if args.json:
            print(json.dumps([row.__dict__ for row in rows]))
            return 0
        if not rows:
            print(f"{root}: no versions")
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.created_at))
            mrr = row.metrics.get("mrr@20")
            score = f"mrr@20 {100 * mrr:.2f} %" if isinstance(mrr, int | float) else ""
            print(f"{'*' if row.latest else ' '} {row.version}  {row.model:8s} {when}  {score}")
        return 0
    if args.action == "promote":
        if not args.version:
            raise UserError("nextclick model promote needs a VERSION (see: nextclick model list)")
        registry.promote(args.version)
        print(f"{root}: LATEST -> {args.version} (workers follow within their poll interval)")
        return 0
    if not args.checkpoint:  # publish
        raise UserError("nextclick model publish needs --checkpoint DIR")
    model, meta = load_checkpoint(args.checkpoint)
    version = registry.publish(
        model,
        data=meta.get("data"),
        metrics=meta.get("metrics"),
        history=meta.get("history"),
    )
    print(f"{root}: published {args.checkpoint} as {version}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import DemoOptions, run_demo

    result = run_demo(
        DemoOptions(
            events=args.events,
            rate=args.rate,
            data=args.data,
            metrics_port=args.metrics_port,
            workdir=args.workdir,
            engine=args.engine,
            quiet=args.quiet,
        )
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from model.data.load import click_events
    from stream.kafka.clients import replay

    s = KafkaSettings.from_env()
    frame = click_events(args.data, args.limit)
    sent = replay(s.bootstrap, s.topic_clicks, frame, args.rate, progress=not args.quiet)
    print(json.dumps({"sent": sent, "topic": s.topic_clicks}))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from stream.kafka.clients import tail

    s = KafkaSettings.from_env()
    for record in tail(s.bootstrap, args.topic or s.topic_recommendations, args.from_beginning, args.limit):
        print(json.dumps(record), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextclick", description="Real-time session-based recommendations on Kafka."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data",
            required=True,
            help="data set path (SR-GNN folder, event file(s), Diginetica raw CSV) or synthetic[:N]",
        )
        p.add_argument("--format", choices=["srgnn", "events", "diginetica"], help="skip auto-detection")
        p.add_argument("--k", type=int, nargs="+", default=[10, 20], help="cut-offs (default 10 20)")
        p.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="train a model and write a checkpoint")
    t.add_argument("--model", required=True, help="pop, sknn, vsknn, ...")
    data_args(t)
    t.add_argument("--epochs", type=int, help="override the model's number of epochs")
    t.add_argument("--out", help="checkpoint folder (default checkpoints/MODEL-DATA)")
    t.add_argument("--config", help="hyperparameters from a JSON or TOML file")
    t.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="one hyperparameter")
    t.add_argument("--seed", type=int, default=42)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="full-ranking evaluation of a checkpoint on the data's test split")
    e.add_argument("--checkpoint", required=True, help="checkpoint folder")
    data_args(e)
    e.add_argument("--batch-size", type=int, default=500)
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("broker", help="start a local broker: the embedded Tansu or Apache Kafka")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument(
        "--engine",
        choices=ENGINES,
        default="tansu",
        help="tansu: embedded, in memory, pip only (default); kafka: Apache Kafka (KRaft) from the jars of "
        "scripts/install_kafka.sh, needs Java",
    )
    b.add_argument(
        "--data-dir",
        default=".nextclick/kafka",
        help="kafka: log dirs and config here (kept across restarts)",
    )
    b.set_defaults(func=cmd_broker)

    w = sub.add_parser("worker", help="the streaming worker (a Faust worker)")
    w.add_argument("--checkpoint", help=WorkerSettings.describe("checkpoint", "serve this checkpoint folder"))
    w.add_argument(
        "--registry", help=WorkerSettings.describe("registry", "serve the registry's latest version")
    )
    w.add_argument(
        "--metrics-port",
        type=int,
        help=WorkerSettings.describe("metrics_port", "Prometheus /metrics port, 0 = off"),
    )
    w.add_argument(
        "--metrics-addr", help=WorkerSettings.describe("metrics_addr", "address /metrics binds to")
    )
    w.add_argument(
        "--store",
        choices=list(STORES),
        help=WorkerSettings.describe("store", "the session table: in memory or on disk"),
    )
    w.add_argument("--loglevel", default="warning")
    w.set_defaults(func=cmd_worker)

    tr = sub.add_parser("trainer", help="log finished sessions, retrain, gate and publish to a registry")
    for name, kind, text in TRAINER_FLAGS:
        flag = "--keep" if name == "keep_versions" else "--" + name.replace("_", "-")
        tr.add_argument(flag, dest=name, type=kind, help=TrainerSettings.describe(name, text))
    tr.add_argument(
        "--scratch", action="store_true", help="train from scratch, not warm from the serving model"
    )
    tr.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="one hyperparameter")
    tr.add_argument("--once", action="store_true", help="ingest what is there, run one cycle, exit")
    tr.add_argument("--loglevel", default="info")
    tr.set_defaults(func=cmd_trainer)

    mo = sub.add_parser("model", help="the registry's versions: list, promote (rollback), publish")
    mo.add_argument("action", choices=["list", "promote", "publish"])
    mo.add_argument("version", nargs="?", help="for promote: the version to serve")
    mo.add_argument("--registry", help="registry folder (env NEXTCLICK_REGISTRY)")
    mo.add_argument("--checkpoint", help="for publish: a checkpoint folder to add as a new version")
    mo.add_argument("--json", action="store_true")
    mo.set_defaults(func=cmd_model)

    d = sub.add_parser("demo", help="everything on one machine: broker, worker, trainer, replay, hot swap")
    d.add_argument("--events", type=int, default=6000, help="clicks to replay (default 6000)")
    d.add_argument("--rate", type=float, default=120.0, help="clicks per second (default 120)")
    d.add_argument("--data", help="replay this data set instead of the synthetic stream")
    d.add_argument("--metrics-port", type=int, default=9100, help="the worker's /metrics port (0 = any free)")
    d.add_argument("--workdir", help="keep registry, session log and logs here (default: a temp folder)")
    d.add_argument("--engine", choices=ENGINES, default="tansu", help="the demo's broker (see broker)")
    d.add_argument("--json", action="store_true", help="last stdout line is the summary as one JSON object")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("replay", help="publish a data set's clicks to the clicks topic in time order")
    r.add_argument("--data", default="synthetic:2000", help="any --data format, or synthetic[:N]")
    r.add_argument("--rate", type=float, default=200.0, help="events per second (0 = as fast as possible)")
    r.add_argument("--limit", type=int, help="at most this many clicks")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_replay)

    tl = sub.add_parser("tail", help="print what arrives on a topic, one JSON object a line")
    tl.add_argument("--topic", help="default: the recommendations topic")
    tl.add_argument("--from-beginning", action="store_true")
    tl.add_argument("--limit", type=int)
    tl.set_defaults(func=cmd_tail)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"nextclick: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("nextclick: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
