"""Shared checks for the tiny-model tests: a neural model on the synthetic stream must clearly beat
popularity, and its checkpoint must reproduce its scores exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.data.dataset import SessionData
from model.lifecycle.checkpoint import load_checkpoint, save_checkpoint
from model.lifecycle.experiment import evaluate_model, fit_model, make_model
from model.models.base import Recommender


def assert_beats_popularity(model: Recommender, data: SessionData) -> None:
    got = evaluate_model(model, data)
    pop = make_model("pop", data)
    fit_model(pop, data)
    base = evaluate_model(pop, data)
    assert got["recall@20"] > base["recall@20"] + 0.1
    assert got["mrr@20"] > base["mrr@20"] + 0.03


def assert_checkpoint_round_trip(
    model: Recommender, data: SessionData, path: Path
) -> tuple[Recommender, dict[str, Any]]:
    """The loaded model scores the first test prefixes exactly as the trained one; returns it and its meta."""
    loaded, meta = load_checkpoint(save_checkpoint(model, path))
    sessions = data.test.prefixes(range(8))
    assert torch.allclose(loaded.score(sessions), model.score(sessions))
    return loaded, meta
