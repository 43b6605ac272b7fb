"""Retraining on logged sessions: data from the session log, warm starts, and the publication gate.

The trainer (`stream.trainer`) calls these; nothing here knows about Kafka.

Data. Logged sessions (external item ids) are ordered by their last click; the newest `holdout_fraction`
is the held-out set (full-ranking prefix samples, the same protocol as `nextclick eval`), the rest trains.
Held-out sessions must end after the serving model's newest training click (`trained_until` in its
checkpoint's data), and those of the newest share that do not go to training: scored on sessions it
learnt from, the serving model wins the gate by memory (a kNN model holds them in its index). That
happens in the first cycles after a model was trained, while few sessions have closed since (the demo's
first cycle held out 11 of its history's sessions: over six seeds its first model scored 0.27-0.40
MRR@20 on the held-out samples, its retrain on the same history 0.24-0.27).

Warm start. The new vocabulary is the serving model's with the unseen items appended, so every known item
keeps its index; each tensor whose first dimension is the item count keeps the old rows and the new items'
rows keep their fresh initialisation, every other tensor is copied. Training then continues from there.

Gate. Candidate and serving model are scored on the same held-out samples; the serving model counts an
unknown label or a prefix with no known item as a miss (it could not have answered), the candidate knows
every item of the window. Publish when candidate >= serving - tolerance on the gate metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.data.dataset import SessionData
from model.data.sessions import Sessions, prefix_samples, split_last
from model.data.vocab import ItemVocab
from model.errors import DataError
from model.lifecycle.experiment import epoch_field, evaluate_model, fit_model, make_model, remap_test
from model.models.base import Recommender
from model.models.zoo import model_class
from model.training.params import params_to_dict


def log_to_data(
    records: Sequence[dict[str, Any]],
    base: ItemVocab | None = None,
    holdout_fraction: float = 0.1,
    after: float | None = None,
) -> SessionData:
    """Sessions with two or more clicks, oldest last click first; a vocabulary extending `base`. With
    `after` (the serving model's newest training click), only sessions ending later are held out."""
    usable = [r for r in records if len(r["items"]) >= 2]
    if len(usable) < 10:
        raise DataError(f"{len(usable)} logged sessions with two or more clicks: too few to train on")
    last = np.array([(r.get("timestamps") or [0.0])[-1] or 0.0 for r in usable], dtype=np.float64)
    order = np.argsort(last, kind="stable")
    usable, last = [usable[i] for i in order], last[order]
    ids = [str(i) for r in usable for i in r["items"]]
    vocab = base.extend(ids) if base is not None else ItemVocab.from_ids(ids)
    sessions = Sessions.from_lists([vocab.lookup(r["items"]) for r in usable])
    _, newest = split_last(sessions, holdout_fraction)
    held = np.arange(len(sessions)) >= len(sessions) - len(newest)
    if after is not None:
        held &= last > after
        if not held.any():
            raise DataError(
                f"no logged session ends after the serving model's newest training click ({after:.0f}): "
                "nothing it has not learnt from to gate on"
            )
    train, test = sessions.select(np.flatnonzero(~held)), sessions.select(np.flatnonzero(held))
    until = float(last[~held].max()) if (~held).any() else None
    return SessionData("session-log", vocab, train, prefix_samples(test), test, until=until)


def warm_start(new: Recommender, old: Recommender) -> int:
    """Copy `old`'s weights into `new` (whose vocabulary extends old's); returns how many tensors moved."""
    src, dst = old.state_tensors(), new.state_tensors()
    moved = 0
    with torch.no_grad():
        for name, target in dst.items():
            source = src.get(name)
            if source is None:
                continue
            if source.shape == target.shape:
                target.copy_(source)
            elif source.shape[1:] == target.shape[1:] and source.shape[0] == old.n_items + 1:
                target[: source.shape[0]].copy_(source)  # item rows: known items keep theirs
            else:
                continue
            moved += 1
    return moved


def train_candidate(
    name: str,
    data: SessionData,
    *,
    serving: Recommender | None = None,
    warm: bool = True,
    epochs: int | None = None,
    sets: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[Recommender, dict[str, Any]]:
    """A model of kind `name` trained on `data.train`, warm-started from `serving` when it is the same
    kind, with the serving model's hyperparameters (`sets` override them). Early stopping is left to the
    gate: the held-out split is the newest data and stays unseen."""
    defaults = model_class(name).Params()
    sets = (
        {"valid_fraction": 0.0, **(sets or {})} if hasattr(defaults, "valid_fraction") else dict(sets or {})
    )
    warm = warm and serving is not None and serving.name == name
    config = params_to_dict(serving.params) if warm and serving is not None else None
    epochs = epochs if epoch_field(defaults) else None  # kNN and popularity models have none
    model = make_model(name, data, config=config, sets=sets, epochs=epochs, device=device)
    history: dict[str, Any] = {"warm_start": False}
    if warm and serving is not None and hasattr(model, "net"):  # learnt weights (kNN and pop refit)
        moved = warm_start(model, serving)
        history["warm_start"] = moved == len(model.state_tensors())
        history["warm_tensors"] = moved
    history.update(fit_model(model, data, progress=progress))
    return model, history


@dataclass(frozen=True)
class GateResult:
    publish: bool
    metric: str
    candidate: float
    serving: float | None
    tolerance: float
    candidate_metrics: dict[str, Any]
    serving_metrics: dict[str, Any] | None


def gate(
    candidate: Recommender,
    serving: Recommender | None,
    data: SessionData,
    metric: str = "mrr@20",
    tolerance: float = 0.005,
) -> GateResult:
    """Score both models on `data`'s held-out samples; publish when candidate >= serving - tolerance."""
    ks = sorted({10, 20, int(metric.split("@")[1])})
    cand = evaluate_model(candidate, data, ks)
    if serving is None:
        return GateResult(True, metric, cand[metric], None, tolerance, cand, None)
    if serving.vocab.ids != data.vocab.ids:
        mapped, misses = remap_test(data, serving.vocab)
        serv = evaluate_model(serving, mapped, ks, extra_misses=misses) if len(mapped.test) else None
        serv = serv or {metric: 0.0, "n": misses}
    else:
        serv = evaluate_model(serving, data, ks)
    return GateResult(
        cand[metric] >= serv[metric] - tolerance, metric, cand[metric], serv[metric], tolerance, cand, serv
    )
