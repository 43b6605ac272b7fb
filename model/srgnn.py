"""SR-GNN (Wu et al., "Session-based Recommendation with Graph Neural Networks", AAAI 2019).

A session becomes a graph: its distinct items are the nodes and each pair of consecutive clicks an edge.
A gated graph layer propagates item embeddings along the edges, soft attention pools the nodes into a
session vector with the last click as query, and the next item is scored by a dot product with every item
embedding:

    A_out[i, j] = edge(i -> j) / outdeg(i)     A_in[j, i] = edge(i -> j) / indeg(j)   (edges counted once)
    a = [A_in (H W_in + b_in) ; A_out (H W_out + b_out)]                              (message, 2d)
    z = σ(W_z a + U_z h)   r = σ(W_r a + U_r h)   h~ = tanh(W_h a + r ⊙ (U_h h))      (GRU-style update)
    h' = (1 - z) ⊙ h + z ⊙ h~                                                         (`step` times)
    α_i = qᵀ σ(W1 h_last + W2 h_i + c)    s_g = Σ_i α_i h_i    s_h = W3 [h_last ; s_g]
    ŷ = softmax(s_hᵀ E)

Where the paper is silent we follow the authors' reference code: all parameters ~ U(±1/sqrt(d)), the
attention is taken over click positions (a repeated item counts once per click), the adjacency entries are
1 whatever the number of repeats of an edge, Adam with L2 1e-5 and the learning rate divided by 10 every 3
epochs. The reference writes the update as n + z ⊙ (h - n), i.e. z and 1 - z swapped; the two are the
same model up to the sign of the gate's weights, and we keep the paper's form.

Unlike the reference, which builds every session graph with a Python loop per session per batch, the
graphs of a whole batch are built at once with tensor operations (`session_graphs`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import Bf16Scoring, uniform_init_
from model.neural import NeuralParams, NeuralRecommender


@dataclasses.dataclass
class SRGNNParams(NeuralParams):
    hidden_size: int = 100
    step: int = 1  # propagation steps of the gated graph layer
    nonhybrid: bool = False  # True: the session vector is s_g only (the paper's ablation)
    bf16: bool = True  # training only: the scoring product (B x d x n_items) in bfloat16, ~4x cheaper


class SessionGraphs(NamedTuple):
    nodes: torch.Tensor  # (B, N) item index of every node, 0 = padding node
    alias: torch.Tensor  # (B, L) node of every click position
    a_in: torch.Tensor  # (B, N, N) incoming edges normalised by in-degree
    a_out: torch.Tensor  # (B, N, N) outgoing edges normalised by out-degree
    mask: torch.Tensor  # (B, L) True at real clicks


def session_graphs(seq: torch.Tensor) -> SessionGraphs:
    """The session graphs of a right-padded batch (B, L), built with tensor ops (no loop over sessions).

    Nodes are each row's distinct items in ascending order, as np.unique gives them in the reference."""
    batch, length = seq.shape
    mask = seq > 0
    big = torch.iinfo(seq.dtype).max
    keyed = torch.where(mask, seq, big)  # padding sorts last
    sorted_items, order = keyed.sort(dim=1)
    is_new = torch.ones_like(mask)
    is_new[:, 1:] = sorted_items[:, 1:] != sorted_items[:, :-1]
    node_of_sorted = is_new.long().cumsum(dim=1) - 1
    alias = torch.empty_like(seq).scatter_(1, order, node_of_sorted)
    real_new = is_new & (sorted_items != big)
    n_nodes = int(real_new.sum(dim=1).max().clamp(min=1))
    nodes = torch.zeros(batch, n_nodes, dtype=seq.dtype, device=seq.device)
    rows = torch.arange(batch, device=seq.device).unsqueeze(1).expand(-1, length)
    nodes[rows[real_new], node_of_sorted[real_new]] = sorted_items[real_new]
    alias = torch.where(mask, alias, 0)

    adj = torch.zeros(batch, n_nodes, n_nodes, device=seq.device)
    edge = mask[:, 1:] & mask[:, :-1]
    b = rows[:, 1:][edge]
    adj[b, alias[:, :-1][edge], alias[:, 1:][edge]] = 1.0
    out_deg = adj.sum(dim=2, keepdim=True).clamp(min=1.0)
    in_deg = adj.sum(dim=1, keepdim=True).clamp(min=1.0)
    return SessionGraphs(nodes, alias, (adj / in_deg).transpose(1, 2), adj / out_deg, mask)


class GatedGraphLayer(nn.Module):
    def __init__(self, hidden_size: int, step: int = 1) -> None:
        super().__init__()
        d = hidden_size
        self.step = step
        self.edge_in = nn.Linear(d, d)  # W_in, b_in of the message along incoming edges
        self.edge_out = nn.Linear(d, d)
        self.b_iah = nn.Parameter(torch.empty(d))  # the reference's extra biases after aggregation
        self.b_oah = nn.Parameter(torch.empty(d))
        self.w_ih = nn.Linear(2 * d, 3 * d)  # [W_r; W_z; W_h] applied to the message
        self.w_hh = nn.Linear(d, 3 * d)  # [U_r; U_z; U_h] applied to the node state

    def cell(self, a_in: torch.Tensor, a_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        message = torch.cat(
            [a_in @ self.edge_in(h) + self.b_iah, a_out @ self.edge_out(h) + self.b_oah], dim=2
        )
        i_r, i_z, i_h = self.w_ih(message).chunk(3, dim=2)
        h_r, h_z, h_h = self.w_hh(h).chunk(3, dim=2)
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_h + reset * h_h)
        return (1 - update) * h + update * candidate

    def forward(self, a_in: torch.Tensor, a_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        for _ in range(self.step):
            h = self.cell(a_in, a_out, h)
        return h


class SRGNN(Bf16Scoring, nn.Module):
    def __init__(self, n_items: int, p: SRGNNParams) -> None:
        super().__init__()
        d = p.hidden_size
        self.nonhybrid = p.nonhybrid
        self.bf16 = p.bf16
        self.embedding = nn.Embedding(n_items + 1, d)
        self.gnn = GatedGraphLayer(d, p.step)
        self.w1 = nn.Linear(d, d)  # query from the last click
        self.w2 = nn.Linear(d, d)  # keys from every click
        self.q = nn.Linear(d, 1, bias=False)
        self.w3 = nn.Linear(2 * d, d, bias=False)  # hybrid embedding
        uniform_init_(self, d)

    def session_vector(self, seq: torch.Tensor) -> torch.Tensor:
        g = session_graphs(seq)
        h = self.gnn(g.a_in, g.a_out, self.embedding(g.nodes))  # (B, N, d)
        clicks = h.gather(1, g.alias.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, L, d)
        last = clicks[torch.arange(len(seq), device=seq.device), g.mask.sum(dim=1) - 1]  # (B, d)
        alpha = self.q(torch.sigmoid(self.w1(last).unsqueeze(1) + self.w2(clicks)))  # (B, L, 1)
        s_global = (alpha * clicks * g.mask.unsqueeze(-1)).sum(dim=1)
        if self.nonhybrid:
            return s_global
        return self.w3(torch.cat([last, s_global], dim=1))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores (B, n_items + 1) against every item; column 0 (padding) is -inf so it never wins."""
        s = self.session_vector(seq)
        if self.training and self.bf16:
            logits = (s.bfloat16() @ self.embedding.weight.bfloat16().T).float()
        else:
            logits = self.score_matrix(s, self.embedding.weight)
        logits[:, 0] = -torch.inf  # in place: cheaper than scoring a slice (whose gradient is a full copy)
        return logits

    def loss(self, seq: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(seq), labels)


class SRGNNRecommender(NeuralRecommender):
    name = "srgnn"
    Params = SRGNNParams

    def build(self) -> nn.Module:
        return SRGNN(self.n_items, self.params)
