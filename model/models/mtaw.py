"""MTAW ("Mining Interest Trends and Adaptively Assigning Sample Weight for Session-based Recommendation").

    x_i = e_i + p_i                                               item + learned position embedding
    l'_t = Attention(ReLU(MLP(x_t)), X'_t, X'_t),  X'_t = {x_1..x_t}   every prefix at once, causal mask
    L = LayerNorm(L' + Dropout(MLP(ReLU(MLP(L')))))                interest-tracking layer: instant interests
    O = Attention(ReLU(MLP(l_m)), L, L)                           interest-enhancing layer, last interest asks
    ŷ = softmax(s · L2Norm(O)ᵀ L2Norm(e_i))                       cosine scores, scaled
    AW loss = -(2 - 2p)^γ log p,  p = ŷ[target]                   γ = 0 is cross-entropy

with Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d)) V.

Where the article is silent:
- Which way positions count. `reverse_positions` (default) numbers clicks by their distance from the last
  one, so "the latest click" has one embedding whatever the session length; counting from the first click
  is the other reading of "x_i = e_i + p_i". Sessions longer than `max_positions` keep their latest clicks.
- Where the residual goes. The article adds "a residual connection and layer normalisation" after the FFN;
  `attention_residual` (default) also adds X to the attention output, as a standard transformer block
  does, which keeps each click's own item in its instant interest.
  Both choices were made on validation scores (newest 10 % of training sessions), never on test: on the
  synthetic world of the tests (hidden 32, 6 epochs) valid Recall@20 / MRR@20 went 46.1 / 19.5 (neither)
  -> 49.5 / 21.8 (reverse positions) -> 51.3 / 19.5 (attention residual) -> 53.9 / 22.0 (both).
- The query of the interest-enhancing layer is built like the tracking layer's, ReLU(MLP(l_m)).
- Dropout on the input embeddings and on the FFN output.
- The cosine scores need a scale s (softmax over values in [-1, 1] cannot be peaked); `scale` and `dropout`
  are hyperparameters, chosen on the validation split (the newest 10 % of training sessions), never on
  the test split. On Tmall (scripts/tune.py, 2 epochs each) scale 12 / dropout 0.1 gave valid Recall@20 /
  MRR@20 34.02 / 21.96 against 33.48 / 21.88 (dropout 0.3), 32.81 / 21.84 (0.5) and 30.74-32.04 /
  21.19-22.14 (scale 20): every setting peaks after one epoch, so more dropout does not buy more epochs.
  The table is in BENCHMARKS.md.
- The AW loss is averaged over the batch, with p the predicted probability of the target item (the
  article's sum over the one-hot vector keeps only the target's term when y is one-hot).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from model.models.layers import Bf16Scoring
from model.models.neural import NeuralParams, NeuralRecommender


@dataclasses.dataclass
class MTAWParams(NeuralParams):
    hidden_size: int = 100
    gamma: float = 2.0  # AW loss focus (article: 2 on Tmall, 6 on RetailRocket); 0 = cross-entropy
    scale: float = 12.0  # s in softmax(s * cosine)
    dropout: float = 0.1
    max_positions: int = 200
    reverse_positions: bool = True  # p_i by distance from the last click (False: from the first)
    attention_residual: bool = True  # L' = Attention(...) + X: a residual around the attention too
    bf16: bool = True  # training only: the scoring product (B x d x n_items) in bfloat16


def aw_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Adaptive-weight loss: -(2 - 2p)^γ log p averaged over the batch; plain cross-entropy at γ = 0."""
    logp = F.log_softmax(logits.float(), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    if gamma == 0:
        return -logp.mean()
    weight = (2.0 - 2.0 * logp.exp()).pow(gamma)
    return -(weight * logp).mean()


def causal_mask(seq: torch.Tensor) -> torch.Tensor:
    """(B, L, L) True where query position t may attend to key position j: j <= t and j is a real click."""
    length = seq.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
    return lower.unsqueeze(0) & (seq > 0).unsqueeze(1)


class MTAW(Bf16Scoring, nn.Module):
    def __init__(self, n_items: int, p: MTAWParams) -> None:
        super().__init__()
        d = p.hidden_size
        self.p = p
        self.embedding = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.position = nn.Embedding(p.max_positions, d)
        self.track_query = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.norm = nn.LayerNorm(d)
        self.enhance_query = nn.Linear(d, d)
        self.dropout = nn.Dropout(p.dropout)
        nn.init.normal_(self.embedding.weight, std=1.0 / math.sqrt(d))
        nn.init.normal_(self.position.weight, std=1.0 / math.sqrt(d))
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def instant_interests(self, seq: torch.Tensor) -> torch.Tensor:
        """L (B, L, d): l_t attends over x_1..x_t only (one causal-masked attention for all prefixes)."""
        seq = seq[:, -self.p.max_positions :] if seq.shape[1] > self.p.max_positions else seq
        d = self.embedding.embedding_dim
        positions = torch.arange(seq.shape[1], device=seq.device).expand(len(seq), -1)
        if self.p.reverse_positions:
            lengths = (seq > 0).sum(dim=1, keepdim=True)
            positions = (lengths - 1 - positions).clamp(min=0)
        x = self.dropout(self.embedding(seq) + self.position(positions))
        q = F.relu(self.track_query(x))
        att = (q @ x.transpose(1, 2)) / math.sqrt(d)
        att = att.masked_fill(~causal_mask(seq), -torch.inf)
        att = torch.softmax(att, dim=-1).nan_to_num(0.0)  # padding rows see nothing: zeros, not NaN
        tracked = att @ x + x if self.p.attention_residual else att @ x
        return self.norm(tracked + self.dropout(self.ffn(tracked)))

    def session_vector(self, seq: torch.Tensor) -> torch.Tensor:
        interests = self.instant_interests(seq)
        seq = seq[:, -interests.shape[1] :]
        mask = seq > 0
        last = interests[torch.arange(len(seq), device=seq.device), mask.sum(dim=1).clamp(min=1) - 1]
        q = F.relu(self.enhance_query(last)).unsqueeze(1)  # (B, 1, d)
        att = (q @ interests.transpose(1, 2)).squeeze(1) / math.sqrt(interests.shape[-1])
        att = torch.softmax(att.masked_fill(~mask, -torch.inf), dim=-1)
        return (att.unsqueeze(-1) * interests).sum(dim=1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Scaled cosine scores (B, n_items + 1); column 0 (padding) is -inf."""
        o = F.normalize(self.session_vector(seq), dim=-1)
        if self.training and self.p.bf16:
            items = F.normalize(self.embedding.weight, dim=-1)
            logits = (o.bfloat16() @ items.bfloat16().T).float()
        else:  # evaluation and serving: the normalised table is made once per set of weights
            logits = self.score_matrix(o, self.embedding.weight, normalize=True)
        logits = logits * self.p.scale
        logits[:, 0] = -torch.inf
        return logits

    def top_k(self, seq: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """forward's k best items (values, items), without its (B, n_items + 1) matrix at a large catalogue."""
        o = F.normalize(self.session_vector(seq), dim=-1)
        return self.top_scores(o, self.embedding.weight, k, normalize=True, scale=self.p.scale)

    def score_items(self, seq: torch.Tensor, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """forward's scores of items[j] for session rows[j] only: d multiplications each instead of a
        product with every item (the rerank's neural group scores its few hundred candidates a session)."""
        o = F.normalize(self.session_vector(seq), dim=-1)
        e = self.frozen_table(self.embedding.weight, normalize=True)[items]  # forward's normalised rows
        return (o[rows] * e).sum(dim=-1) * self.p.scale

    def loss(self, seq: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return aw_loss(self(seq), labels, self.p.gamma)


class MTAWRecommender(NeuralRecommender):
    name = "mtaw"
    Params = MTAWParams

    def build(self) -> nn.Module:
        return MTAW(self.n_items, self.params)
