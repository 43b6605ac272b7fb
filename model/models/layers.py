"""Pieces shared by the neural models: batching sessions into tensors and the papers' initialisation."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
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


@functools.cache
def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether scoring in bfloat16 pays on `device`: always on CUDA; on a CPU, measured here once per
    process (a 64 x 128 x 16,384 product in each type, twice, the best of three after a warm-up; bf16 must take at
    most 0.8x the float32 time). CPU flags did not say it: on the same AVX2-only AMD EPYC (no AVX512-BF16,
    no AMX) with the same torch 2.13.0, one session measured bf16 slower (32 x 100 x 40,728: 117 against
    68 ms) and a later one faster (64 x 100 x 40,728: 4.7 against 7.8 ms; 98 against 243 ms at 1M items).
    The probe costs 60-80 ms here, once."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    with torch.inference_mode():
        vectors, table = torch.randn(64, 128), torch.randn(16384, 128)
        best = {}
        for dtype in (torch.float32, torch.bfloat16, torch.float32, torch.bfloat16):
            v, t = vectors.to(dtype), table.to(dtype)
            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                torch.mm(v, t.T)
                times.append(time.perf_counter() - t0)
            best[dtype] = min(best.get(dtype, math.inf), *times[1:])
    return best[torch.bfloat16] <= 0.8 * best[torch.float32]


class Bf16Scoring:
    """Serving-time scoring against every item in bfloat16 (`scoring_bf16 = True`, set by the stream).

    Scoring a batch against all items is the largest cost of a recommendation; on CPUs with bf16 matrix
    units it runs ~2.5-3.5x faster in bfloat16 (measured: 48 x 100 x 40k items, 5.4 -> 2.2 ms). The bf16
    copy of a table is made once and reused while the weights do not change. Offline evaluation keeps
    float32, so the published accuracy is computed exactly; the stream trades exactness of near-tied
    scores for latency."""

    scoring_bf16: bool = False

    def train(self, mode: bool = True):  # type: ignore[no-untyped-def]
        """Training drops the derived copies: fused Adam (the neural models' optimizer) updates weights
        in place without bumping their version counter, so the key below cannot see its steps (a stale
        table once scored every validation epoch after the first with the first epoch's item table)."""
        if mode:
            self.__dict__.pop("_frozen_tables", None)
        return super().train(mode)  # type: ignore[misc]

    def frozen_table(self, weight: torch.Tensor, normalize: bool = False, bf16: bool = False) -> torch.Tensor:
        """A derived copy of a parameter (L2-normalised rows and/or bfloat16), made once and reused while
        the parameter does not change. Keyed on the parameter itself, never on a derived tensor: one made
        under `torch.inference_mode` has no version counter to key on."""
        cache: dict[tuple, torch.Tensor] = self.__dict__.setdefault("_frozen_tables", {})
        key = (weight.data_ptr(), weight._version, tuple(weight.shape), normalize, bf16)
        if key not in cache:
            if len(cache) >= 8:  # weights changed (a training step): drop the stale copies
                cache.clear()
            table = weight.detach()
            table = F.normalize(table, dim=-1) if normalize else table
            cache[key] = table.bfloat16() if bf16 else table
        return cache[key]

    def score_matrix(
        self,
        vectors: torch.Tensor,
        table: torch.Tensor,
        bias: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """vectors (B, d) @ table (n, d).T (+ bias (n, 1)), the table's rows L2-normalised if asked. Without
        gradients the (derived) table is cached; when serving with `scoring_bf16` the product and its result
        stay bfloat16: every further pass over a (B, n_items) matrix costs as much as the product."""
        if torch.is_grad_enabled():
            t = F.normalize(table, dim=-1) if normalize else table
            return vectors @ t.T if bias is None else torch.addmm(bias.squeeze(1), vectors, t.T)
        bf16 = self.scoring_bf16
        t = self.frozen_table(table, normalize, bf16)
        v = vectors.bfloat16() if bf16 else vectors
        return (
            torch.mm(v, t.T)
            if bias is None
            else torch.addmm(self.frozen_table(bias, bf16=bf16).squeeze(1), v, t.T)
        )

    # items scored at a time by `top_scores` in a catalogue of more than four such chunks
    chunk_items: int = 65_536

    def top_scores(
        self,
        vectors: torch.Tensor,
        table: torch.Tensor,
        k: int,
        bias: torch.Tensor | None = None,
        normalize: bool = False,
        scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best items of `score_matrix(vectors, table, bias, normalize) * scale` and their scores,
        (values (B, k), items (B, k)), row 0 of the table (padding) never among them: serving's path.

        A large catalogue is scored `chunk_items` items at a time, each chunk's top k merged into a running
        top k, so the (B, n_items) matrix is never written and read back whole (at 1M items and 64 sessions:
        128 MB in bfloat16, 256 MB in float32). Measured here (64 x 100, median of 9): 1M items 165 -> 110
        ms in bfloat16 and 306 -> 204 ms in float32 with chunks of 65,536; no gain at 200k items and a
        loss at 40k, hence only above four chunks. `scale` (> 0) is applied to the k values only: the
        same values, in the same order, as scaling every score first."""
        bf16 = self.scoring_bf16
        t = self.frozen_table(table, normalize, bf16)
        b = None if bias is None else self.frozen_table(bias, bf16=bf16).squeeze(1)
        v = vectors.bfloat16() if bf16 else vectors
        n = t.shape[0]
        k = min(k, n - 1)
        size = n - 1 if n - 1 <= 4 * self.chunk_items else self.chunk_items
        values = items = None
        for start in range(1, n, size):  # row 0 is padding
            part = t[start : start + size]
            scores = torch.mm(v, part.T) if b is None else torch.addmm(b[start : start + size], v, part.T)
            top = torch.topk(scores, min(k, len(part)), dim=1)
            if values is None:
                values, items = top.values, top.indices + start
            else:
                values = torch.cat([values, top.values], dim=1)
                merged = torch.topk(values, min(k, values.shape[1]), dim=1)
                values = merged.values
                items = torch.cat([items, top.indices + start], dim=1).gather(1, merged.indices)
        assert values is not None and items is not None, "a table of padding only"
        return (values * scale if scale != 1.0 else values), items
