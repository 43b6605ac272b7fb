"""Data-parallel training under torchrun: 2 CPU processes on gloo give the same kind of checkpoint."""

import json
import os
import subprocess
import sys

import pytest

from model.data.load import load_data
from model.data.synthetic import synthetic_events
from model.lifecycle.checkpoint import load_checkpoint
from model.lifecycle.experiment import evaluate_model, fit_model, make_model

pytestmark = pytest.mark.slow

ARGS = ["--model", "srgnn", "--epochs", "4", "--quiet"]
ARGS += ["--set", "hidden_size=32", "--set", "lr=0.005", "--set", "bf16=false", "--set", "valid_fraction=0"]


def _events(tmp_path) -> str:
    """The tiny synthetic world of the other model tests (200 items) as a SessionId/ItemId/Time file."""
    frame = synthetic_events(1500, n_items=200, seed=3)
    path = tmp_path / "clicks.tsv"
    frame.rename(columns={"session": "SessionId", "item": "ItemId", "time": "Time"}).to_csv(
        path, sep="\t", index=False
    )
    return str(path)


def _train(tmp_path, name: str, launcher: list[str], batch_size: int) -> dict:
    out = tmp_path / name
    proc = subprocess.run(
        [
            *launcher,
            "-m",
            "stream.cli",
            "train",
            *ARGS,
            "--set",
            f"batch_size={batch_size}",
            "--data",
            _events(tmp_path),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "result": json.loads(proc.stdout.strip().splitlines()[-1])}


def test_two_gloo_processes_train_the_same_kind_of_checkpoint_as_one(tmp_path):
    ddp = _train(
        tmp_path,
        "ddp",
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        32,
    )
    single = _train(tmp_path, "single", [sys.executable], 64)
    m_ddp, meta_ddp = load_checkpoint(ddp["out"])
    m_one, meta_one = load_checkpoint(single["out"])
    assert meta_ddp["history"]["world_size"] == 2 and meta_one["history"]["world_size"] == 1
    a, b = m_ddp.state_tensors(), m_one.state_tensors()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    # it learnt: well above popularity on the same test split (each process took half the steps per epoch)
    data = load_data(_events(tmp_path))
    pop = make_model("pop", data)
    fit_model(pop, data)
    pop_mrr = evaluate_model(pop, data, (20,))["mrr@20"]
    print(
        f"mrr@20 pop {pop_mrr:.3f}, 1 process {single['result']['mrr@20']:.3f}, 2 processes {ddp['result']['mrr@20']:.3f}"
    )
    assert ddp["result"]["mrr@20"] > pop_mrr + 0.03
    # 2 processes x batch 32 with averaged gradients take the same steps as 1 process x batch 64 (the same
    # shuffled order, each pair of consecutive 32-batches split across the processes): same model, up to
    # float summation order
    for k in ("recall@20", "mrr@20"):
        assert abs(ddp["result"][k] - single["result"][k]) < 0.01
