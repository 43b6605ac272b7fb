"""A data set as every model sees it: vocabulary, training sessions and the test samples.

Training sessions are kept in time order, so a validation split is always "the most recent sessions",
never a random shuffle. The readers (`model.data.readers`) build it; `model.data.load` picks the reader.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from model.data.sessions import Samples, Sessions, prefix_samples, split_last
from model.data.vocab import ItemVocab


@dataclass(frozen=True)
class SessionData:
    name: str
    vocab: ItemVocab
    train: Sessions
    test: Samples
    test_sessions: Sessions | None = None  # where the source has whole test sessions (event formats)
    # the newest click of the training sessions (event time), where `train` carries no times
    until: float | None = None

    def train_until(self) -> float | None:
        """The newest click of the training sessions (event time), where known, and never later than now.
        Checkpoints record it, so that the trainer gates the next candidate only on sessions this model
        has not learnt from; capped at the clock, so that a data set in milliseconds or a producer's clock
        running fast cannot hold every later session back from the gate."""
        newest = self.until
        if newest is None and self.train.times is not None and self.train.n_events:
            newest = float(self.train.times.max())
        return min(newest, time.time()) if newest is not None else None

    def fingerprint(self) -> str:
        """A short content hash (items and session boundaries), recorded in checkpoints."""
        h = hashlib.sha256()
        for arr in (self.train.offsets, self.train.items, self.test.starts, self.test.ends, self.test.labels):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def record(self) -> dict[str, str | float | None]:
        """What a checkpoint records of the data it learnt from (`meta.json`'s data): one place for the
        fields every writer (`nextclick train`, the trainer, the demo) gives, the trainer's gate reading
        `trained_until`."""
        return {"name": self.name, "fingerprint": self.fingerprint(), "trained_until": self.train_until()}

    def train_valid(self, valid_fraction: float = 0.1) -> tuple[Sessions, Samples]:
        """The older (1 - valid_fraction) of the training sessions to fit on, and the newest ones as
        validation samples (early stopping, model selection): the test split is never looked at."""
        fit, held = split_last(self.train, valid_fraction)
        return fit, prefix_samples(held)

    def summary(self) -> dict[str, int | str]:
        return {
            "data": self.name,
            "items": self.vocab.n_items,
            "train_sessions": len(self.train),
            "train_events": self.train.n_events,
            "test_samples": len(self.test),
        }
