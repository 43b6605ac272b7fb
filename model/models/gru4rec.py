"""GRU4Rec (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou, CIKM 2018), with the features that make it work.

Training walks sessions side by side (session-parallel mini-batches): slot b of the batch holds one session
and moves one click per step; when a session ends, the next one takes its slot and that slot's hidden state
is reset. There is no padding and no back-propagation through time beyond one step, as in the reference.

    x = E[item]                   (constrained embedding: E is the output table Wy; one-hot: rows of W_ih)
    h_l = GRU_l(x, h_l);  x = dropout(h_l)
    r_j = x · Wy[j] + By[j]        for the mini-batch's targets and `n_sample` shared negatives

Negatives are the other targets of the mini-batch plus `n_sample` items drawn with probability
∝ support^sample_alpha, drawn in large chunks ahead of time. Losses (summed over the mini-batch, as in the
reference): cross-entropy over the softmax of the row (optionally with the logQ correction), BPR-max and
TOP1-max (negatives weighted by their softmax, BPR-max with score regularisation `bpreg`), and the original
BPR and TOP1, each averaged over the mini-batch. The item tables are updated sparsely by Adagrad with
momentum (`model.training.optim.AdagradM`; classical momentum as in the official PyTorch code, Nesterov on request).
The GRU cell has torch.nn.GRUCell's equations (the official code uses nn.GRUCell) and, as there, the
dropped-out hidden state is what the next step receives.
Initialisation as in the reference: U(±sqrt(6 / (fan_in + fan_out))) per gate block, biases 0.

Extensions from the article (../shared/papers/002): `dwell_time` = t repeats a training click
floor(dwell / t) + 1 times (dwell = time to the next click; the last click of a session, whose dwell is
unknown, once; at most `max_repeat` times). The article's user-level HRNN is not offered: it was trained
here once, but evaluation, serving and the session log all start every session from zeros, so it could
only cost training time (the stream would have to carry each user's state between sessions first).
For the stream, `step` advances a batch of sessions by one click from their stored hidden states in O(1).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model.data.sessions import Samples, Sessions
from model.errors import UserError
from model.metrics import evaluate
from model.models.base import Recommender
from model.models.layers import Bf16Scoring
from model.training.optim import AdagradM
from model.training.progress import report_epoch
from model.training.runtime import tune_malloc

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")


@dataclasses.dataclass
class GRU4RecParams:
    loss: str = "cross-entropy"
    layers: list[int] = dataclasses.field(default_factory=lambda: [100])
    batch_size: int = 64
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    learning_rate: float = 0.05
    momentum: float = 0.0
    nesterov: bool = False  # the official PyTorch code uses classical momentum
    n_sample: int = 2048
    sample_alpha: float = 0.5
    sample_store: int = 10_000_000
    bpreg: float = 1.0
    elu_param: float = 0.5  # ELU on the scores for bpr-max / top1-max (0 = none)
    logq: float = 0.0
    constrained_embedding: bool = True
    embedding: int = 0  # > 0: a separate input embedding of this size; 0: shared (constrained) or one-hot
    n_epochs: int = 10
    dwell_time: float = 0.0  # seconds per repeat (0 = off)
    max_repeat: int = 10
    seed: int = 42


# ------------------------------------------------------------------------------------------------ batching
def session_parallel(
    offsets: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Steps of session-parallel mini-batches over sessions (in the given order, those of 2+ clicks).

    Yields (input positions, target positions, reset mask, session of each slot). A slot whose session has
    no next click takes the next session and is reset; when no session is left to take, the epoch ends
    (the reference's behaviour: the last few partial sessions are not trained on)."""
    lengths = np.diff(offsets)
    queue = np.flatnonzero(lengths >= 2)
    if len(queue) == 0:
        return
    width = min(batch_size, len(queue))
    session = queue[:width].copy()
    nxt = width
    pos = offsets[session].copy()
    end = offsets[session + 1]
    reset = np.ones(width, dtype=bool)
    while True:
        yield pos.copy(), pos + 1, reset.copy(), session.copy()
        pos += 1
        reset[:] = False
        for slot in np.flatnonzero(pos + 1 >= end):
            if nxt >= len(queue):
                return
            session[slot] = queue[nxt]
            nxt += 1
            pos[slot] = offsets[session[slot]]
            end[slot] = offsets[session[slot] + 1]
            reset[slot] = True


def repeat_by_dwell(sessions: Sessions, seconds: float, max_repeat: int = 10) -> Sessions:
    """Dwell-time slicing (Bogina & Kuflik 2017): a click with dwell d is repeated floor(d / t) + 1 times."""
    if sessions.times is None:
        raise UserError("dwell_time needs timestamps, and this data set has none")
    dwell = np.zeros(sessions.n_events)
    dwell[:-1] = np.diff(sessions.times)
    dwell[sessions.offsets[1:] - 1] = 0.0  # the last click of a session: dwell unknown
    reps = np.clip(np.floor(np.maximum(dwell, 0) / seconds).astype(np.int64) + 1, 1, max_repeat)
    per_session = np.add.reduceat(reps, sessions.offsets[:-1]) if len(sessions) else np.zeros(0, np.int64)
    per_session[sessions.lengths == 0] = 0
    offsets = np.zeros(len(sessions) + 1, dtype=np.int64)
    np.cumsum(per_session, out=offsets[1:])
    return Sessions(offsets, np.repeat(sessions.items, reps), np.repeat(sessions.times, reps), sessions.users)


class NegativeSampler:
    """`n_sample` items per step, ∝ support^alpha, drawn `store` at a time so sampling never stalls."""

    def __init__(self, counts: np.ndarray, alpha: float, n_sample: int, store: int, seed: int) -> None:
        weights = np.asarray(counts, dtype=np.float64) ** alpha
        weights[0] = 0.0  # padding is never a negative
        self.prob = weights / weights.sum()
        self.cdf = np.cumsum(self.prob)
        self.cdf[-1] = 1.0
        self.n_sample = n_sample
        self.per_refill = max(store // max(n_sample, 1), 1)
        self.rng = np.random.default_rng(seed)
        self.buffer = np.zeros((0, n_sample), dtype=np.int64)
        self.next = 0

    def __call__(self) -> np.ndarray:
        if self.next >= len(self.buffer):
            u = self.rng.random(self.per_refill * self.n_sample)
            self.buffer = np.searchsorted(self.cdf, u, side="right").reshape(self.per_refill, self.n_sample)
            self.next = 0
        out = self.buffer[self.next]
        self.next += 1
        return out


# ------------------------------------------------------------------------------------------------ losses
def _softmax_neg(r: torch.Tensor) -> torch.Tensor:
    """Softmax of each row over its negatives only (the diagonal, the row's target, gets weight 0)."""
    eye = torch.eye(r.shape[0], r.shape[1], dtype=torch.bool, device=r.device)
    masked = r.masked_fill(eye, -torch.inf)
    return torch.softmax(masked, dim=1)


def gru4rec_loss(r: torch.Tensor, loss: str, bpreg: float = 1.0) -> torch.Tensor:
    """Loss of a score matrix r (B, B + n_sample) whose row i has its target in column i."""
    target = r.diagonal().unsqueeze(1)
    if loss == "cross-entropy":
        return -torch.log_softmax(r, dim=1).diagonal().sum()
    if loss == "bpr-max":
        s = _softmax_neg(r)
        return (-torch.log((s * torch.sigmoid(target - r)).sum(1) + 1e-24) + bpreg * (s * r * r).sum(1)).sum()
    if loss == "top1-max":
        s = _softmax_neg(r)
        return (s * (torch.sigmoid(r - target) + torch.sigmoid(r * r))).sum(1).sum()
    negatives = ~torch.eye(r.shape[0], r.shape[1], dtype=torch.bool, device=r.device)
    n_neg = negatives.sum(1)
    if loss == "bpr":
        return ((-F.logsigmoid(target - r) * negatives).sum(1) / n_neg).sum()
    if loss == "top1":
        return (((torch.sigmoid(r - target) + torch.sigmoid(r * r)) * negatives).sum(1) / n_neg).sum()
    raise UserError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


# ------------------------------------------------------------------------------------------------ network
def _glorot_(w: torch.Tensor, blocks: int = 1) -> None:
    """U(±sqrt(6 / (rows/blocks + cols))) — the reference's init, per gate block for stacked gates."""
    sigma = math.sqrt(6.0 / (w.shape[0] / blocks + w.shape[1]))
    nn.init.uniform_(w, -sigma, sigma)


class GRUStack(nn.Module):
    """GRU layers whose first input transform may be a row lookup (one-hot input)."""

    def __init__(self, n_items: int, p: GRU4RecParams) -> None:
        super().__init__()
        sizes = list(p.layers)
        self.sizes = sizes
        self.one_hot = not p.constrained_embedding and p.embedding == 0
        in_dim = p.embedding or sizes[-1]
        if self.one_hot:
            self.w_x0 = nn.Embedding(n_items + 1, 3 * sizes[0], sparse=True)  # rows of W_ih for one-hot input
            _glorot_(self.w_x0.weight, 3)
        self.w_ih = nn.ModuleList()
        self.w_hh = nn.ModuleList()
        for i, h in enumerate(sizes):
            fan_in = in_dim if i == 0 else sizes[i - 1]
            if not (i == 0 and self.one_hot):
                self.w_ih.append(nn.Linear(fan_in, 3 * h))
                _glorot_(self.w_ih[-1].weight, 3)
                nn.init.zeros_(self.w_ih[-1].bias)
            self.w_hh.append(nn.Linear(h, 3 * h))
            _glorot_(self.w_hh[-1].weight, 3)
            nn.init.zeros_(self.w_hh[-1].bias)

    def input_gates(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.w_ih[layer - 1 if self.one_hot else layer](x)

    @staticmethod
    def cell(gi: torch.Tensor, h: torch.Tensor, w_hh: nn.Linear) -> torch.Tensor:
        """torch.nn.GRUCell's equations, which the official PyTorch GRU4Rec uses:
        n = tanh(W_n x + b_in + r ⊙ (U_n h + b_hn)),  h' = (1 - z) n + z h."""
        i_r, i_z, i_n = gi.chunk(3, dim=1)
        h_r, h_z, h_n = w_hh(h).chunk(3, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h


class GRU4Rec(Bf16Scoring, nn.Module):
    def __init__(self, n_items: int, p: GRU4RecParams) -> None:
        super().__init__()
        self.p = p
        d_out = p.layers[-1]
        self.wy = nn.Embedding(n_items + 1, d_out, sparse=True)
        self.by = nn.Embedding(n_items + 1, 1, sparse=True)
        _glorot_(self.wy.weight)
        nn.init.zeros_(self.by.weight)
        if p.embedding and not p.constrained_embedding:
            self.emb = nn.Embedding(n_items + 1, p.embedding, sparse=True)
            _glorot_(self.emb.weight)
        self.gru = GRUStack(n_items, p)
        self.drop_embed = nn.Dropout(p.dropout_p_embed)
        self.drop_hidden = nn.Dropout(p.dropout_p_hidden)

    @property
    def state_size(self) -> int:
        return sum(self.p.layers)

    def step(self, items: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One click for each row: (output vector of the last layer, new state (B, sum(layers)))."""
        hs = list(state.split(self.p.layers, dim=1))
        if self.gru.one_hot:
            gi = self.gru.w_x0(items)
        else:
            table = self.emb if hasattr(self, "emb") else self.wy
            gi = self.gru.input_gates(0, self.drop_embed(table(items)))
        new = []
        x = None
        for layer, h in enumerate(hs):
            if layer > 0:
                gi = self.gru.input_gates(layer, x)
            x = self.drop_hidden(self.gru.cell(gi, h, self.gru.w_hh[layer]))
            new.append(x)  # the reference carries the dropped-out state to the next step
        return x, torch.cat(new, dim=1)

    def score_items(self, out: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return out @ self.wy(items).T + self.by(items).T

    def score_all(self, out: torch.Tensor) -> torch.Tensor:
        scores = self.score_matrix(out, self.wy.weight, self.by.weight)
        scores[:, 0] = -torch.inf
        return scores

    def top_k(self, out: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """score_all's k best items (values, items), without its matrix at a large catalogue."""
        return self.top_scores(out, self.wy.weight, k, bias=self.by.weight)


# ------------------------------------------------------------------------------------------------ recommender
class GRU4RecRecommender(Recommender):
    name = "gru4rec"
    Params = GRU4RecParams
    uses_validation = False  # the reference trains n_epochs on the whole training set

    def __init__(self, vocab, params=None, device="cpu") -> None:
        super().__init__(vocab, params, device)
        if self.params.loss not in LOSSES:
            raise UserError(f"unknown loss {self.params.loss!r}; choose one of {', '.join(LOSSES)}")
        self.net = GRU4Rec(self.n_items, self.params).to(self.device)

    def to(self, device: torch.device | str) -> GRU4RecRecommender:
        super().to(device)
        self.net.to(self.device)
        return self

    def fit(self, train: Sessions, valid: Samples | None = None, *, progress: bool = False) -> dict[str, Any]:
        p = self.params
        tune_malloc()
        torch.manual_seed(p.seed)
        if p.dwell_time > 0:
            train = repeat_by_dwell(train, p.dwell_time, p.max_repeat)
        counts = np.bincount(train.items, minlength=self.n_items + 1)
        sampler = (
            NegativeSampler(counts, p.sample_alpha, p.n_sample, p.sample_store, p.seed)
            if p.n_sample
            else None
        )
        log_pop = (
            torch.from_numpy(np.log(np.maximum(counts, 1)).astype(np.float32)).to(self.device)
            if p.logq > 0
            else None
        )
        opt = AdagradM(self.net.parameters(), lr=p.learning_rate, momentum=p.momentum, nesterov=p.nesterov)
        history: dict[str, Any] = {"epochs": []}
        n_events = int((train.lengths[train.lengths >= 2] - 1).sum())
        for epoch in range(1, p.n_epochs + 1):
            t0 = time.perf_counter()
            loss = self._epoch(train, sampler, log_pop, opt, progress, f"gru4rec epoch {epoch}", n_events)
            seconds = time.perf_counter() - t0
            record: dict[str, Any] = {
                "epoch": epoch,
                "loss": loss,
                "seconds": round(seconds, 2),
                "events_per_s": round(n_events / seconds, 1),
            }
            if valid is not None and len(valid):
                m = evaluate(self.score, valid, ks=(20,))
                record.update({"valid_recall@20": m["recall@20"], "valid_mrr@20": m["mrr@20"]})
            history["epochs"].append(record)
            if progress:
                report_epoch("gru4rec", record)
        return history

    def _epoch(
        self,
        train: Sessions,
        sampler: NegativeSampler | None,
        log_pop: torch.Tensor | None,
        opt: torch.optim.Optimizer,
        progress: bool,
        desc: str,
        n_events: int,
    ) -> float:
        p, net, dev = self.params, self.net, self.device
        net.train()
        state = torch.zeros(min(p.batch_size, len(train)), net.state_size, device=dev)
        total, steps = 0.0, 0
        items = torch.from_numpy(train.items).to(dev)
        bar = tqdm(
            total=n_events,
            desc=desc,
            unit="event",
            unit_scale=True,
            disable=not progress,
            leave=False,
            mininterval=1.0,
        )
        for inp, out, reset, _ in session_parallel(train.offsets, p.batch_size):
            state = state.detach()
            if reset.any():
                state = state.masked_fill(torch.from_numpy(reset).to(dev).unsqueeze(1), 0.0)
            x_idx, y_idx = items[torch.from_numpy(inp)], items[torch.from_numpy(out)]
            vec, state = net.step(x_idx, state)
            cand = y_idx if sampler is None else torch.cat([y_idx, torch.from_numpy(sampler()).to(dev)])
            r = net.score_items(vec, cand)
            if log_pop is not None and p.loss == "cross-entropy":
                correction = log_pop[cand]
                correction[len(inp) :] *= p.sample_alpha  # samples were drawn by popularity^alpha
                r = r - p.logq * correction
            if p.elu_param > 0 and p.loss in ("bpr-max", "top1-max"):
                r = F.elu(r, alpha=p.elu_param)
            loss = gru4rec_loss(r, p.loss, p.bpreg) / len(inp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if steps % 50 == 0:
                current = loss.item()
                total += current
                bar.set_postfix(loss=f"{current:.3f}", refresh=False)
            steps += 1
            bar.update(len(inp))
        bar.close()
        return total / max(1, (steps + 49) // 50)

    # -- inference -----------------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.net.state_size, device=self.device)

    @torch.inference_mode()
    def step(self, items: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Incremental inference: scores (B, n_items + 1) after one more click, and the new state."""
        self.net.eval()
        vec, state = self.net.step(items.to(self.device), state.to(self.device))
        return self.net.score_all(vec), state

    @torch.inference_mode()
    def step_top(
        self, items: torch.Tensor, state: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`step` as the worker serves it: the k best items and their scores after one more click (as
        `recommend` gives them), and the new state."""
        self.net.eval()
        vec, state = self.net.step(items.to(self.device), state.to(self.device))
        values, top = self.net.top_k(vec, k)  # at most every item (`top_scores`)
        return top.cpu(), values.float().cpu(), state

    def top_k(self, sessions: Sequence[np.ndarray], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.top_k(self._run(sessions)[0], k)

    def _run(self, sessions: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer output and state after each whole session (an empty session: zeros)."""
        self.net.eval()
        lengths = torch.tensor([len(s) for s in sessions], device=self.device)
        width = max(int(lengths.max()) if len(sessions) else 0, 1)
        seq = torch.zeros(len(sessions), width, dtype=torch.long)
        for i, s in enumerate(sessions):
            seq[i, : len(s)] = torch.as_tensor(s)
        seq = seq.to(self.device)
        state = self.initial_state(len(sessions))
        out = torch.zeros(len(sessions), self.params.layers[-1], device=self.device)
        for t in range(width):
            live = (lengths > t).unsqueeze(1)
            vec, new = self.net.step(seq[:, t], state)
            state = torch.where(live, new, state)
            out = torch.where(live, vec, out)
        return out, state

    @torch.inference_mode()
    def final_states(self, sessions: Sequence[np.ndarray]) -> torch.Tensor:
        """The hidden state after each session: what the stream caches to answer the next click in O(1)."""
        return self._run(sessions)[1]

    @torch.inference_mode()
    def score(self, sessions: Sequence[np.ndarray]) -> torch.Tensor:
        """Recomputes each session from its first click (the reference's evaluation does the same)."""
        return self.net.score_all(self._run(sessions)[0])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.net.state_dict())

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(tensors, strict=True)
