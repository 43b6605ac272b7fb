"""Sessions and next-item samples as compact numpy arrays.

Every data source ends up here: `Sessions` holds sessions in CSR form (an `offsets` array of n+1 positions
into one flat `items` array), with optional per-event timestamps and per-session user indices. `Samples`
holds (prefix -> next item) pairs as (start, end) windows into an items array, so SR-GNN-style prefix
augmentation of 350k samples costs a few int arrays instead of 350k Python lists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sessions:
    offsets: np.ndarray  # int64, shape (n + 1,), offsets[0] == 0
    items: np.ndarray  # int64 dense item indices (>= 1), shape (offsets[-1],)
    times: np.ndarray | None = None  # float64 epoch seconds per event
    users: np.ndarray | None = None  # int64 user index per session, -1 = anonymous

    @classmethod
    def from_lists(
        cls, sessions: Sequence[Sequence[int]], times: Sequence[Sequence[float]] | None = None
    ) -> Sessions:
        lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
        offsets = np.zeros(len(sessions) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((i for s in sessions for i in s), dtype=np.int64, count=int(offsets[-1]))
        flat_times = None
        if times is not None:
            flat_times = np.fromiter((t for s in times for t in s), dtype=np.float64, count=int(offsets[-1]))
        return cls(offsets, flat, flat_times)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        return self.items[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def appended(self, extra: Sequence[np.ndarray]) -> Sessions:
        """These sessions, then `extra` (item indices, newest last); without times or users."""
        more = Sessions.from_lists(extra)
        return Sessions(
            np.r_[self.offsets, self.offsets[-1] + more.offsets[1:]], np.r_[self.items, more.items]
        )

    def session_of_event(self) -> np.ndarray:
        """For each event, the index of its session."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def select(self, idx: np.ndarray) -> Sessions:
        """The sessions at positions idx (a boolean mask or index array), in that order."""
        idx = np.flatnonzero(idx) if idx.dtype == bool else np.asarray(idx, dtype=np.int64)
        lengths = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # gather positions of every event of the selected sessions, vectorised
        starts = np.repeat(self.offsets[idx] - offsets[:-1], lengths)
        pos = starts + np.arange(offsets[-1], dtype=np.int64)
        return Sessions(
            offsets,
            self.items[pos],
            None if self.times is None else self.times[pos],
            None if self.users is None else self.users[idx],
        )

    def filter_events(self, keep: np.ndarray, min_length: int = 1) -> Sessions:
        """Drop the events where keep is False, then the sessions left shorter than min_length."""
        session = self.session_of_event()[keep]
        lengths = np.bincount(session, minlength=len(self))
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        kept = Sessions(
            offsets, self.items[keep], None if self.times is None else self.times[keep], self.users
        )
        return kept.select(lengths >= min_length) if min_length > 0 else kept

    def to_lists(self) -> list[list[int]]:
        return [s.tolist() for s in self]


@dataclass(frozen=True)
class Samples:
    """Next-item samples: the prefix items[starts[j]:ends[j]] is followed by labels[j]."""

    items: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def prefix(self, j: int) -> np.ndarray:
        return self.items[self.starts[j] : self.ends[j]]

    def prefixes(self, idx: np.ndarray | range) -> list[np.ndarray]:
        items, starts, ends = self.items, self.starts, self.ends
        return [items[starts[j] : ends[j]] for j in idx]

    def batches(
        self, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None
    ) -> Iterator[np.ndarray]:
        """Index arrays of consecutive (or shuffled) mini-batches."""
        order = (rng or np.random.default_rng()).permutation(len(self)) if shuffle else np.arange(len(self))
        for i in range(0, len(order), batch_size):
            yield order[i : i + batch_size]

    def select(self, idx: np.ndarray) -> Samples:
        return Samples(self.items, self.starts[idx], self.ends[idx], self.labels[idx])

    @classmethod
    def from_lists(cls, prefixes: Sequence[Sequence[int]], labels: Sequence[int]) -> Samples:
        packed = Sessions.from_lists(prefixes)
        return cls(packed.items, packed.offsets[:-1], packed.offsets[1:], np.asarray(labels, dtype=np.int64))


def prefix_samples(sessions: Sessions, max_prefix: int | None = None) -> Samples:
    """SR-GNN-style augmentation: a session (i1..iL) gives the samples (i1..it) -> i(t+1) for t = 1..L-1.

    Samples are ordered by session, then by prefix length. max_prefix caps a prefix at its last
    max_prefix items (the window slides, the label stays)."""
    session = sessions.session_of_event()
    pos = np.arange(sessions.n_events, dtype=np.int64)
    first = sessions.offsets[:-1][session]
    is_target = pos > first
    ends = pos[is_target]
    starts = first[is_target]
    if max_prefix is not None:
        starts = np.maximum(starts, ends - max_prefix)
    return Samples(sessions.items, starts, ends, sessions.items[is_target])


def split_last(sessions: Sessions, fraction: float) -> tuple[Sessions, Sessions]:
    """Time-ordered split: the last `fraction` of the sessions (they are stored in time order) is held out."""
    n_held = round(len(sessions) * fraction)
    n_held = min(max(n_held, 1), len(sessions) - 1) if len(sessions) > 1 else 0
    cut = len(sessions) - n_held
    index = np.arange(len(sessions))
    return sessions.select(index[:cut]), sessions.select(index[cut:])
