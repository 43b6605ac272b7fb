import itertools

import numpy as np
import torch

from model.lifecycle.experiment import fit_model, make_model
from model.models.srgnn import SRGNN, SessionGraphs, SRGNNParams, session_graphs
from tests.learning import assert_beats_popularity, assert_checkpoint_round_trip

HALF = 0.5


def dense_adjacency(g: SessionGraphs, nodes: range) -> tuple[list, list]:
    """(A_in, A_out) of the sessions whose nodes are `nodes`, as the article writes them."""
    n, first = len(nodes), nodes.start
    a_in, a_out = torch.zeros(n, n), torch.zeros(n, n)
    edges = zip(g.src.tolist(), g.dst.tolist(), g.in_weight.tolist(), g.out_weight.tolist(), strict=True)
    for s, d, w_in, w_out in edges:
        if s in nodes:
            a_in[d - first, s - first] = w_in
            a_out[s - first, d - first] = w_out
    return a_in.tolist(), a_out.tolist()


def test_adjacency_of_the_article_example():
    """Session (1, 2, 3, 2, 4): v2 has outgoing edges to v3 and v4 and incoming ones from v1 and v3."""
    g = session_graphs(torch.tensor([[1, 2, 3, 2, 4]]))
    assert g.items.tolist() == [1, 2, 3, 4]
    assert g.click_node.tolist() == [0, 1, 2, 1, 3]
    assert g.last_node.tolist() == [3]
    outgoing = [[0, 1, 0, 0], [0, 0, HALF, HALF], [0, 1, 0, 0], [0, 0, 0, 0]]
    incoming = [[0, 0, 0, 0], [HALF, 0, HALF, 0], [0, 1, 0, 0], [0, 1, 0, 0]]
    assert dense_adjacency(g, range(4)) == (incoming, outgoing)


def test_batched_graphs_equal_one_by_one_and_ignore_padding():
    seqs = [[5, 5, 6], [7, 8, 7, 9, 8, 7], [3]]
    width = max(map(len, seqs))
    together = session_graphs(torch.tensor([s + [0] * (width - len(s)) for s in seqs]))
    assert together.click_session.tolist() == [row for row, s in enumerate(seqs) for _ in s]
    first = 0
    for row, s in enumerate(seqs):
        alone = session_graphs(torch.tensor([s]))
        nodes = range(first, first + len(alone.items))
        assert together.items[first : nodes.stop].tolist() == alone.items.tolist()
        assert together.click_node[together.click_session == row].tolist() == [
            first + n for n in alone.click_node.tolist()
        ]
        assert together.last_node[row] == first + alone.last_node[0]
        assert dense_adjacency(together, nodes) == dense_adjacency(alone, range(len(alone.items)))
        first = nodes.stop
    assert len(together.items) == first  # no padding node


def reference_session_vector(net: SRGNN, seqs: list[list[int]]) -> torch.Tensor:
    """The reference code's padded computation: a Python loop builds each session's (N x N) matrices
    (np.unique nodes, 0/1 edges, divided by the degree sums), then dense bmm propagation over
    padded nodes and masked attention over padded clicks."""
    width = max(map(len, seqs))
    n_max = max(len(np.unique(s)) for s in seqs)
    nodes, a_in, a_out, alias = [], [], [], []
    for s in seqs:
        node = np.unique(s)
        a = np.zeros((n_max, n_max))
        for u, v in itertools.pairwise(s):
            a[np.where(node == u)[0][0], np.where(node == v)[0][0]] = 1
        deg_in, deg_out = a.sum(0), a.sum(1)
        deg_in[deg_in == 0], deg_out[deg_out == 0] = 1, 1
        a_out.append(a / deg_out[:, None])
        a_in.append((a / deg_in).T)
        nodes.append(list(node) + [0] * (n_max - len(node)))
        alias.append([int(np.where(node == i)[0][0]) for i in s] + [0] * (width - len(s)))
    a_in_t, a_out_t = (torch.tensor(np.array(a), dtype=torch.float32) for a in (a_in, a_out))
    h = net.embedding(torch.tensor(nodes))
    gnn = net.gnn
    for _ in range(gnn.step):
        message = torch.cat(
            [a_in_t @ gnn.edge_in(h) + gnn.b_iah, a_out_t @ gnn.edge_out(h) + gnn.b_oah], dim=2
        )
        i_r, i_z, i_h = gnn.w_ih(message).chunk(3, dim=2)
        h_r, h_z, h_h = gnn.w_hh(h).chunk(3, dim=2)
        update = torch.sigmoid(i_z + h_z)
        h = (1 - update) * h + update * torch.tanh(i_h + torch.sigmoid(i_r + h_r) * h_h)
    clicks = torch.stack([h[b, alias[b]] for b in range(len(seqs))])  # (B, L, d)
    mask = torch.tensor([[1.0] * len(s) + [0.0] * (width - len(s)) for s in seqs]).unsqueeze(-1)
    last = torch.stack([clicks[b, len(s) - 1] for b, s in enumerate(seqs)])
    alpha = net.q(torch.sigmoid(net.w1(last).unsqueeze(1) + net.w2(clicks)))
    return net.w3(torch.cat([last, (alpha * clicks * mask).sum(dim=1)], dim=1))


def test_packed_graph_layer_computes_what_the_padded_reference_computes():
    torch.manual_seed(0)
    net = SRGNN(n_items=30, p=SRGNNParams(hidden_size=16, step=2))
    rng = np.random.default_rng(1)
    seqs = [[int(i) for i in rng.integers(1, 12, size=rng.integers(1, 9))] for _ in range(25)]
    width = max(map(len, seqs))
    ours = net.session_vector(torch.tensor([s + [0] * (width - len(s)) for s in seqs]))
    torch.testing.assert_close(ours, reference_session_vector(net, seqs), rtol=1e-5, atol=1e-6)


def test_forward_shapes_and_padding_never_wins():
    net = SRGNN(n_items=30, p=SRGNNParams(hidden_size=16)).eval()
    logits = net(torch.tensor([[1, 2, 3], [4, 0, 0]]))
    assert logits.shape == (2, 31)
    assert torch.isinf(logits[:, 0]).all() and torch.isfinite(logits[:, 1:]).all()
    bound = 1 / np.sqrt(16)
    assert all(float(p.detach().abs().max()) <= bound + 1e-6 for p in net.parameters())


def test_tiny_srgnn_learns_the_synthetic_stream(tiny_data, tmp_path):
    sets = {"hidden_size": 32, "batch_size": 64, "lr": 0.005, "bf16": False}
    model = make_model("srgnn", tiny_data, sets=sets, epochs=4)
    history = fit_model(model, tiny_data)
    assert history["best_epoch"] is not None
    assert_beats_popularity(model, tiny_data)
    # a checkpoint reproduces the scores exactly, and recommend() gives k real items
    loaded, meta = assert_checkpoint_round_trip(model, tiny_data, tmp_path / "ck")
    items, _ = loaded.recommend(tiny_data.test.prefixes(range(8)), k=5, exclude_seen=True)
    assert items.shape == (8, 5) and (items > 0).all()
    assert meta["params"]["hidden_size"] == 32
