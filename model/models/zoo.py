"""Model names as the CLI, the stream and checkpoints spell them -> their classes (imported on demand)."""

from __future__ import annotations

import importlib

from model.errors import UserError
from model.models.base import Recommender

MODELS: dict[str, str] = {
    "pop": "model.models.pop:Pop",
    "sknn": "model.models.knn:Sknn",
    "vsknn": "model.models.knn:SessionKnn",
    "srgnn": "model.models.srgnn:SRGNNRecommender",
    "gru4rec": "model.models.gru4rec:GRU4RecRecommender",
    "mtaw": "model.models.mtaw:MTAWRecommender",
    "rerank": "model.models.rerank:KnnReranker",
}


def model_class(name: str) -> type[Recommender]:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    module, attr = MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)
