"""Model names as the CLI, the stream and checkpoints spell them -> their classes (imported on demand)."""

from __future__ import annotations

import importlib

from model.base import Recommender
from model.errors import UserError

MODELS: dict[str, str] = {
    "pop": "model.pop:Pop",
    "sknn": "model.knn:Sknn",
    "vsknn": "model.knn:SessionKnn",
    "srgnn": "model.srgnn:SRGNNRecommender",
    "gru4rec": "model.gru4rec:GRU4RecRecommender",
    "mtaw": "model.mtaw:MTAWRecommender",
}


def model_class(name: str) -> type[Recommender]:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    module, attr = MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)
