"""The trainer's cycle against an operator's rollback (no broker: a cycle that does not publish announces
nothing)."""

from __future__ import annotations

from model.data.synthetic import item_id, synthetic_sessions
from model.lifecycle import retrain
from model.lifecycle.checkpoint import load_checkpoint, read_meta
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


def test_the_gate_holds_out_only_sessions_the_serving_model_has_not_learnt_from(served_checkpoint, tmp_path):
    """The serving version records its newest training click; the trainer's held-out sessions end after it
    (the rest of the newest share trains), the version it publishes records its own, and a log with
    nothing newer skips the cycle instead of gating on what the serving model remembers."""
    model, _ = load_checkpoint(served_checkpoint)
    registry = Registry(tmp_path / "registry")
    registry.publish(model, data={"trained_until": 1000.0})
    s = synthetic_sessions(320, n_items=300, seed=1)
    log = SessionLog(tmp_path / "log")
    old, new = range(300), range(300, 320)  # 300 sessions up to t = 1000, 20 after it
    log.append(
        {"session_id": f"h{i}", "items": list(item_id(s[i])), "timestamps": [1000.0 - i] * len(s[i])}
        for i in old
    )
    settings = TrainerSettings(
        registry=str(registry.root), log_dir=str(tmp_path / "log"), model="vsknn", gate_tolerance=1.0
    )
    log.append(
        {"session_id": f"n{i}", "items": list(item_id(s[i])), "timestamps": [2000.0 + i] * len(s[i])}
        for i in new
    )
    summary = Trainer(settings).run_once()
    assert summary["outcome"] == "published", summary
    assert summary["heldout_samples"] == sum(len(s[i]) - 1 for i in new if len(s[i]) >= 2)
    assert summary["train_sessions"] == sum(len(s[i]) >= 2 for i in old)
    published = read_meta(registry.path(summary["version"]))
    assert published["data"]["trained_until"] == 1000.0  # its own newest training click

    registry.publish(model, data={"trained_until": 5000.0})  # newer than every logged session
    skipped = Trainer(settings).run_once()
    assert skipped["outcome"] == "skipped" and "nothing it has not learnt from" in skipped["reason"]
