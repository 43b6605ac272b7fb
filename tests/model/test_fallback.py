"""The cold-session answer: the training data's recent popularity, in every checkpoint however it is made."""

import json

import numpy as np
import pytest

from model.data.load import load_data
from model.data.sessions import Sessions
from model.data.vocab import ItemVocab
from model.lifecycle.checkpoint import CheckpointError, load_checkpoint
from model.lifecycle.registry import Registry
from model.models.fallback import recent_popularity
from stream.cli import main
from stream.worker.inference import load_served


def _clicks_by_count(sessions: Sessions, vocab: ItemVocab) -> list[str]:
    counts = np.bincount(sessions.items, minlength=vocab.n_items + 1)
    counts[0] = -1
    return vocab.decode(np.argsort(-counts, kind="stable"))


def test_a_checkpoint_from_nextclick_train_serves_cold_sessions_the_popular_items(tmp_path, capsys):
    """README's path: train, publish, serve. On main before the fix the list was empty and a cold session
    got the alphabetically first ids (i1, i10, i100, ...) with invented scores."""
    out, registry = tmp_path / "ck", tmp_path / "registry"
    argv = ["train", "--model", "gru4rec", "--data", "synthetic:600", "--out", str(out), "--quiet"]
    assert main([*argv, "--epochs", "1", "--set", "layers=[16]"]) == 0
    assert main(["model", "publish", "--checkpoint", str(out), "--registry", str(registry)]) == 0
    capsys.readouterr()
    data = load_data("synthetic:600")
    meta = json.loads((out / "meta.json").read_text())
    fallback = meta["fallback"]
    assert fallback["label"].startswith("popularity over the newest")
    window = fallback["window"]
    newest = data.train.select(np.arange(len(data.train) - round(window * len(data.train)), len(data.train)))
    # ranked by the window's clicks: every listed item was clicked at least as often as the next one
    counts = np.bincount(newest.items, minlength=data.vocab.n_items + 1)
    listed = counts[data.vocab.lookup(fallback["items"])]
    assert (np.diff(listed) <= 0).all() and listed[0] == counts.max()
    assert fallback["scores"] == pytest.approx((listed / counts.sum()).tolist())

    served = load_served(Registry(registry).path("v000001"), device="cpu", k=20)
    assert served.fallback == (fallback["items"][:20], fallback["scores"][:20])


def test_the_window_is_chosen_on_the_newest_training_sessions_not_on_all_time_counts():
    """Item 1 was the hit of the old days, item 2 is today's: the validation split (the newest training
    sessions) prefers a recent window, and item 2 leads the list."""
    vocab = ItemVocab([f"i{n}" for n in range(1, 6)])
    old = [[1, 1, 3]] * 400  # item 1 was clicked twice as much as anything, long ago
    new = [[2, 4, 2]] * 100  # the newest fifth (its newest tenth is the validation split) likes item 2
    fallback = recent_popularity(Sessions.from_lists(old + new), vocab)
    assert fallback.window <= 0.2
    assert fallback.items[:2] == ["i2", "i4"]
    # all-time counts would have put i1 first
    assert _clicks_by_count(Sessions.from_lists(old + new), vocab)[0] == "i1"


def test_a_checkpoint_without_a_fallback_list_is_refused_with_one_clear_line(tmp_path, capsys):
    out = tmp_path / "ck"
    assert main(["train", "--model", "pop", "--data", "synthetic:300", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    meta["fallback"] = []  # what checkpoints held before the fallback was recorded
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="no usable fallback list"):
        load_checkpoint(out)
    capsys.readouterr()
    assert main(["model", "publish", "--checkpoint", str(out), "--registry", str(tmp_path / "r")]) == 2
    assert "no usable fallback list" in capsys.readouterr().err
