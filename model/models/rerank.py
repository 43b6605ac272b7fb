"""Repeat-aware kNN re-ranker: session-kNN and sequential rules propose, a small learned scorer decides.

Why this shape. On these data sets the next click is often an item the visitor already saw (45 % of Tmall's
test labels occur in their own prefix, 21 % of Diginetica's), and neighbourhood methods beat the neural ones
(Ludewig et al. 2021). V-SKNN knows neither when a visitor returns to an item nor how strongly the last
click points onward. So three cheap sources propose candidates for the next item of a session s:

- V-SKNN (`model.models.knn`, k neighbours, idf, linear position decay, neighbours among each item's
  `knn_sample` most recent sessions): knn(i), its `knn_candidates` best;
- sequential rules (Ludewig & Jannach 2018, "SR"): rules(a, b) = sum over training sessions of 1 / d for each
  time b follows a within `rules_steps` clicks at distance d; the `rules_candidates` best after the last
  click of s; also the same rules after the second-to-last click, and d = 1 alone (a Markov chain);
- the session's own items (the RepeatNet idea of a "repeat mode", here as candidates and features).

Each candidate i gets features (`FEATURES`): knn(i) and rules(last, i) scaled by their row maximum (and
their square roots), markov(last, i), rules(second-to-last, i), how often i occurs in s (log1p), 1 / the
clicks since its latest occurrence, whether it is the last click, whether it occurs at all, its training
popularity (log, scaled), and two facts of the session: log of its length and its share of repeated clicks.
A two-layer MLP maps them to a score, trained listwise: a softmax over each sample's candidates,
cross-entropy on the true next item (samples whose next item is no candidate are skipped in training and
count as misses in evaluation).

Training without touching a test split. `fit` holds out the newest `rerank_fraction` of the training sessions
(time order), indexes the older ones, and turns the held-out sessions' prefixes into the scorer's training
samples: the features are then computed exactly as they will be at serving time, from sessions the index
has not seen. The oldest (1 - `dev_fraction`) of those samples train the scorer, the newest `dev_fraction`
choose the epoch (early stopping on Recall@20 + MRR@20, as the neural models do). Finally the index is
rebuilt on all training sessions; the scorer keeps its weights. Its features are scaled per session (row
maxima), so the larger index at serving time shifts them little.

Full ranking. Every item gets a score: candidates the scorer's, every other item less than the lowest
candidate of its row, ordered among themselves by training popularity. The output of one session never
depends on another in its batch (all features are per session).

`knn_sample=50` is V-SKNN's own default, chosen on validation there; on the scorer's dev samples it ties
with searching all sessions: Diginetica 53.03 / 20.38 against 52.69 / 20.20, Tmall 52.69 / 27.76 against
52.60 / 27.85, YOOCHOOSE sample 65.00 / 34.25 against 65.17 / 34.56 (BENCHMARKS.md), so one V-SKNN serves
in every model.

The trend group (`trend`, in the default): each candidate's popularity among the newest `trend_fraction`
of the indexed sessions (time order), log-scaled like the all-time popularity. Shops' best-sellers move
and the test sessions are the newest; the all-time count cannot tell an item in fashion now from one that
was. It proposes nothing. Chosen on the validation splits (`scripts/tune.py`, BENCHMARKS.md): with
windows of 0.01, 0.05 and 0.2, Recall@20 + MRR@20 rose on all three data sets in all nine runs (by 0.02
to 0.63); 0.2 has the best mean (+0.35).

The embed group (`embed`, not the default: with it the demo's first model, a draw of its seed on ~200
scorer samples, beat every retrain at the gate; over six seeds it swaps as often as without, sessions
22-23): item2vec (Barkan & Koenigstein 2016), skip-gram with negative
sampling over the sessions as sentences (gensim's Word2Vec; one worker and a fixed hash, so a fit repeats
to the bit), and each candidate's cosine with the last click and with the session's vector (its items'
unit vectors weighted linearly by position, V-SKNN's decay). kNN and rules count co-occurrence; item2vec
also puts near each other items seen in the same contexts that were never clicked together, part of what
the neural group's MTAW knows from its item table at a fraction of the cost. Like the index it is made on
the older sessions for the scorer's samples and again on all of them at the end (the scorer reads cosines,
not coordinates, so the second space need not match the first). It proposes nothing. Chosen on the
validation splits (`scripts/tune.py`, BENCHMARKS.md): all nine settings tried raised Recall@20 + MRR@20 on
Diginetica (+0.40 to +1.10) and YOOCHOOSE (+0.65 to +1.25), Tmall within its noise (-0.15 to +0.26); 64
dimensions, window 2 and 20 epochs have the best mean (test, Diginetica: 54.06 -> 54.72 Recall@20).

Ablations: `features` names the groups in use (knn, rules, repeat, neural, trend, embed); a group left out gives
no candidates and the scorer does not read its features.

The neural group (`features=knn,rules,repeat,neural`, not the default). A neural model (`neural_model`,
MTAW) proposes its `neural_candidates` best items, and every candidate gets its probability under that
model over the model's first choice's (`neural`, 1 for the first choice) and the same as a log, scaled
(`neural_gap`). The kNN's evidence is co-occurrence; MTAW's is what its attention learnt from whole
sequences, which the neighbourhoods do not hold (on Diginetica the next item was among the candidates for
71 % of dev samples without it, 76 % with its 50). For the scorer's samples it is trained like the index,
on the older sessions only, its epoch chosen (at most `neural_epochs`, stopping at the first epoch without
gain) on the held-out samples that train the scorer, never on dev's. Then more epochs, warm, at the rate
its kept epoch trained at, over the held-out newest sessions, as the index is rebuilt on all (the reason the
neural models refit on all: the newest sessions are most like what it will serve), as many as dev says
help: they are tried one by one over the held-out sessions none of whose samples is in dev, dev is scored
after each with the scorer as trained, and the first one without gain in Recall@20 + MRR@20 ends the
trial; the model then makes the epochs that helped over all the held-out sessions, from its state before
the trial. Before this check one such pass was always made, at MTAW's first rate, with as many epochs as the
older sessions got: with three, dev rose by 1.5 and test fell by 1.2 on Diginetica, which dev could not
see (BENCHMARKS.md).

Its cost is a neural model's training and, per call, its scoring of every item: not the default, where
the 15 ms call of issue #17 rules it out (BENCHMARKS.md). With `neural_candidates=0` the model proposes
nothing and scores the other sources' candidates only (MTAW: its session vector against a few hundred
item vectors, not 40k), each one's feature taken against the best candidate's instead of its own first
choice's: on Diginetica 55.78 / 20.58 against 56.06 / 20.55 (Recall@20 / MRR@20, test; dev before the
last pass 54.78 / 20.99 against 55.54 / 21.10) for 1.25-1.35x the default's call instead of 2.2-2.7x
(BENCHMARKS.md); with the trend group and MTAW allowed a fifth epoch, 55.97 / 20.63 (session 20).
Its float32 scores round differently with the batch's shape, so with it a session's list can differ in
near-ties between batches.

Device: the index and the scorer on the CPU, whatever `--device` says: the work is sparse index look-ups and
a two-layer MLP over a few hundred candidates a session, where a GPU would only add copies. The
neural group's model, whose training is nearly all of the variant's fit, on `--device`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from model.data.sessions import Samples, Sessions, prefix_samples, split_last
from model.data.vocab import ItemVocab
from model.metrics import RankAccumulator
from model.models.base import Recommender
from model.models.fallback import window_clicks
from model.models.knn import KnnParams, SessionKnn, positions_in_rows, top_k_per_row
from model.training.progress import report_epoch

FEATURES = (
    "knn",
    "sqrt_knn",
    "rules",
    "sqrt_rules",
    "markov",
    "rules_second_last",
    "log_count",
    "recency",
    "is_last",
    "in_session",
    "popularity",
    "log_length",
    "repeat_share",
    "neural",
    "neural_gap",
    "recent_popularity",
    "embed_last",
    "embed_session",
)
GROUPS = {
    "knn": ("knn", "sqrt_knn"),
    "rules": ("rules", "sqrt_rules", "markov", "rules_second_last"),
    "repeat": ("log_count", "recency", "is_last", "in_session", "repeat_share"),
    "neural": ("neural", "neural_gap"),
    "trend": ("recent_popularity",),
    "embed": ("embed_last", "embed_session"),
}


@dataclasses.dataclass
class RerankParams:
    k: int = 100  # V-SKNN neighbours
    knn_candidates: int = 100  # best kNN items proposed per session
    # V-SKNN's neighbours among each item's this many most recent sessions (0: all); before it: all
    knn_sample: int = dataclasses.field(default=50, metadata={"before": 0})
    rules_steps: int = 10  # sequential rules: pairs up to this many clicks apart
    rules_candidates: int = 30  # best rule items after the last click proposed per session
    hidden: int = 64  # width of the scorer's two hidden layers
    epochs: int = 30  # at most; the epoch is chosen on the newest dev_fraction of the held-out samples
    patience: int = 3
    lr: float = 1e-3
    batch_size: int = 32  # samples per step (and per featurised chunk): chosen on validation (below)
    rerank_fraction: float = 0.1  # newest training sessions held out to train the scorer on
    dev_fraction: float = 0.2  # newest share of those samples choosing the epoch
    # feature groups in use (ablations); a checkpoint saved without the field: the three before the trend group
    features: str = dataclasses.field(
        default="knn,rules,repeat,trend", metadata={"before": "knn,rules,repeat"}
    )
    neural_model: str = "mtaw"  # the "neural" group's model: it proposes candidates and scores every one
    neural_candidates: int = 50  # its best items proposed per session; 0: it scores the others' only
    # at most: on the older sessions (early stopping), and in the last pass (dev); 4 until Diginetica's MTAW
    # was seen to keep all 4, its validation still rising (with 6 it keeps 5)
    neural_epochs: int = 6
    trend_fraction: float = 0.2  # the "trend" group: popularity among the newest share of indexed sessions
    embed_dim: int = 64  # the "embed" group: item2vec (skip-gram, negative sampling) vectors of this size
    embed_window: int = 2
    embed_epochs: int = 20
    embed_negative_exponent: float = 0.75  # negatives drawn by popularity ** this (word2vec's 0.75)
    seed: int = 42


@dataclasses.dataclass
class Candidates:
    """A batch's candidates, padded: items (B, W), mask (B, W), features (B, W, len(FEATURES))."""

    items: np.ndarray
    mask: np.ndarray
    features: np.ndarray


def sequential_rules(sessions: Sessions, n_items: int, steps: int) -> sp.csr_matrix:
    """(n_items + 1)^2 sparse: rules[a, b] = sum of 1 / d over every b clicked d <= steps clicks after a
    in the same session (the reference SR's `div` weighting)."""
    session = sessions.session_of_event()
    rows, cols, weights = [], [], []
    for d in range(1, steps + 1):
        first = np.flatnonzero(session[:-d] == session[d:]) if sessions.n_events > d else np.empty(0, int)
        rows.append(sessions.items[first])
        cols.append(sessions.items[first + d])
        weights.append(np.full(len(first), 1.0 / d, dtype=np.float32))
    m = sp.csr_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items + 1, n_items + 1),
    )
    m.sum_duplicates()
    return m


def _scaled_entries(m: sp.csr_matrix, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored entries of a (B, width) matrix as sorted keys row * width + column, values / row max."""
    m = m.tocsr()
    m.sort_indices()
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0]), counts)
    row_max = np.zeros(m.shape[0], dtype=np.float32)
    nonempty = counts > 0
    if nonempty.any():
        row_max[nonempty] = np.maximum.reduceat(m.data, m.indptr[:-1][nonempty])
    values = m.data / np.maximum(row_max[rows], 1e-12)
    return rows * width + m.indices, values.astype(np.float32)


def _row_scaled(m: sp.csr_matrix) -> sp.csr_matrix:
    """m (CSR, float32) with every row divided by its largest value, as `_scaled_entries` scales the rows it
    is given: made once at indexing, so a call gathers the rows of its sessions' last clicks as they are."""
    m = m.tocsr()
    m.sort_indices()
    _, values = _scaled_entries(m, m.shape[1])
    return sp.csr_matrix((values, m.indices.copy(), m.indptr.copy()), shape=m.shape)


def _gather_rows(m: sp.csr_matrix, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row rows[j] of m as sorted keys j * width + column and its values, for every j: scipy's fancy row
    indexing and a new matrix per call cost more than the look-up itself."""
    starts = m.indptr[rows]
    counts = m.indptr[rows + 1] - starts
    at = positions_in_rows(counts) + np.repeat(starts, counts)
    return np.repeat(np.arange(len(rows)), counts) * width + m.indices[at], m.data[at]


def _row_top(keys: np.ndarray, values: np.ndarray, width: int, k: int) -> np.ndarray:
    """The keys of the k largest values of each row (ties: the smaller item)."""
    return keys[top_k_per_row(keys // width, values, keys, k)]


def _lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """values at `wanted` keys (0 where absent); keys sorted."""
    if len(keys) == 0:
        return np.zeros(len(wanted), dtype=np.float32)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, values[at], 0.0).astype(np.float32)


def _session_of(sessions: Sessions, samples: Samples, j: int) -> int:
    """The session (index) sample j's label belongs to; len(sessions) past the last sample."""
    if j >= len(samples):
        return len(sessions)
    return int(np.searchsorted(sessions.offsets, samples.ends[j], side="right")) - 1


def _kept_rate(history: dict[str, Any] | None) -> float | None:
    """The learning rate the epoch a model kept trained at, where its history records one (step decay)."""
    epochs = (history or {}).get("epochs") or []
    if not epochs:
        return None
    return epochs[(history.get("best_epoch") or len(epochs)) - 1].get("lr")


def _sorted_unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.unique(keys, return_index=True, return_counts=True) for keys already sorted: numpy's own hashes
    or sorts again (2 ms of a 20 ms call for ~15k candidate keys, against 0.5 ms for a sort)."""
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.empty(0, np.int64)
    return keys[first], first, np.diff(np.r_[first, len(keys)])


def _row_max(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Each row's largest value (-inf for a row without any); rows sorted."""
    out = np.full(n, -np.inf, dtype=values.dtype)
    present, starts, _ = _sorted_unique(rows)
    if len(starts):
        out[present] = np.maximum.reduceat(values, starts)
    return out


def _log_scaled(clicks: np.ndarray) -> np.ndarray:
    """log(1 + clicks) of every item, scaled into [0, 1] by the most clicked one's."""
    pop = clicks.astype(np.float64)
    return (np.log1p(pop) / np.log1p(max(pop.max(), 1.0))).astype(np.float32)


def _stable_hash(word: str) -> int:
    """gensim's seed for a word's initial vector: Python's own str hash changes with each process."""
    return zlib.crc32(word.encode())


def _in_use(feature: str, groups: set[str]) -> bool:
    """Whether the scorer reads a feature: those of no group (popularity, session length) always."""
    return all(g in groups for g, names in GROUPS.items() if feature in names)


def _lowest(scores: torch.Tensor) -> torch.Tensor:
    """Each row's lowest candidate score (0 for a row without candidates): every other item ranks below."""
    lowest = torch.where(scores.isfinite(), scores, torch.inf).min(dim=1).values
    return torch.where(lowest.isfinite(), lowest, 0.0)


EXACT_CHUNK = 4096  # candidates per float64 pass of the scorer when serving (`_candidate_scores`)


class Scorer(nn.Module):
    """Candidate features -> score: Linear, ReLU, Linear, ReLU, Linear."""

    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


class KnnReranker(Recommender):
    name = "rerank"
    Params = RerankParams

    def __init__(self, vocab: ItemVocab, params: RerankParams | None = None, device: str = "cpu") -> None:
        super().__init__(vocab, params, device)
        groups = {g.strip() for g in self.params.features.split(",") if g.strip()}
        if not groups or not groups <= set(GROUPS):
            from model.errors import UserError

            raise UserError(f"features must name some of {', '.join(GROUPS)}, not {self.params.features!r}")
        self.groups = groups
        # the scorer reads the features of the groups in use only (a checkpoint without the neural group
        # keeps its 13 inputs)
        self.active = torch.tensor([i for i, f in enumerate(FEATURES) if _in_use(f, groups)])
        torch.manual_seed(self.params.seed)
        self.net = Scorer(len(self.active), self.params.hidden)
        self.knn: SessionKnn | None = None
        self.item_vectors: np.ndarray | None = None
        self.neural: Recommender | None = None
        if "neural" in groups:
            from model.lifecycle.experiment import epoch_field
            from model.models.zoo import model_class

            cls = model_class(self.params.neural_model)
            params = cls.Params()
            if field := epoch_field(params):  # `epochs`, or GRU4Rec's `n_epochs`
                params = dataclasses.replace(params, **{field: self.params.neural_epochs})
            if hasattr(params, "patience"):  # one epoch without gain ends it: each costs minutes
                params = dataclasses.replace(params, patience=1)
            self.neural = cls(vocab, params, device)

    def to(self, device: torch.device | str) -> KnnReranker:
        super().to(device)
        if self.neural is not None:
            self.neural.to(self.device)
        return self

    # -- the index: kNN, rules, popularity --------------------------------------------------------------
    def _index(self, sessions: Sessions) -> None:
        self.session_offsets, self.session_items = sessions.offsets, sessions.items
        self.knn = SessionKnn(self.vocab, KnnParams(k=self.params.k, sample=self.params.knn_sample))
        self.knn.fit(sessions)
        # rows scaled by their maximum once here; each item's best rule targets too, padded with 0 (no item)
        self.rules = _row_scaled(sequential_rules(sessions, self.n_items, self.params.rules_steps))
        self.markov = _row_scaled(sequential_rules(sessions, self.n_items, 1))
        width = self.n_items + 1
        keys, _ = _gather_rows(self.rules, np.arange(width), width)
        top = _row_top(keys, self.rules.data, width, self.params.rules_candidates)
        counts = np.bincount(top // width, minlength=width)
        self.rules_top = np.zeros((width, max(int(counts.max(initial=0)), 1)), dtype=np.int64)
        self.rules_top[top // width, positions_in_rows(counts)] = top % width
        self.log_popularity = _log_scaled(window_clicks(sessions, self.n_items, 1.0))
        self.popular_order = np.argsort(-self.log_popularity[1:], kind="stable") + 1
        self.log_recent_popularity = _log_scaled(
            window_clicks(sessions, self.n_items, self.params.trend_fraction)
        )

    def with_sessions(self, extra: Sequence[np.ndarray]) -> KnnReranker:
        """A copy whose index also holds `extra` (sessions newer than the rest, as item indices), as `fit`'s
        last step indexes all its sessions; the scorer (and a neural group's model) shared, unchanged. The
        worker's way to learn from closed sessions between retrains (`stream.worker.learning`)."""
        new = copy.copy(self)
        new._index(Sessions(self.session_offsets, self.session_items).appended(extra))
        return new

    # -- candidates and their features ------------------------------------------------------------------
    def candidates(self, sessions: Sequence[np.ndarray]) -> Candidates:
        width = self.n_items + 1
        n = len(sessions)
        lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=n)
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
        ends = np.cumsum(lengths)
        last = flat[ends - 1]
        second_last = np.where(lengths > 1, flat[np.maximum(ends - 2, 0)], 0)

        empty = (np.empty(0, np.int64), np.empty(0, np.float32))
        knn = (
            _scaled_entries(self.knn.neighbourhood_scores(sessions), width) if "knn" in self.groups else empty
        )
        if "rules" in self.groups:
            rules = _gather_rows(self.rules, last, width)
            markov = _gather_rows(self.markov, last, width)
            rules2 = _gather_rows(self.rules, second_last, width)  # row 0 (padding) is empty
        else:
            rules = markov = rules2 = empty
        proposes = self.neural is not None and self.params.neural_candidates > 0
        if proposes:
            with torch.inference_mode():
                logits = self.neural.score(sessions).float().cpu()
                logits[:, 0] = -torch.inf
                top = torch.topk(logits, min(self.params.neural_candidates, self.n_items), dim=1)
            logits = logits.numpy()
            neural_keys = (np.arange(n)[:, None] * width + top.indices.numpy()).ravel()

        # the session's own items: count and the latest position of each
        rows = np.repeat(np.arange(n), lengths)
        keys = rows * width + flat
        position = np.arange(len(flat)) - np.repeat(ends - lengths, lengths)  # 0-based within its session
        order = np.lexsort((position, keys))
        own, first, count = _sorted_unique(keys[order])
        latest = position[order][first + count - 1]
        distance = lengths[own // width] - latest  # 1 = the last click
        repeat = "repeat" in self.groups

        proposed = [_row_top(*knn, width, self.params.knn_candidates)]
        if "rules" in self.groups:  # each last click's best targets, made at indexing; 0s (no item) go below
            proposed.append((np.arange(n)[:, None] * width + self.rules_top[last]).ravel())
        if repeat:
            proposed.append(own)
        if proposes:
            proposed.append(neural_keys)
        cand = _sorted_unique(np.sort(np.concatenate(proposed)))[0]
        cand = cand[cand % width != 0]
        crow = cand // width
        citem = cand % width

        count_f = _lookup(own, count.astype(np.float32), cand)
        dist_f = _lookup(own, distance.astype(np.float32), cand)
        knn_f = _lookup(*knn, cand)
        rules_f = _lookup(*rules, cand)
        distinct = np.bincount(own // width, minlength=n)
        cols = {
            "knn": knn_f,
            "sqrt_knn": np.sqrt(knn_f),
            "rules": rules_f,
            "sqrt_rules": np.sqrt(rules_f),
            "markov": _lookup(*markov, cand),
            "rules_second_last": _lookup(*rules2, cand),
            "log_count": np.log1p(count_f),
            "recency": np.where(dist_f > 0, 1.0 / np.maximum(dist_f, 1.0), 0.0),
            "is_last": (dist_f == 1).astype(np.float32),
            "in_session": (count_f > 0).astype(np.float32),
            "popularity": self.log_popularity[citem],
            "recent_popularity": self.log_recent_popularity[citem],
            "log_length": np.log(lengths[crow].astype(np.float32)),
            "repeat_share": (1.0 - distinct / lengths)[crow].astype(np.float32),
        }
        if self.item_vectors is not None:
            # cosines with the last click and with the session's vector (unit vectors, weighted linearly
            # by position as V-SKNN weighs its items: the last click 1, the first 1 / length)
            # in float64, answered in float32 (as the exact scorer): the same bits in any batch
            v = self.item_vectors
            weight = (position + 1) / np.repeat(lengths, lengths)
            session_v = np.add.reduceat(v[flat] * weight[:, None], ends - lengths, axis=0)
            session_v /= np.maximum(np.sqrt((session_v * session_v).sum(axis=1, keepdims=True)), 1e-12)
            cand_v = v[citem].astype(np.float64)
            cols["embed_last"] = (cand_v * v[last][crow]).sum(axis=1).astype(np.float32)
            cols["embed_session"] = (cand_v * session_v[crow]).sum(axis=1).astype(np.float32)
        else:
            cols["embed_last"] = cols["embed_session"] = np.zeros(len(cand), dtype=np.float32)
        if self.neural is not None:
            # each one's log-probability less the best candidate's: log p(i) - log p(best) = logit(i) -
            # logit(best); where the model proposes, its first choice is a candidate, so the best is that
            logit = (
                logits[crow, citem]
                if proposes
                else self.neural.score_items(sessions, crow, citem).float().numpy()  # no product with all
            )
            g = logit - _row_max(logit, crow, n)[crow]
            cols["neural"] = np.exp(g)
            cols["neural_gap"] = np.maximum(g / 10.0, -2.0)
        else:
            cols["neural"] = cols["neural_gap"] = np.zeros(len(cand), dtype=np.float32)
        features = np.stack([cols[f] for f in FEATURES], axis=1).astype(np.float32)

        per_row = np.bincount(crow, minlength=n)
        w = max(int(per_row.max(initial=0)), 1)
        slot = positions_in_rows(per_row)
        items = np.zeros((n, w), dtype=np.int64)
        mask = np.zeros((n, w), dtype=bool)
        padded = np.zeros((n, w, len(FEATURES)), dtype=np.float32)
        items[crow, slot] = citem
        mask[crow, slot] = True
        padded[crow, slot] = features
        return Candidates(items, mask, padded)

    def _candidate_scores(self, c: Candidates, exact: bool = False) -> torch.Tensor:
        """The scorer on every candidate. With `exact` (serving) it runs in float64 and answers in float32:
        a float32 matrix product rounds differently with the batch's shape, which reorders near-equal
        candidates, so a session would get another list alone than in a batch; float64 rounded to float32
        gives the same bits in every batch. It runs `EXACT_CHUNK` candidates at a time: a float64 layer over
        all of a large batch's candidates outgrows the CPU's caches (256 Tmall sessions, 23k candidates:
        11.8 ms at once, 6.1 ms in chunks of 4,096; the same bits)."""
        mask = torch.from_numpy(c.mask)
        features = torch.from_numpy(c.features)[mask][:, self.active]  # real candidates only, no padding
        if exact:
            weights = {k: v.double() for k, v in self.net.state_dict().items()}
            parts = features.double().split(EXACT_CHUNK)
            scores = torch.cat([functional_call(self.net, weights, (part,)) for part in parts]).float()
        else:
            scores = self.net(features)
        return torch.full(mask.shape, -torch.inf).masked_scatter(mask, scores)

    # -- the Recommender interface ----------------------------------------------------------------------
    def score(self, sessions: Sequence[np.ndarray]) -> torch.Tensor:
        c = self.candidates(sessions)
        with torch.no_grad():
            scores = self._candidate_scores(c, exact=True)
        lowest = _lowest(scores)
        # other items: below the row's lowest candidate, by popularity (log_popularity in [0, 1])
        out = (lowest - 2.0)[:, None] + torch.from_numpy(self.log_popularity)[None, :]
        rows = torch.arange(len(sessions))[:, None].expand_as(scores)
        keep = torch.from_numpy(c.mask)
        out[rows[keep], torch.from_numpy(c.items)[keep]] = scores[keep]
        return out

    @torch.inference_mode()
    def recommend(
        self, sessions: Sequence[np.ndarray], k: int = 20, exclude_seen: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`score`'s top k without its (B, n_items + 1) matrix (the worker's path): the best candidates (equal
        scores by item index) and, in a row with fewer than k of them, the most popular other items, which
        `score` ranks right below the candidates in that order, with the same scores."""
        c = self.candidates(sessions)
        scores = self._candidate_scores(c, exact=True)
        lowest = _lowest(scores)
        if exclude_seen:
            seen = torch.from_numpy(c.features[..., FEATURES.index("in_session")] > 0)
            scores = scores.masked_fill(seen, -torch.inf)
        k = min(k, self.n_items)
        # a stable sort, not topk: equal scores keep the candidates' order (by item), whatever the batch's
        # shape, so a session gets the same list alone and in any batch (topk orders ties by its algorithm)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        items = torch.from_numpy(c.items).gather(1, order)
        values = scores.gather(1, order)
        finite_count = values.isfinite().sum(dim=1)
        if values.shape[1] == k and bool((finite_count == k).all()):
            return items, values
        out_items = torch.zeros((len(sessions), k), dtype=torch.long)
        out_values = torch.full((len(sessions), k), -torch.inf)
        n_full = min(k, values.shape[1])
        out_items[:, :n_full], out_values[:, :n_full] = items[:, :n_full], values[:, :n_full]
        for row in torch.nonzero(finite_count < k).flatten().tolist():  # short of candidates: few rows
            finite = values[row].isfinite()
            n = int(finite.sum())
            out_items[row, :n], out_values[row, :n] = items[row, finite], values[row, finite]
            taken = set(c.items[row][c.mask[row]].tolist())
            if exclude_seen:
                taken.update(np.asarray(sessions[row]).tolist())
            fill = [i for i in self.popular_order[: k + len(taken)].tolist() if i not in taken][: k - n]
            out_items[row, n : n + len(fill)] = torch.tensor(fill, dtype=torch.long)
            out_values[row, n : n + len(fill)] = (
                float(lowest[row]) - 2.0 + torch.from_numpy(self.log_popularity[fill])
            )
        return out_items, out_values

    def fit(self, train: Sessions, valid: Samples | None = None, *, progress: bool = False) -> dict[str, Any]:
        p = self.params
        t0 = time.perf_counter()
        older, held = split_last(train, p.rerank_fraction)
        self._index(older)
        self._embed(older, progress)
        samples = prefix_samples(held)
        n_chunks = -(-len(samples) // p.batch_size)
        n_dev = max(1, round(n_chunks * p.dev_fraction)) if n_chunks > 1 else 0
        dev_start = (n_chunks - n_dev) * p.batch_size
        # the held-out sessions none of whose samples is in dev (the session dev starts in is left out)
        held_learn = held.select(np.arange(_session_of(held, samples, dev_start)))
        neural_history = None
        if self.neural is not None:
            valid = prefix_samples(held_learn) if self.neural.uses_validation and len(held_learn) else None
            neural_history = self.neural.fit(older, valid, progress=progress)
        chunks = self._featurise(samples, progress)
        learn, dev = chunks[: len(chunks) - n_dev], chunks[len(chunks) - n_dev :]
        history: dict[str, Any] = {
            "scorer_samples": len(samples),
            "labels_among_candidates": float(np.mean(np.concatenate([t.any(1) for _, t in chunks]))),
            "featurise_seconds": round(time.perf_counter() - t0, 2),
            "epochs": [],
            "best_epoch": None,
        }
        opt = torch.optim.Adam(self.net.parameters(), lr=p.lr)
        rng = np.random.default_rng(p.seed)
        best, best_state, stale = -1.0, None, 0
        for epoch in range(1, p.epochs + 1):
            self.net.train()
            losses = []
            for i in tqdm(rng.permutation(len(learn)), desc=f"rerank epoch {epoch}", disable=not progress):
                c, target = learn[i]
                losses.append(self._step(opt, c, target))
            record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else None}
            self.net.eval()
            if dev:
                recall, mrr = self._dev_metrics(dev)
                record.update({"dev_recall@20": recall, "dev_mrr@20": mrr})
                if recall + mrr > best:
                    best, stale, history["best_epoch"] = recall + mrr, 0, epoch
                    best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
                else:
                    stale += 1
            history["epochs"].append(record)
            if progress:
                report_epoch("rerank", record)
            if stale >= p.patience:
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        if self.neural is not None:
            history["neural"] = {"older": neural_history}
            dev_samples = samples.select(np.arange(dev_start, len(samples)))
            lr = _kept_rate(neural_history)
            kept = history["epochs"][history["best_epoch"] - 1] if history["best_epoch"] else None
            before = (kept["dev_recall@20"], kept["dev_mrr@20"]) if kept else None
            history["neural"].update(self._last_pass(held, held_learn, dev_samples, before, lr, progress))
        self._index(train)
        self._embed(train, progress)
        return history

    def _embed(self, sessions: Sessions, progress: bool = False) -> None:
        """Item2vec (Barkan & Koenigstein 2016): skip-gram with negative sampling over the sessions as
        sentences (gensim's Word2Vec), unit vectors; items never clicked get 0."""
        if "embed" not in self.groups:
            return
        from gensim.models import Word2Vec
        from gensim.models.callbacks import CallbackAny2Vec

        p = self.params
        words = sessions.items.astype(str)
        sentences = [part.tolist() for part in np.split(words, sessions.offsets[1:-1])]
        bar = tqdm(total=p.embed_epochs, desc="rerank item2vec", disable=not progress)

        class EpochDone(CallbackAny2Vec):
            def on_epoch_end(self, model: Word2Vec) -> None:
                bar.update()

        w2v = Word2Vec(
            sentences,
            vector_size=p.embed_dim,
            window=p.embed_window,
            epochs=p.embed_epochs,
            sg=1,
            negative=5,
            ns_exponent=p.embed_negative_exponent,
            min_count=1,
            workers=1,
            seed=p.seed,
            hashfxn=_stable_hash,
            callbacks=[EpochDone()],
        )
        bar.close()
        vectors = np.zeros((self.n_items + 1, p.embed_dim), dtype=np.float32)
        keys = np.array([int(k) for k in w2v.wv.index_to_key], dtype=np.int64)
        vectors[keys] = w2v.wv.get_normed_vectors()
        self.item_vectors = vectors

    def _last_pass(
        self,
        held: Sessions,
        held_learn: Sessions,
        dev: Samples,
        before: tuple[float, float] | None,
        lr: float | None,
        progress: bool,
    ) -> dict[str, Any]:
        """More epochs of the neural model, warm, at the learning rate `lr` its kept epoch trained at, over the
        held-out newest sessions (the most like what it will serve), as many as dev says help: epochs are
        tried one by one over the held-out sessions outside dev, dev is scored after each with the scorer as
        trained (on the features of the model before them), and the trial stops at the first epoch that does
        not raise dev's Recall@20 + MRR@20 (at most `neural_epochs`), starting from `before`, the scorer's
        dev figures at the epoch it kept. The model then goes back to its state before the trial and makes
        the epochs that helped over all the held-out sessions. (At MTAW's first rate, 1e-3, after its 1e-4
        epochs, one epoch lost 1.3 points of dev MRR@20 on Diginetica.)"""
        assert self.neural is not None
        record: dict[str, Any] = {"pass_epochs": 0}
        if before is None or not len(held_learn):
            return record
        before_state = {k: v.detach().clone() for k, v in self.neural.state_tensors().items()}
        best = before
        record.update({"dev_before_pass": before, "dev_after_epoch": []})
        for epoch in range(1, self.params.neural_epochs + 1):
            self._neural_epoch(held_learn, lr, progress)
            after = self._dev_metrics(self._featurise(dev, progress))
            record["dev_after_epoch"].append(after)
            if sum(after) <= sum(best):
                break
            best, record["pass_epochs"] = after, epoch
        self.neural.load_state_tensors(before_state)
        record["pass"] = [self._neural_epoch(held, lr, progress) for _ in range(record["pass_epochs"])]
        return record

    def _neural_epoch(self, sessions: Sessions, lr: float | None, progress: bool) -> dict[str, Any]:
        """One epoch of the neural model over `sessions`, warm, without validation (at `lr` if given)."""
        from model.lifecycle.experiment import epoch_field

        assert self.neural is not None
        params = self.neural.params
        changes: dict[str, Any] = {epoch_field(params): 1}
        if lr is not None and hasattr(params, "lr"):
            changes["lr"] = lr
        self.neural.params = dataclasses.replace(params, **changes)
        try:
            return self.neural.fit(sessions, None, progress=progress)
        finally:
            self.neural.params = params

    def _featurise(self, samples: Samples, progress: bool) -> list[tuple[Candidates, np.ndarray]]:
        chunks = []
        total = -(-len(samples) // self.params.batch_size)
        for idx in tqdm(
            samples.batches(self.params.batch_size), total=total, desc="rerank features", disable=not progress
        ):
            c = self.candidates(samples.prefixes(idx))
            chunks.append((c, (c.items == samples.labels[idx][:, None]) & c.mask))
        return chunks

    def _step(self, opt: torch.optim.Optimizer, c: Candidates, target: np.ndarray) -> float:
        has = target.any(axis=1)
        if not has.any():
            return 0.0
        scores = self._candidate_scores(c)[torch.from_numpy(has)]
        t = torch.from_numpy(target[has])
        loss = -(torch.log_softmax(scores, dim=1)[t]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    @torch.no_grad()
    def _dev_metrics(self, dev: list[tuple[Candidates, np.ndarray]]) -> tuple[float, float]:
        """Recall@20 and MRR@20 among the candidates (a label outside them is a miss; ties count against)."""
        acc = RankAccumulator((20,))
        for c, target in dev:
            scores = self._candidate_scores(c)
            t = torch.from_numpy(target)
            label = torch.where(t, scores, -torch.inf).max(dim=1).values
            rank = (scores >= label[:, None]).sum(dim=1)
            acc.add(torch.where(t.any(dim=1), rank, scores.shape[1] + 21))  # no candidate: a miss
        result = acc.result()
        return float(result["recall@20"]), float(result["mrr@20"])

    # -- checkpoints --------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        if self.neural is not None:
            tensors.update({f"neural.{k}": v for k, v in self.neural.state_tensors().items()})
        if self.item_vectors is not None:
            tensors["item_vectors"] = torch.from_numpy(self.item_vectors)
        if self.knn is not None:
            tensors["session_offsets"] = torch.from_numpy(self.session_offsets)
            tensors["session_items"] = torch.from_numpy(self.session_items)
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.net.eval()
        if self.neural is not None:
            self.neural.load_state_tensors({k[7:]: v for k, v in tensors.items() if k.startswith("neural.")})
        if "embed" in self.groups:
            vectors = tensors["item_vectors"].numpy().astype(np.float32)
            if vectors.shape != (self.n_items + 1, self.params.embed_dim):
                raise ValueError(f"item vectors of shape {vectors.shape} do not fit the vocabulary")
            self.item_vectors = vectors
        offsets = tensors["session_offsets"].numpy().astype(np.int64)
        items = tensors["session_items"].numpy().astype(np.int64)
        if items.size and (items.max() > self.n_items or items.min() < 1):
            raise ValueError("session items fall outside the vocabulary")
        self._index(Sessions(offsets, items))
