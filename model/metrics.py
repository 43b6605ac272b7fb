"""Full-ranking evaluation: every sample's label is ranked against all items, no sampled negatives.

Conventions (documented because they move numbers):
- The padding column 0 never competes: its score is set to -inf before ranking.
- Ties are counted against us: rank = number of items whose score is >= the label's score (the label
  included). An item scoring exactly like the label counts as ranked above it, so a model that returns a
  constant gets rank n, not 1. A NaN label score counts as a miss.
- Recall@K = share of samples with rank <= K; MRR@K = mean of 1/rank, 0 beyond K;
  NDCG@K = mean of 1/log2(rank + 1), 0 beyond K (one relevant item, so IDCG = 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from model.data.sessions import Samples

Scorer = Callable[[list[np.ndarray]], torch.Tensor]


def ranks_of(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Conservative 1-based rank of each label in its row of scores (B, n_items + 1)."""
    scores = scores.float().clone()
    scores[:, 0] = -torch.inf
    target = scores.gather(1, labels.view(-1, 1))
    ranks = (scores >= target).sum(dim=1)
    return torch.where(torch.isnan(target.squeeze(1)), scores.shape[1], ranks)


class RankAccumulator:
    """Sums of hits, reciprocal ranks and discounted gains per K, fed batch by batch."""

    def __init__(self, ks: Sequence[int]) -> None:
        self.ks = tuple(sorted(set(int(k) for k in ks)))
        self.n = 0
        self.hits = dict.fromkeys(self.ks, 0.0)
        self.rr = dict.fromkeys(self.ks, 0.0)
        self.dcg = dict.fromkeys(self.ks, 0.0)

    def add(self, ranks: torch.Tensor) -> None:
        r = ranks.double().cpu()
        self.n += len(r)
        for k in self.ks:
            inside = r <= k
            self.hits[k] += float(inside.sum())
            self.rr[k] += float(torch.where(inside, 1.0 / r, 0.0).sum())
            self.dcg[k] += float(torch.where(inside, 1.0 / torch.log2(r + 1.0), 0.0).sum())

    def result(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"n": self.n}
        for k in self.ks:
            denom = max(self.n, 1)
            out[f"recall@{k}"] = self.hits[k] / denom
            out[f"mrr@{k}"] = self.rr[k] / denom
            out[f"ndcg@{k}"] = self.dcg[k] / denom
        return out


def evaluate(
    score: Scorer,
    samples: Samples,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 500,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float | int]:
    """Recall@K, MRR@K and NDCG@K of a scorer over all samples, batch by batch."""
    acc = RankAccumulator(ks)
    batches = samples.batches(batch_size)
    total = (len(samples) + batch_size - 1) // batch_size
    for idx in tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress, leave=False):
        scores = score(samples.prefixes(idx))
        labels = torch.as_tensor(samples.labels[idx], device=scores.device)
        acc.add(ranks_of(scores, labels))
    return acc.result()
