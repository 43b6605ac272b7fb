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
