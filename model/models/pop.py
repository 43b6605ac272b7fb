"""Popularity: every session gets the items clicked most often in training. The floor every model must beat."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model.data.sessions import Samples, Sessions
from model.models.base import Recommender


class Pop(Recommender):
    name = "pop"

    def fit(self, train: Sessions, valid: Samples | None = None, *, progress: bool = False) -> dict[str, Any]:
        counts = np.bincount(train.items, minlength=self.n_items + 1).astype(np.float32)
        self.popularity = torch.from_numpy(counts / max(counts.max(), 1.0))
        return {"events": train.n_events}

    def score(self, sessions: Sequence[np.ndarray]) -> torch.Tensor:
        return self.popularity.unsqueeze(0).expand(len(sessions), -1)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"popularity": self.popularity}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.popularity = tensors["popularity"].float()
