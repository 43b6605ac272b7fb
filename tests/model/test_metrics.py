import numpy as np
import torch

from model.data.sessions import Samples
from model.metrics import evaluate, ranks_of


def brute_force(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, float, float]:
    hits = rr = dcg = 0.0
    for row, label in zip(scores, labels, strict=True):
        target = row[label]
        rank = 1 + sum(1 for i, s in enumerate(row) if i not in (0, label) and s >= target)
        if rank <= k:
            hits += 1
            rr += 1 / rank
            dcg += 1 / np.log2(rank + 1)
    n = len(labels)
    return hits / n, rr / n, dcg / n


def test_batched_metrics_equal_brute_force_with_ties():
    rng = np.random.default_rng(0)
    n, n_items = 257, 40
    scores = rng.integers(0, 6, size=(n, n_items + 1)).astype(np.float32)  # many ties
    scores[:, 0] = 100.0  # padding must never count, however high
    labels = rng.integers(1, n_items + 1, size=n)
    samples = Samples(np.zeros(n, dtype=np.int64), np.arange(n), np.arange(n) + 1, labels)
    table = torch.from_numpy(scores)

    def score(prefixes):  # rows are looked up through the prefix's start index
        return table[[int(s) for s in batch_ids(prefixes)]]

    starts_seen: list[int] = []

    def batch_ids(prefixes):
        ids = list(range(len(starts_seen), len(starts_seen) + len(prefixes)))
        starts_seen.extend(ids)
        return ids

    got = evaluate(score, samples, ks=(5, 20), batch_size=50)
    for k in (5, 20):
        recall, mrr, ndcg = brute_force(scores, labels, k)
        assert abs(got[f"recall@{k}"] - recall) < 1e-9
        assert abs(got[f"mrr@{k}"] - mrr) < 1e-9
        assert abs(got[f"ndcg@{k}"] - ndcg) < 1e-9
    assert got["n"] == n


def test_ties_count_against_the_label():
    scores = torch.tensor([[9.0, 1.0, 1.0, 1.0, 0.5]])
    assert ranks_of(scores, torch.tensor([2])).item() == 3  # two equal items count as above it
    assert ranks_of(scores, torch.tensor([4])).item() == 4
    nan = torch.tensor([[0.0, float("nan"), 1.0]])
    assert ranks_of(nan, torch.tensor([1])).item() == 3  # NaN is a miss
