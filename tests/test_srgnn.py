import numpy as np
import torch

from model.srgnn import SRGNN, SRGNNParams, session_graphs
from model.training import fit_model, make_model
from tests.learning import assert_beats_popularity, assert_checkpoint_round_trip

HALF = 0.5


def test_adjacency_of_the_article_example():
    """Session (1, 2, 3, 2, 4): v2 has outgoing edges to v3 and v4 and incoming ones from v1 and v3."""
    g = session_graphs(torch.tensor([[1, 2, 3, 2, 4]]))
    assert g.nodes.tolist() == [[1, 2, 3, 4]]
    assert g.alias.tolist() == [[0, 1, 2, 1, 3]]
    outgoing = [[0, 1, 0, 0], [0, 0, HALF, HALF], [0, 1, 0, 0], [0, 0, 0, 0]]
    incoming = [[0, 0, 0, 0], [HALF, 0, HALF, 0], [0, 1, 0, 0], [0, 1, 0, 0]]
    assert g.a_out[0].tolist() == outgoing
    assert g.a_in[0].tolist() == incoming


def test_batched_graphs_equal_one_by_one_and_ignore_padding():
    seqs = [[5, 5, 6], [7, 8, 7, 9, 8], [3]]
    width = max(map(len, seqs))
    batch = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    together = session_graphs(batch)
    for row, s in enumerate(seqs):
        alone = session_graphs(torch.tensor([s]))
        n = alone.nodes.shape[1]
        assert together.nodes[row, :n].tolist() == alone.nodes[0].tolist()
        assert (together.nodes[row, n:] == 0).all()
        assert torch.equal(together.a_in[row, :n, :n], alone.a_in[0])
        assert torch.equal(together.a_out[row, :n, :n], alone.a_out[0])
        assert together.a_out[row, n:].abs().sum() == 0


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
