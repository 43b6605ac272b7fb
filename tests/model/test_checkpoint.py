import json

import pytest
import torch

from model.lifecycle.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.lifecycle.experiment import fit_model, make_model


@pytest.fixture()
def vsknn_checkpoint(tiny_data, tmp_path):
    model = make_model("vsknn", tiny_data, sets={"k": "50"})
    fit_model(model, tiny_data)
    return model, save_checkpoint(model, tmp_path / "ck", data={"fingerprint": tiny_data.fingerprint()})


def test_round_trip_gives_identical_scores(tiny_data, vsknn_checkpoint):
    model, path = vsknn_checkpoint
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == "vsknn" and meta["params"]["k"] == 50
    assert loaded.vocab.ids == model.vocab.ids
    sessions = tiny_data.test.prefixes(range(20))
    assert torch.equal(loaded.score(sessions), model.score(sessions))
    assert not any(p.name.startswith(".ck.") for p in path.parent.iterdir())  # no temp folder left


def test_a_checkpoint_from_before_a_hyperparameter_keeps_its_behaviour_of_then(tiny_data, vsknn_checkpoint):
    """V-SKNN samples each item's 50 most recent sessions by default now; a checkpoint saved before
    `sample` existed searched them all, and is served that way, not with today's default."""
    model, path = vsknn_checkpoint
    assert model.params.sample == 50 and load_checkpoint(path)[0].params.sample == 50
    meta = json.loads((path / "meta.json").read_text())
    del meta["params"]["sample"]
    (path / "meta.json").write_text(json.dumps(meta))
    old, _ = load_checkpoint(path)
    assert old.params.sample == 0
    every = make_model("vsknn", tiny_data, sets={"k": "50", "sample": "0"})
    fit_model(every, tiny_data)
    sessions = tiny_data.test.prefixes(range(20))
    assert torch.equal(old.score(sessions), every.score(sessions))


def test_corrupt_or_foreign_checkpoints_are_refused(vsknn_checkpoint):
    _, path = vsknn_checkpoint
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    meta = json.loads((path / "meta.json").read_text())
    meta["model"] = "nonesuch"
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="unknown model"):
        load_checkpoint(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(path.parent / "missing")
