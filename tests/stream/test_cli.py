import json
import subprocess
import sys

import pytest

from model.data.load import load_data
from model.lifecycle.checkpoint import load_checkpoint
from model.lifecycle.experiment import evaluate_model, remap_test
from stream.cli import main


def test_train_then_eval_json(tmp_path, capsys):
    out = tmp_path / "ck"
    assert (
        main(["train", "--model", "vsknn", "--data", "synthetic:800", "--out", str(out), "--json", "--quiet"])
        == 0
    )
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["model"] == "vsknn" and 0 < trained["recall@20"] <= 1 and trained["n"] > 100
    assert (out / "meta.json").is_file() and (out / "weights.safetensors").is_file()
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out),
                "--data",
                "synthetic:800",
                "--k",
                "5",
                "20",
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["recall@20"] == pytest.approx(trained["recall@20"])
    assert {"recall@5", "mrr@5", "mrr@20", "n"} <= set(evaluated)


def test_eval_on_data_with_another_vocabulary_counts_unknowns_as_misses(tmp_path, capsys):
    out = tmp_path / "ck"
    assert main(["train", "--model", "pop", "--data", "synthetic:800", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", "synthetic:900", "--json", "--quiet"]) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out.strip().splitlines()[-1])
    data = load_data("synthetic:900")
    model, _ = load_checkpoint(out)
    mapped, misses = remap_test(data, model.vocab)
    assert misses > 0 and f"{misses} test samples with no known prefix item" in printed.err
    assert result["n"] == len(data.test) == len(mapped.test) + misses  # every sample counted once
    kept = evaluate_model(model, mapped, [20])
    assert result["recall@20"] == pytest.approx(kept["recall@20"] * len(mapped.test) / len(data.test))


def test_train_reports_its_epochs_on_stderr(tmp_path):
    """Progress (bars and epoch lines) goes to stderr: stdout holds what the command says it prints, the
    checkpoint, the figures and, with `--json`, one JSON object as its last line (CONTRACT.md)."""
    argv = [
        "train",
        "--model",
        "mtaw",
        "--data",
        "synthetic:600",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "ck"),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", *argv, "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["model"] == "mtaw"
    assert "mtaw epoch" not in proc.stdout
    assert "mtaw epoch 1:" in proc.stderr and "mtaw epoch 2:" in proc.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "vsknn", "--data", "/no/such/data"], "no such file or folder"),
        (["train", "--model", "bogus", "--data", "synthetic:100"], "unknown model 'bogus'"),
        (["train", "--model", "vsknn", "--data", "synthetic:100", "--set", "k=many"], "not a valid int"),
        (
            ["train", "--model", "vsknn", "--data", "synthetic:100", "--set", "nope=1"],
            "unknown hyperparameter",
        ),
        (["train", "--model", "pop", "--data", "synthetic:100", "--epochs", "3"], "does not train in epochs"),
        (["eval", "--checkpoint", "/no/ck", "--data", "synthetic:100"], "not a checkpoint"),
    ],
)
def test_user_mistakes_are_one_line_without_traceback(argv, message):
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", *argv, "--quiet"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("nextclick: error:") and message in lines[-1]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "--limit", "5", "--quiet"], "no Kafka broker answers at 127.0.0.1:1"),
        (["worker", "--checkpoint", "/no/ck"], "not a checkpoint"),
        (["worker"], "needs --checkpoint DIR or --registry DIR"),
        (["tail", "--limit", "1"], "no Kafka broker answers"),
    ],
)
def test_stream_commands_fail_in_one_line(argv, message):
    import os

    env = {**os.environ, "KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    env.pop("NEXTCLICK_CHECKPOINT", None)
    env.pop("NEXTCLICK_REGISTRY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", *argv], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert message in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr


def test_model_publish_list_promote(tmp_path, capsys):
    ck, reg = tmp_path / "ck", tmp_path / "registry"
    assert main(["train", "--model", "pop", "--data", "synthetic:300", "--out", str(ck), "--quiet"]) == 0
    for _ in range(2):
        assert main(["model", "publish", "--checkpoint", str(ck), "--registry", str(reg)]) == 0
    capsys.readouterr()
    assert main(["model", "list", "--registry", str(reg), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["version"], r["latest"]) for r in rows] == [("v000001", False), ("v000002", True)]
    assert main(["model", "promote", "v000001", "--registry", str(reg)]) == 0
    assert (reg / "LATEST").read_text().strip() == "v000001"
    assert main(["model", "promote", "v000009", "--registry", str(reg)]) == 2
    assert "no version v000009" in capsys.readouterr().err


def test_a_taken_port_a_missing_gpu_or_an_unknown_store_is_one_line_before_the_worker_starts(tmp_path):
    """The first two used to crash inside the running Faust worker with a traceback, as would a store
    Faust does not know."""
    import os
    import socket

    import torch

    ck = tmp_path / "ck"
    assert main(["train", "--model", "pop", "--data", "synthetic:300", "--out", str(ck), "--quiet"]) == 0
    env = {**os.environ, "KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        cases = [
            (["worker", "--checkpoint", str(ck), "--metrics-port", port], {}, "cannot listen on"),
            (["trainer", "--registry", str(tmp_path / "r"), "--metrics-port", port], {}, "cannot listen on"),
            (["demo", "--metrics-port", port], {}, "cannot listen on"),
            (
                ["worker", "--checkpoint", str(ck)],
                {"NEXTCLICK_STORE": "disk://"},
                "kept in memory:// or rocksdb://",
            ),
        ]
        if not torch.cuda.is_available():
            cases.append(
                (["worker", "--checkpoint", str(ck)], {"NEXTCLICK_DEVICE": "cuda"}, "CUDA is not available")
            )
        for argv, extra, message in cases:
            proc = subprocess.run(
                [sys.executable, "-m", "stream.cli", *argv],
                capture_output=True,
                text=True,
                env={**env, **extra},
            )
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert message in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
