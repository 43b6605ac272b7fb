"""The trainer's cycle against an operator's rollback (no broker: a cycle that does not publish announces
nothing)."""

from __future__ import annotations

from model.data.synthetic import item_id, synthetic_sessions
from model.lifecycle import retrain
from model.lifecycle.checkpoint import load_checkpoint
from model.lifecycle.registry import Registry
from model.lifecycle.sessionlog import SessionLog
from stream import trainer as trainer_module
from stream.settings import TrainerSettings
from stream.trainer import Trainer


def test_a_rollback_made_while_a_cycle_trains_is_not_undone_by_its_publish(
    served_checkpoint, tmp_path, monkeypatch
):
    """`nextclick model promote v000001` while the trainer trains a candidate gated against v000002: the
    candidate must not be published over the rollback (the README's rollback once flipped back within
    seconds in a CI run)."""
    model, _ = load_checkpoint(served_checkpoint)
    registry = Registry(tmp_path / "registry")
    registry.publish(model)
    registry.publish(model)
    s = synthetic_sessions(300, n_items=300, seed=1)
    SessionLog(tmp_path / "log").append(
        {"session_id": f"h{i}", "items": list(item_id(s[i])), "timestamps": [1.0] * len(s[i])}
        for i in range(len(s))
    )

    def train_then_rollback(*args, **kwargs):
        trained = retrain.train_candidate(*args, **kwargs)
        registry.promote("v000001")  # the operator, in another terminal, mid-cycle
        return trained

    monkeypatch.setattr(trainer_module, "train_candidate", train_then_rollback)
    settings = TrainerSettings(
        registry=str(registry.root), log_dir=str(tmp_path / "log"), model="vsknn", gate_tolerance=1.0
    )
    summary = Trainer(settings).run_once()

    assert summary["outcome"] == "superseded", summary  # the gate passed (tolerance 1): only the promote
    assert summary["serving_version"] == "v000002"
    assert registry.latest() == "v000001" and registry.names() == ["v000001", "v000002"]
