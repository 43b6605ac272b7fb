"""Train and evaluate any model by name: what `nextclick train` and `nextclick eval` run."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model.data.dataset import SessionData
from model.data.sessions import Samples
from model.data.vocab import ItemVocab
from model.errors import UserError
from model.metrics import evaluate
from model.models.base import Recommender
from model.models.fallback import recent_popularity
from model.models.zoo import model_class
from model.training.params import build_params


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_field(params: Any) -> str | None:
    """The name of a model's epoch count among its hyperparameters (None: it does not train in epochs)."""
    return next((f for f in ("epochs", "n_epochs") if hasattr(params, f)), None)


def make_model(
    name: str,
    data: SessionData,
    *,
    config: dict[str, Any] | None = None,
    sets: dict[str, Any] | None = None,
    epochs: int | None = None,
    device: torch.device | str = "cpu",
) -> Recommender:
    cls = model_class(name)
    params = build_params(cls.Params, config, sets)
    if epochs is not None:
        field = epoch_field(params)
        if field is None:
            raise UserError(f"--epochs: model {name} does not train in epochs")
        params = dataclasses.replace(params, **{field: epochs})
    return cls(data.vocab, params, device=device)


def fit_model(model: Recommender, data: SessionData, progress: bool = False) -> dict[str, Any]:
    """Models that early-stop (`uses_validation`) get the newest 10 % of training sessions as validation;
    the others learn from all of the training sessions. The test split is never shown to `fit`. Every
    fitted model also gets its fallback list, the training data's recent popularity (`model.models.fallback`)."""
    t0 = time.perf_counter()
    model.fallback = recent_popularity(data.train, data.vocab)
    fraction = getattr(model.params, "valid_fraction", 0.1)
    if getattr(model, "uses_validation", False) and fraction > 0:
        fit, valid = data.train_valid(fraction)
        history = model.fit(fit, valid, progress=progress)
        best = history.get("best_epoch")
        if best and getattr(model.params, "refit", False):
            history["refit"] = model.refit(data.train, best, progress=progress)
    else:
        history = model.fit(data.train, None, progress=progress)
    history["train_seconds"] = round(time.perf_counter() - t0, 3)
    return history


def evaluate_model(
    model: Recommender,
    data: SessionData,
    ks: Sequence[int] = (10, 20),
    progress: bool = False,
    batch_size: int = 500,
    extra_misses: int = 0,
) -> dict[str, Any]:
    """Full-ranking metrics on the test split; extra_misses are samples the model could not be asked
    about (see `remap_test`), counted as misses so that nothing is quietly dropped."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        metrics = evaluate(model.score, data.test, ks, batch_size=batch_size, progress=progress, desc="eval")
    if extra_misses:
        n = metrics["n"]
        total = n + extra_misses
        metrics = {k: (v * n / total if k != "n" else total) for k, v in metrics.items()}
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
    return metrics


def remap_test(data: SessionData, vocab: ItemVocab) -> tuple[SessionData, int]:
    """The test samples of `data` in the index space of another vocabulary (a checkpoint's): unknown items
    leave the prefixes; samples left with an empty prefix or an unknown label are removed and counted."""
    ext = np.asarray(data.vocab.ids, dtype=object)
    items = vocab.lookup_array(ext[data.test.items].astype(str))
    labels = vocab.lookup_array(ext[data.test.labels].astype(str))
    known = items >= 1
    new_pos = np.concatenate([[0], np.cumsum(known)])  # position of each old index among kept items
    test = Samples(items[known], new_pos[data.test.starts], new_pos[data.test.ends], labels)
    usable = np.flatnonzero((test.ends > test.starts) & (labels >= 1))
    remapped = SessionData(data.name, vocab, data.train, test.select(usable), data.test_sessions)
    return remapped, len(test) - len(usable)
