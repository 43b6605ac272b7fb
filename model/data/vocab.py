"""Item vocabulary: external item ids (strings) <-> dense indices.

Index 0 is reserved for padding, so real items are 1..n. Unknown ids are never mapped silently to padding:
`lookup` returns -1 for them and each caller decides (the data readers drop them, the stream keeps them in
the session history but hides them from the model).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

PAD = 0
UNKNOWN = -1


class ItemVocab:
    def __init__(self, ids: Sequence[str]) -> None:
        self.ids: list[str] = ["<pad>", *(str(i) for i in ids)]
        self.index: dict[str, int] = {item: i for i, item in enumerate(self.ids) if i != PAD}
        if len(self.index) != len(self.ids) - 1:
            raise ValueError("item ids in a vocabulary must be unique")

    @classmethod
    def from_ids(cls, ids: Iterable[str | int], numeric_order: bool = False) -> ItemVocab:
        """Vocabulary over the distinct ids; numeric_order keeps integer ids sorted so index == id when the
        ids are 1..n (the SR-GNN pickles), which makes our item indices match the papers' item ids."""
        unique = {str(i) for i in ids}
        ordered = sorted(unique, key=int) if numeric_order else sorted(unique)
        return cls(ordered)

    @property
    def n_items(self) -> int:
        """Number of real items (the padding index is not counted)."""
        return len(self.ids) - 1

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, ids: Iterable[str | int]) -> np.ndarray:
        """Dense indices for external ids, -1 (UNKNOWN) where an id is not in the vocabulary."""
        get = self.index.get
        return np.fromiter((get(str(i), UNKNOWN) for i in ids), dtype=np.int64)

    def lookup_array(self, ids: np.ndarray) -> np.ndarray:
        """Vectorised `lookup` for an array of id strings (the readers' hot path)."""
        index = pd.Index(self.ids[1:])
        found = index.get_indexer(pd.Index(ids.astype(str)))
        return np.where(found >= 0, found + 1, UNKNOWN).astype(np.int64)

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.ids[int(i)] for i in indices]

    def extend(self, ids: Iterable[str | int]) -> ItemVocab:
        """A new vocabulary with the unseen ids appended; existing items keep their index (warm starts)."""
        new = [s for s in dict.fromkeys(str(i) for i in ids) if s not in self.index]
        return ItemVocab(self.ids[1:] + new)
