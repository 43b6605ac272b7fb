"""What every recommender offers, so training, evaluation, checkpoints and the stream treat them alike.

A model scores a batch of sessions (arrays of item indices, oldest click first, unknown items already
removed) against every item; `recommend` turns that into top-k lists. The heavy state of a model lives in
named tensors (saved with safetensors), its hyperparameters in a dataclass (saved as JSON).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from model.data.sessions import Samples, Sessions
from model.data.vocab import ItemVocab
from model.models.fallback import Fallback


@dataclasses.dataclass
class NoParams:
    pass


class Recommender:
    name: ClassVar[str] = "base"
    Params: ClassVar[type] = NoParams

    def __init__(self, vocab: ItemVocab, params: Any = None, device: torch.device | str = "cpu") -> None:
        self.vocab = vocab
        self.params = params if params is not None else self.Params()
        self.device = torch.device(device)
        # the answer for sessions it cannot score, set when it is fitted (`model.lifecycle.experiment.fit_model`)
        self.fallback: Fallback | None = None

    @property
    def n_items(self) -> int:
        return self.vocab.n_items

    # -- to be provided by each model -------------------------------------------------------------------
    def fit(self, train: Sessions, valid: Samples | None = None, *, progress: bool = False) -> dict[str, Any]:
        """Learn from the training sessions; valid (if given) may be used for early stopping only.
        Returns a small JSON-able history (epochs, losses, validation scores)."""
        raise NotImplementedError

    def score(self, sessions: Sequence[np.ndarray]) -> torch.Tensor:
        """Scores (B, n_items + 1) for the next item of each session; column 0 (padding) is ignored."""
        raise NotImplementedError

    def score_items(
        self, sessions: Sequence[np.ndarray], rows: np.ndarray, items: np.ndarray
    ) -> torch.Tensor:
        """The score `score` gives item items[j] after session sessions[rows[j]], for every j: models that
        can score a few items without scoring all of them override it."""
        with torch.inference_mode():
            return self.score(sessions)[torch.from_numpy(rows), torch.from_numpy(items)].cpu()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"{self.name} has no tensors but the checkpoint holds {sorted(tensors)[:3]}")

    # -- shared ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def recommend(
        self, sessions: Sequence[np.ndarray], k: int = 20, exclude_seen: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k item indices and their scores for each session, padding (and optionally the session's own
        items) excluded. Sessions must be non-empty; the stream handles empty ones with its fallback."""
        k = min(k, self.n_items)
        if not exclude_seen and (top := self.top_k(sessions, k)) is not None:
            values, items = top
            return items.cpu(), values.float().cpu()
        scores = self.score(sessions)
        if exclude_seen:
            scores = scores.to(torch.float32, copy=True)
            rows = np.repeat(np.arange(len(sessions)), [len(s) for s in sessions])
            cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
            scores[torch.as_tensor(rows), torch.as_tensor(cols)] = -torch.inf
        # column 0 (padding) is left out by slicing: no pass over the (B, n_items) matrix to mask it
        top = torch.topk(scores[:, 1:], k, dim=1)
        return (top.indices + 1).cpu(), top.values.float().cpu()

    def top_k(self, sessions: Sequence[np.ndarray], k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`score`'s k best items as (values, items), for a model that finds them without the (B, n_items
        + 1) matrix (the neural models at a large catalogue); None: `recommend` takes them from `score`."""
        return None

    def to(self, device: torch.device | str) -> Recommender:
        self.device = torch.device(device)
        return self


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when a GPU is present, the CPU everywhere else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from model.errors import UserError

        raise UserError(f"--device {name}: CUDA is not available on this machine (use auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        from model.errors import UserError

        raise UserError(f"--device {name}: expected auto, cpu or cuda[:N]") from None
