import math

import numpy as np
import pytest
import torch

from model.data.sessions import Sessions
from model.data.vocab import ItemVocab
from model.lifecycle.checkpoint import load_checkpoint, save_checkpoint
from model.lifecycle.experiment import evaluate_model, fit_model, make_model
from model.models.gru4rec import (
    GRU4RecParams,
    GRU4RecRecommender,
    NegativeSampler,
    gru4rec_loss,
    repeat_by_dwell,
    session_parallel,
)


def test_session_parallel_hand_example():
    # sessions: A=[a0 a1 a2], B=[b0 b1], C=[c0] (too short, skipped), D=[d0 d1 d2 d3], E=[e0 e1]
    s = Sessions.from_lists([[1, 2, 3], [4, 5], [6], [7, 8, 9, 10], [11, 12]])
    steps = list(session_parallel(s.offsets, batch_size=2))
    items = s.items
    got = [(items[i].tolist(), items[o].tolist(), r.tolist(), sess.tolist()) for i, o, r, sess in steps]
    assert got == [
        ([1, 4], [2, 5], [True, True], [0, 1]),  # A in slot 0, B in slot 1
        ([2, 7], [3, 8], [False, True], [0, 3]),  # B ended: D takes slot 1 and is reset
        ([11, 8], [12, 9], [True, False], [4, 3]),  # A ended: E takes slot 0
        # E ends and no session is left: the epoch stops (D's last step is dropped, as in the reference)
    ]


def test_losses_match_their_formulas():
    torch.manual_seed(0)
    r = torch.randn(3, 5)
    t = r.diagonal()

    def neg(i):
        return [j for j in range(5) if j != i]

    sig = torch.sigmoid
    ce = sum(-torch.log(torch.exp(r[i, i]) / torch.exp(r[i]).sum()) for i in range(3))
    assert torch.allclose(gru4rec_loss(r, "cross-entropy"), ce, atol=1e-5)

    def softmax_neg(i):
        e = torch.exp(r[i, neg(i)])
        return e / e.sum()

    bprmax = sum(
        -torch.log((softmax_neg(i) * sig(t[i] - r[i, neg(i)])).sum())
        + 0.5 * (softmax_neg(i) * r[i, neg(i)] ** 2).sum()
        for i in range(3)
    )
    assert torch.allclose(gru4rec_loss(r, "bpr-max", bpreg=0.5), bprmax, atol=1e-5)
    top1max = sum(
        (softmax_neg(i) * (sig(r[i, neg(i)] - t[i]) + sig(r[i, neg(i)] ** 2))).sum() for i in range(3)
    )
    assert torch.allclose(gru4rec_loss(r, "top1-max"), top1max, atol=1e-5)
    bpr = sum(-torch.log(sig(t[i] - r[i, neg(i)])).mean() for i in range(3))
    assert torch.allclose(gru4rec_loss(r, "bpr"), bpr, atol=1e-5)
    top1 = sum((sig(r[i, neg(i)] - t[i]) + sig(r[i, neg(i)] ** 2)).mean() for i in range(3))
    assert torch.allclose(gru4rec_loss(r, "top1"), top1, atol=1e-5)


def test_sampler_follows_support_power_alpha():
    counts = np.array([0, 100, 10, 1, 0])
    sampler = NegativeSampler(counts, alpha=1.0, n_sample=1000, store=100_000, seed=0)
    draws = np.concatenate([sampler() for _ in range(100)])
    freq = np.bincount(draws, minlength=5) / len(draws)
    assert freq[0] == 0 and freq[4] == 0
    assert abs(freq[1] - 100 / 111) < 0.01 and abs(freq[3] - 1 / 111) < 0.005
    uniform = NegativeSampler(counts, alpha=0.0, n_sample=1000, store=100_000, seed=0)
    freq0 = np.bincount(np.concatenate([uniform() for _ in range(50)]), minlength=5) / 50_000
    assert abs(freq0[1] - 1 / 4) < 0.02 and abs(freq0[4] - 1 / 4) < 0.02  # count 0 ** 0 = 1: uniform


def test_dwell_time_repeats_clicks():
    s = Sessions.from_lists([[1, 2, 3], [4]], times=[[0.0, 25.0, 30.0], [100.0]])
    out = repeat_by_dwell(s, seconds=10.0)
    # dwell 25 s -> 3 copies, 5 s -> 1, last click -> 1
    assert out.to_lists() == [[1, 1, 1, 2, 3], [4]]


@pytest.mark.parametrize(
    "variant", [{}, {"constrained_embedding": False, "embedding": 8}, {"constrained_embedding": False}]
)
def test_incremental_inference_equals_recomputation(variant):
    vocab = ItemVocab([str(i) for i in range(1, 31)])
    model = GRU4RecRecommender(vocab, GRU4RecParams(layers=[16, 12], **variant))
    sessions = [np.array([3, 7, 7, 2]), np.array([5]), np.array([9, 1, 30])]
    state = model.initial_state(3)
    width = max(map(len, sessions))
    last_scores = [None] * 3
    for t in range(width):
        live = [i for i, s in enumerate(sessions) if len(s) > t]
        scores, new = model.step(torch.tensor([sessions[i][t] for i in live]), state[live])
        state[live] = new
        for row, i in enumerate(live):
            last_scores[i] = scores[row]
    full = model.score(sessions)
    for i in range(3):
        assert torch.allclose(full[i, 1:], last_scores[i][1:], atol=1e-5)


def test_gru4rec_learns_and_round_trips(tiny_data, tmp_path):
    sets = {"layers": "48", "n_sample": "64", "batch_size": "32", "loss": "bpr-max", "momentum": "0.1"}
    model = make_model("gru4rec", tiny_data, sets=sets, epochs=3)
    history = fit_model(model, tiny_data)
    assert len(history["epochs"]) == 3 and history["epochs"][0]["events_per_s"] > 0
    got = evaluate_model(model, tiny_data)
    pop = make_model("pop", tiny_data)
    fit_model(pop, tiny_data)
    assert got["recall@20"] > evaluate_model(pop, tiny_data)["recall@20"] + 0.1
    loaded, meta = load_checkpoint(save_checkpoint(model, tmp_path / "g"))
    assert meta["params"]["layers"] == [48]
    sessions = tiny_data.test.prefixes(range(5))
    assert torch.allclose(loaded.score(sessions), model.score(sessions))
    assert math.isfinite(history["epochs"][-1]["loss"])


def test_hrnn_is_not_offered_since_nothing_could_use_its_user_state(capsys):
    """It was trained, then ignored: evaluation, serving and the session log started every session from
    zeros. Asked for, it is one clear line, not a silently useless model."""
    from stream.cli import main

    argv = ["train", "--model", "gru4rec", "--data", "synthetic:100", "--set", "hrnn=true", "--quiet"]
    assert main(argv) == 2
    assert "unknown hyperparameter" in capsys.readouterr().err
