"""Session-based kNN: SKNN and V-SKNN (Ludewig & Jannach, "Evaluation of session-based recommendation
algorithms", 2018), with sparse matrices instead of per-session Python loops.

The current session s is compared with every training session n (no candidate sampling: the sparse product
with all sessions is cheap). V-SKNN weights the clicks of s by their position, linear decay as in the
session-rec reference (`weighting='div'`): the i-th of L clicks weighs i / L, so the last click weighs 1;
SKNN weighs every click 1. A repeated item adds up the weights of its clicks; on Tmall that is worth
2 points of MRR@20 over keeping only the latest click (41.5 / 17.1 against 41.6 / 15.2).

    sim(s, n) = sum_{clicks c of s, item(c) in n} w_s(c) / sqrt(|s| |n|)   (cosine; |.| = distinct items;
                                                                           `vec` drops the sqrt(|n|))
    score(i)  = sum_{n in top-k neighbours of s, i in n} sim(s, n)

With `idf` (session-rec's `idf_weighting`, on by default here) a click also weighs log(N / df(item)), so
rare shared items say more about a neighbour than best-sellers do: Tmall 43.0 / 17.6 against 41.5 / 17.1
without it, Diginetica 51.6 / 18.3 against 51.2 / 18.2 (Recall@20 / MRR@20, %).

Neighbours among recent sessions (`sample`, VMIS-kNN's m in Serenade, Kersbergen et al. 2022): a click of
s meets only the `sample` most recent training sessions holding its item (the sessions are in time order),
so a best-seller's neighbours are its latest buyers, not any of thousands, and a query's cost stays
bounded however long the history grows. Chosen on the validation split (newest 10 % of training
sessions, `scripts/tune.py --model vsknn --grid sample=...`): 50 gave Recall@20 / MRR@20 42.04 / 21.08 on
Tmall and 49.57 / 17.61 on Diginetica against 41.79 / 20.96 and 48.98 / 17.46 searching all (25: 42.32 /
21.37 and 49.11 / 17.64; 100: 41.84 / 20.98 and 49.35 / 17.51). On these catalogues few items hold more
than 50 sessions (Tmall's index loses 2 % of its entries), so the call is not faster here (BENCHMARKS.md).

Items no neighbour contains all score 0; popularity breaks ties among equal scores (a tiny term far below
the smallest positive score of the row), so the conservative tie rule of `model.metrics` does not punish
items that kNN leaves unordered.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from model.data.sessions import Samples, Sessions
from model.models.base import Recommender

TIE_BREAK = 1e-4  # popularity term, relative to the smallest positive score of the row


@dataclasses.dataclass
class KnnParams:
    k: int = 100  # neighbours
    similarity: str = "cosine"  # cosine | vec (dot product / |s|, session-rec's `vec`)
    decay: bool = True  # linear position decay of the current session (V-SKNN); False = SKNN
    idf: bool = (
        True  # weigh each click by log(n_sessions / sessions with the item), session-rec's idf_weighting
    )
    # neighbours only among each item's `sample` most recent sessions (0: all; Serenade's m); checkpoints
    # from before it: all
    sample: int = dataclasses.field(default=50, metadata={"before": 0})


def top_k_per_row(rows: np.ndarray, values: np.ndarray, tie: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest values of each row (rows sorted ascending; equal values: smaller `tie`
    first). Only the entries at or above each row's k-th value are sorted, not the whole row."""
    if len(rows) == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    threshold = np.full(len(rows), -np.inf, dtype=np.float64)
    for start, end in zip(starts, ends, strict=True):
        if end - start > k:
            row = values[start:end]
            threshold[start:end] = np.partition(row, end - start - k)[end - start - k]
    near = np.flatnonzero(values >= threshold)
    order = near[np.lexsort((tie[near], -values[near], rows[near]))]
    rank = np.arange(len(order)) - np.searchsorted(rows[order], rows[order], side="left")
    return order[rank < k]


def positions_in_rows(counts: np.ndarray) -> np.ndarray:
    """Each entry's 0-based position within its row, for rows of `counts` entries laid out one after
    another (a CSR matrix's data, a batch's concatenated sessions)."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def most_recent_per_row(m: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Each row's `keep` entries with the largest column indices (sessions are in time order: the most
    recent), as VMIS-kNN's item index of recent sessions (Kersbergen et al. 2022, "Serenade")."""
    m.sort_indices()
    counts = np.diff(m.indptr)
    kept = positions_in_rows(counts) >= np.repeat(counts - keep, counts)
    indptr = np.r_[0, np.cumsum(np.minimum(counts, keep))]
    return sp.csr_matrix((m.data[kept], m.indices[kept], indptr), shape=m.shape)


class SessionKnn(Recommender):
    name = "vsknn"
    Params = KnnParams

    def fit(self, train: Sessions, valid: Samples | None = None, *, progress: bool = False) -> dict[str, Any]:
        if self.params.similarity not in ("cosine", "vec"):
            from model.errors import UserError

            raise UserError(f"similarity must be cosine or vec, not {self.params.similarity!r}")
        self.session_offsets = train.offsets
        self.session_items = train.items
        self._index()
        return {"sessions": len(train)}

    def with_sessions(self, extra: Sequence[np.ndarray]) -> SessionKnn:
        """A copy that also holds `extra` (sessions newer than the rest, as item indices): the index `fit`
        makes on all of them. The worker's way to learn from closed sessions between retrains
        (`stream.worker.learning`)."""
        new = copy.copy(self)
        new.fit(Sessions(self.session_offsets, self.session_items).appended(extra))
        return new

    def _index(self) -> None:
        """Session x item incidence (binary) and its transpose, scaled for the similarity."""
        n_sessions = len(self.session_offsets) - 1
        rows = np.repeat(np.arange(n_sessions), np.diff(self.session_offsets))
        m = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, self.session_items)),
            shape=(n_sessions, self.n_items + 1),
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        self.incidence = m
        if self.params.similarity == "cosine":
            distinct = np.diff(m.indptr).astype(np.float32)
            m_scaled = sp.csr_matrix(m.multiply((1.0 / np.sqrt(np.maximum(distinct, 1.0)))[:, None]))
        else:
            m_scaled = m
        self.item_sessions = m_scaled.T.tocsr().astype(np.float32)
        df = np.diff(self.item_sessions.indptr).astype(np.float64)
        self.idf = np.log(n_sessions / np.maximum(df, 1.0)).astype(np.float32)
        if self.params.sample > 0:
            self.item_sessions = most_recent_per_row(self.item_sessions, self.params.sample)
        pop = np.bincount(self.session_items, minlength=self.n_items + 1).astype(np.float64)
        self.popularity = pop / max(pop.max(), 1.0)
        # items by popularity, equal counts by index; never the padding column
        self.popular_order = np.lexsort((np.arange(1, self.n_items + 1), -pop[1:])) + 1

    def _query(self, sessions: Sequence[np.ndarray]) -> sp.csr_matrix:
        """Weighted current-session vectors, w = position / length (or 1); a repeated item adds up its
        clicks' weights (the session is a sequence, not a set). The query's own norm is left out: it scales
        a whole row and changes no ranking."""
        lengths = np.array([len(s) for s in sessions], dtype=np.int64)
        items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
        rows = np.repeat(np.arange(len(sessions)), lengths)
        position = positions_in_rows(lengths) + 1
        w = position / np.repeat(lengths, lengths) if self.params.decay else np.ones(len(items))
        if self.params.idf:
            w = w * self.idf[items]
        q = sp.csr_matrix((w, (rows, items)), shape=(len(sessions), self.n_items + 1))  # sums duplicates
        return q.astype(np.float32)

    def _top_neighbours(self, sim: sp.csr_matrix) -> sp.csr_matrix:
        """Keep the k most similar sessions of every row (ties: the more recent session first)."""
        rows = np.repeat(np.arange(sim.shape[0]), np.diff(sim.indptr))
        keep = top_k_per_row(rows, sim.data, -sim.indices, self.params.k)
        return sp.csr_matrix((sim.data[keep], (rows[keep], sim.indices[keep])), shape=sim.shape)

    def neighbourhood_scores(self, sessions: Sequence[np.ndarray]) -> sp.csr_matrix:
        """score(i) above as a sparse (B, n_items + 1) matrix: only items some neighbour holds appear."""
        sim = self._query(sessions) @ self.item_sessions  # (B, n_sessions)
        scores = (self._top_neighbours(sim.tocsr()) @ self.incidence).tocsr()
        scores.sort_indices()
        return scores

    def score(self, sessions: Sequence[np.ndarray]) -> torch.Tensor:
        scores = self.neighbourhood_scores(sessions).toarray()
        positive = np.where(scores > 0, scores, np.inf).min(axis=1, keepdims=True)
        positive = np.where(np.isfinite(positive), positive, 1.0)
        scores += (TIE_BREAK * positive) * self.popularity[None, :]
        return torch.from_numpy(scores.astype(np.float32))

    @torch.inference_mode()
    def recommend(
        self, sessions: Sequence[np.ndarray], k: int = 20, exclude_seen: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`score`'s top k without its dense (B, n_items + 1) rows (the worker's path): the row's
        neighbourhood items by score plus their popularity term, then, where fewer than k, the most popular
        other items, which `score` ranks right below them (the term is below the row's smallest positive
        score) with the same values. Equal values: the smaller item index first. Building and sorting the
        dense rows was 80 % of a call (Tmall, 64 sessions: 13.4 ms, the neighbourhood 2.7 ms) and grows
        with the catalogue; this does not."""
        if exclude_seen:
            return super().recommend(sessions, k, exclude_seen)
        k = min(k, self.n_items)
        scores = self.neighbourhood_scores(sessions)
        counts = np.diff(scores.indptr)
        rows = np.repeat(np.arange(len(sessions)), counts)
        positive = np.ones(len(sessions))  # as in `score`: the smallest positive score of the row, or 1
        has = counts > 0
        positive[has] = np.minimum.reduceat(scores.data, scores.indptr[:-1][has])
        tie = TIE_BREAK * positive
        values = scores.data.astype(np.float64) + tie[rows] * self.popularity[scores.indices]
        keep = top_k_per_row(rows, values, scores.indices, k)
        out_items = np.zeros((len(sessions), k), dtype=np.int64)
        out_values = np.zeros((len(sessions), k), dtype=np.float64)
        taken = np.minimum(counts, k)
        column = positions_in_rows(taken)
        out_items[rows[keep], column] = scores.indices[keep]
        out_values[rows[keep], column] = values[keep]
        for row in np.flatnonzero(taken < k):  # short of neighbourhood items: fill by popularity
            n = int(taken[row])
            held = set(scores.indices[scores.indptr[row] : scores.indptr[row + 1]].tolist())
            fill = [i for i in self.popular_order[: k + len(held)].tolist() if i not in held][: k - n]
            out_items[row, n:] = fill
            out_values[row, n:] = tie[row] * self.popularity[fill]
        return torch.from_numpy(out_items), torch.from_numpy(out_values.astype(np.float32))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "session_offsets": torch.from_numpy(self.session_offsets),
            "session_items": torch.from_numpy(self.session_items),
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.session_offsets = tensors["session_offsets"].numpy().astype(np.int64)
        self.session_items = tensors["session_items"].numpy().astype(np.int64)
        if self.session_items.size and (
            self.session_items.max() > self.n_items or self.session_items.min() < 1
        ):
            raise ValueError("session items fall outside the vocabulary")
        self._index()


class Sknn(SessionKnn):
    """SKNN: V-SKNN without the position decay."""

    name = "sknn"

    @dataclasses.dataclass
    class Params(KnnParams):
        decay: bool = False
        idf: bool = False
        sample: int = 0
