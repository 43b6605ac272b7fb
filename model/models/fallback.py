"""The answer for a visitor the model cannot score: the training data's recent popularity.

A session whose items the model never saw (a new visitor's first click on a new item, or any session of
a model with no items in common) gets this list. It is part of every checkpoint (`meta.json`,
`"fallback"`), made from the training data whenever a model is fitted (`model.lifecycle.experiment.fit_model`), so a
checkpoint however it is made (`nextclick train`, the trainer, `nextclick model publish`) carries it.

Recent, not all-time: shops and news sites change what is popular by the day, so the counts come from the
newest part of the training sessions (they are in time order). How recent is chosen on a validation
split, never on a test split: each window (a share of the newest fit sessions) ranks items by its click
counts, ties broken by all-time counts, and the one whose top 20 best predicts the clicks of the newest
10 % of training sessions (MRR@20 over every click) wins; the list is then counted again on the same
share of all training sessions. Scores are each item's share of the window's clicks: real numbers a
client may threshold, not invented ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.data.sessions import Sessions, split_last
from model.data.vocab import ItemVocab

WINDOWS = (1.0, 0.5, 0.25, 0.1, 0.05, 0.02)  # shares of the newest training sessions tried
LIST_LENGTH = 100  # items kept; a worker serves the first k


@dataclass(frozen=True)
class Fallback:
    items: list[str]  # external item ids, most popular first
    scores: list[float]  # each item's share of the window's clicks
    window: float  # share of the newest training sessions the counts come from

    @property
    def label(self) -> str:
        return f"popularity over the newest {self.window:.0%} of training sessions"

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "scores": self.scores, "window": self.window, "label": self.label}

    @classmethod
    def from_json(cls, value: Any) -> Fallback:
        """Raises ValueError for anything but what `to_json` writes (older checkpoints held a bare list)."""
        if not isinstance(value, dict):
            raise ValueError(f"expected an object with items and scores, got {type(value).__name__}")
        items, scores, window = value.get("items"), value.get("scores"), value.get("window")
        if not isinstance(items, list) or not isinstance(scores, list) or len(items) != len(scores):
            raise ValueError("items and scores must be lists of the same length")
        if not items or not isinstance(window, int | float):
            raise ValueError("empty list or no window")
        return cls([str(i) for i in items], [float(s) for s in scores], float(window))


def window_clicks(sessions: Sessions, n_items: int, window: float) -> np.ndarray:
    """Each item's clicks (index 0 the padding) in the newest `window` share of `sessions` (time order;
    at least the newest session, all of them at 1.0)."""
    start = sessions.offsets[len(sessions) - max(1, round(window * len(sessions)))]
    return np.bincount(sessions.items[start:], minlength=n_items + 1)


def _ranking(sessions: Sessions, n_items: int, window: float) -> tuple[np.ndarray, np.ndarray]:
    """Items (indices >= 1) ranked by clicks in the newest `window` of `sessions`, ties by all clicks;
    and the window's click counts."""
    everything = np.bincount(sessions.items, minlength=n_items + 1)
    recent = window_clicks(sessions, n_items, window)
    order = np.lexsort((-everything[1:], -recent[1:])) + 1  # the last key sorts first
    return order, recent


def _mrr_at_20(top: np.ndarray, labels: np.ndarray, n_items: int) -> float:
    position = np.zeros(n_items + 1)
    position[top[:20]] = np.arange(1, min(20, len(top)) + 1)
    ranks = position[labels]
    return float(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0).mean()) if len(labels) else 0.0


def choose_window(train: Sessions, n_items: int, valid_fraction: float = 0.1) -> float:
    """The window whose ranking of the older sessions best predicts the newest `valid_fraction`'s clicks
    (the widest among equals); all of them when there are too few sessions to hold any out."""
    if len(train) < 20:
        return 1.0
    fit, held = split_last(train, valid_fraction)
    scored = [(_mrr_at_20(_ranking(fit, n_items, w)[0], held.items, n_items), w) for w in WINDOWS]
    best = max(score for score, _ in scored)
    return max(w for score, w in scored if score == best)


def recent_popularity(train: Sessions, vocab: ItemVocab, n: int = LIST_LENGTH) -> Fallback:
    window = choose_window(train, vocab.n_items)
    order, recent = _ranking(train, vocab.n_items, window)
    top = order[:n]
    total = max(int(recent.sum()), 1)
    return Fallback(vocab.decode(top), [float(recent[i]) / total for i in top], window)
