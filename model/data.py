"""A data set as every model sees it: vocabulary, training sessions and the test samples.

`load_data` auto-detects the three formats of the contract (see `model.readers`). Training sessions are
kept in time order, so a validation split is always "the most recent sessions", never a random shuffle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import DataError
from model.sessions import Samples, Sessions, prefix_samples, split_last
from model.vocab import ItemVocab

FORMATS = ("srgnn", "events", "diginetica")


@dataclass(frozen=True)
class SessionData:
    name: str
    vocab: ItemVocab
    train: Sessions
    test: Samples
    test_sessions: Sessions | None = None  # where the source has whole test sessions (event formats)

    def fingerprint(self) -> str:
        """A short content hash (items and session boundaries), recorded in checkpoints."""
        h = hashlib.sha256()
        for arr in (self.train.offsets, self.train.items, self.test.starts, self.test.ends, self.test.labels):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

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


def load_data(path: str | Path, fmt: str | None = None) -> SessionData:
    from model import readers

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    fmt = fmt or readers.detect_format(p)
    if fmt == "srgnn":
        return readers.read_srgnn_folder(p)
    if fmt == "events":
        return readers.read_events(p)
    if fmt == "diginetica":
        return readers.read_diginetica_raw(p)
    raise DataError(f"{p}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
