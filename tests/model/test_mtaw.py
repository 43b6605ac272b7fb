import math

import torch
import torch.nn.functional as F

from model.lifecycle.experiment import fit_model, make_model
from model.models.mtaw import MTAW, MTAWParams, aw_loss, causal_mask
from tests.learning import assert_beats_popularity, assert_checkpoint_round_trip


def test_the_causal_mask_lets_no_prefix_see_a_later_click():
    torch.manual_seed(0)
    net = MTAW(n_items=50, p=MTAWParams(hidden_size=16, dropout=0.0)).eval()
    seq = torch.tensor([[3, 7, 9, 4, 0, 0], [5, 6, 7, 8, 9, 10]])
    later = seq.clone()
    later[:, 2:] = torch.tensor([[11, 12, 0, 0], [13, 14, 15, 16]])  # change everything from click 3 on
    with torch.no_grad():
        a, b = net.instant_interests(seq), net.instant_interests(later)
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-6)  # l_1, l_2 see only clicks 1..2
    assert not torch.allclose(a[:, 2], b[:, 2])
    mask = causal_mask(seq)
    assert mask[0].tolist()[3] == [True, True, True, True, False, False]
    assert not mask[0, 1, 2] and not mask[1].triu(1).any()


def test_the_aw_loss_follows_its_formula_and_is_cross_entropy_at_gamma_zero():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    p = torch.softmax(logits, dim=1)[[0, 1], labels]  # 0.6652, 0.0706
    by_hand = -sum((2 - 2 * float(pi)) ** 2 * math.log(float(pi)) for pi in p) / 2
    assert abs(float(aw_loss(logits, labels, 2.0)) - by_hand) < 1e-5
    assert torch.allclose(aw_loss(logits, labels, 0.0), F.cross_entropy(logits, labels))
    # the easy sample (p = 0.67) counts less than under cross-entropy, the hard one (p = 0.07) more
    assert (2 - 2 * p[0]) ** 2 < 1 < (2 - 2 * p[1]) ** 2


def test_tiny_mtaw_learns_the_synthetic_stream(tiny_data, tmp_path):
    sets = {"hidden_size": 32, "batch_size": 64, "lr": 0.003, "bf16": False}
    model = make_model("mtaw", tiny_data, sets=sets, epochs=4)
    fit_model(model, tiny_data)
    assert_beats_popularity(model, tiny_data)
    assert_checkpoint_round_trip(model, tiny_data, tmp_path / "ck")


def test_mtaw_serves_in_bfloat16_like_the_stream_does(tiny_data):
    """The stream sets scoring_bf16 and calls recommend under inference mode (this once crashed: the
    cached table was keyed on a tensor made in inference mode, which has no version counter)."""
    model = make_model("mtaw", tiny_data, sets={"hidden_size": 32}, epochs=1)
    fit_model(model, tiny_data)
    sessions = tiny_data.test.prefixes(range(16))
    exact, _ = model.recommend(sessions, k=20)
    model.net.scoring_bf16 = True
    with torch.inference_mode():
        fast, scores = model.recommend(sessions, k=20)
    assert torch.isfinite(scores).all()
    overlap = [len(set(a) & set(b)) / 20 for a, b in zip(exact.tolist(), fast.tolist(), strict=True)]
    assert sum(overlap) / len(overlap) > 0.8


def test_scores_follow_every_training_step(tiny_data):
    """Fused Adam moves the weights without bumping their version: a score after more training must use
    the new item table, not the copy cached when the model was last scored (validation epochs did)."""
    model = make_model("mtaw", tiny_data, sets={"hidden_size": 32}, epochs=1)
    fit_model(model, tiny_data)
    sessions = tiny_data.test.prefixes(range(8))
    cached = model.score(sessions)
    model.fit(tiny_data.train, None)  # one more epoch, in place
    fresh = make_model("mtaw", tiny_data, sets={"hidden_size": 32}, epochs=1)
    fresh.load_state_tensors(model.state_tensors())
    assert not torch.equal(model.score(sessions), cached)
    assert torch.equal(model.score(sessions), fresh.score(sessions))
