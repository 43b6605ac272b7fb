"""Pieces shared by the neural models: batching sessions into tensors and the papers' initialisation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def uniform_init_(module: nn.Module, hidden_size: int) -> None:
    """Every parameter ~ U(-1/sqrt(d), 1/sqrt(d)), as the SR-GNN reference code initialises its model."""
    stdv = 1.0 / math.sqrt(hidden_size)
    for weight in module.parameters():
        nn.init.uniform_(weight, -stdv, stdv)


def pad_sessions(sessions: Sequence[np.ndarray], max_len: int | None = None) -> torch.Tensor:
    """Right-padded (B, L) LongTensor of item indices, 0 = padding; a session longer than max_len keeps its
    latest max_len clicks."""
    lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
    if max_len is not None:
        lengths = np.minimum(lengths, max_len)
    width = max(int(lengths.max(initial=1)), 1)
    out = np.zeros((len(sessions), width), dtype=np.int64)
    for row, (s, n) in enumerate(zip(sessions, lengths, strict=True)):
        if n:
            out[row, :n] = s[len(s) - n :]
    return torch.from_numpy(out)


def pad_windows(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int | None = None
) -> torch.Tensor:
    """`pad_sessions` for (start, end) windows into one items array, without a Python loop (training)."""
    lengths = ends - starts
    if max_len is not None:
        starts = np.maximum(starts, ends - max_len)
        lengths = ends - starts
    width = max(int(lengths.max(initial=1)), 1)
    offset = np.arange(width)[None, :]
    inside = offset < lengths[:, None]
    index = np.where(inside, starts[:, None] + offset, 0)
    return torch.from_numpy(np.where(inside, items[index], 0))


class Bf16Scoring:
    """Serving-time scoring against every item in bfloat16 (`scoring_bf16 = True`, set by the stream).

    Scoring a batch against all items is the largest cost of a recommendation; on CPUs with bf16 matrix
    units it runs ~2.5-3.5x faster in bfloat16 (measured: 48 x 100 x 40k items, 5.4 -> 2.2 ms). The bf16
    copy of a table is made once and reused while the weights do not change. Offline evaluation keeps
    float32, so the published accuracy is computed exactly; the stream trades exactness of near-tied
    scores for latency."""

    scoring_bf16: bool = False

    def bf16_table(self, weight: torch.Tensor) -> torch.Tensor:
        cache: dict[tuple, torch.Tensor] = self.__dict__.setdefault("_bf16_tables", {})
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        if key not in cache:
            if len(cache) >= 4:  # weights changed (a training step): drop the stale copies
                cache.clear()
            cache[key] = weight.detach().bfloat16()
        return cache[key]

    def score_matrix(
        self, vectors: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """vectors (B, d) @ table (n, d).T (+ bias (n,)). When serving with `scoring_bf16` the result
        stays bfloat16: every further pass over a (B, n_items) matrix costs as much as the product."""
        if self.scoring_bf16 and not torch.is_grad_enabled():
            v, t = vectors.bfloat16(), self.bf16_table(table)
            return torch.mm(v, t.T) if bias is None else torch.addmm(self.bf16_table(bias), v, t.T)
        return vectors @ table.T if bias is None else torch.addmm(bias, vectors, table.T)
