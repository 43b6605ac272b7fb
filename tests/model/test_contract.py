"""The contract every model in the zoo keeps (after river's `check_estimator`): a model is checked by being
in `model.models.zoo.MODELS`, with nothing written for it here but, optionally, a tinier configuration.

Each model is fitted once on the synthetic world (`tiny_data`) the way the CLI fits it
(`make_model` + `fit_model`), and then:
- a checkpoint gives identical answers (scores and top-k);
- padding and unknown items are never recommended: every recommended index is an item of the vocabulary,
  each once, and a full ranking holds every item exactly once;
- `exclude_seen` keeps the session's own items out;
- incremental inference (the stream's state cache: `final_states` of the history, then `step` with the
  last click) equals recomputation from the first click, where a model has it;
- `recommend` (and `step_top`, the stream's cached path) gives `score`'s (`step`'s) top k, also where a
  large catalogue is scored in chunks, in float32 and in serving's bfloat16;
- a session's answer does not depend on the other sessions in its batch, their order or the batch size,
  and the evaluation's metrics do not depend on its batch size;
- it learns: clearly above a uniformly random ranking, and a model other than popularity clearly above
  popularity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.data.dataset import SessionData
from model.lifecycle.checkpoint import load_checkpoint, save_checkpoint
from model.lifecycle.experiment import epoch_field, evaluate_model, fit_model, make_model
from model.models.base import Recommender
from model.models.layers import Bf16Scoring
from model.models.zoo import MODELS, model_class

# Smaller than the defaults so the suite stays quick on 2 cores; a model not listed is fitted with its
# defaults (at most 3 epochs where it trains in epochs).
TINY: dict[str, dict[str, Any]] = {
    "srgnn": {"hidden_size": 32, "batch_size": 64, "lr": 0.005, "bf16": False, "epochs": 4},
    "mtaw": {"hidden_size": 32, "batch_size": 64, "lr": 0.003, "bf16": False, "epochs": 4},
    "gru4rec": {
        "layers": [48],
        "n_sample": 64,
        "batch_size": 32,
        "loss": "bpr-max",
        "momentum": 0.1,
        "epochs": 3,
    },
}
ATOL = 1e-5


@pytest.fixture(scope="module", params=sorted(MODELS))
def fitted(request, tiny_data) -> Recommender:
    name = request.param
    sets = dict(TINY.get(name, {}))
    epochs = sets.pop("epochs", None)
    defaults = model_class(name).Params()
    if epochs is None and (field := epoch_field(defaults)):
        epochs = min(3, getattr(defaults, field))
    model = make_model(name, tiny_data, sets=sets, epochs=epochs)
    fit_model(model, tiny_data)
    return model


def prefixes(data: SessionData, n: int) -> list[np.ndarray]:
    return data.test.prefixes(range(min(n, len(data.test))))


def test_a_checkpoint_gives_identical_answers(fitted, tiny_data, tmp_path: Path):
    loaded, meta = load_checkpoint(save_checkpoint(fitted, tmp_path / "ck"))
    assert meta["model"] == fitted.name and type(loaded) is type(fitted)
    sessions = prefixes(tiny_data, 64)
    assert torch.equal(loaded.score(sessions), fitted.score(sessions))
    items, scores = fitted.recommend(sessions, k=20)
    loaded_items, loaded_scores = loaded.recommend(sessions, k=20)
    assert torch.equal(loaded_items, items) and torch.equal(loaded_scores, scores)
    assert loaded.fallback is not None and loaded.fallback.to_json() == fitted.fallback.to_json()


def test_padding_and_unknown_items_are_never_recommended(fitted, tiny_data):
    n = fitted.n_items
    sessions = prefixes(tiny_data, 32)
    items, scores = fitted.recommend(sessions, k=20)
    assert items.shape == (len(sessions), 20)
    assert ((items >= 1) & (items <= n)).all(), "an index outside the vocabulary (0 is padding)"
    assert all(len(set(row)) == 20 for row in items.tolist()), "an item twice in one list"
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "a list out of score order"
    everything, _ = fitted.recommend(sessions[:4], k=n + 5)  # more than there are items: all of them, once
    assert everything.shape == (4, n)
    assert all(sorted(row) == list(range(1, n + 1)) for row in everything.tolist())
    ids = set(fitted.vocab.ids[1:])
    assert {fitted.vocab.ids[i] for i in items.flatten().tolist()} <= ids


def test_exclude_seen_keeps_the_sessions_own_items_out(fitted, tiny_data):
    sessions = prefixes(tiny_data, 64)
    items, _ = fitted.recommend(sessions, k=20, exclude_seen=True)
    for row, session in zip(items.tolist(), sessions, strict=True):
        assert not set(row) & set(session.tolist())
    with_seen, _ = fitted.recommend(sessions, k=20)
    repeats = sum(bool(set(r) & set(s.tolist())) for r, s in zip(with_seen.tolist(), sessions, strict=True))
    assert repeats > 0 or fitted.name == "pop", "no list held a seen item: the check above proved nothing"


def test_incremental_inference_equals_recomputation(fitted, tiny_data):
    if not (hasattr(fitted, "step") and hasattr(fitted, "final_states")):
        pytest.skip(f"{fitted.name} has no incremental inference")
    sessions = prefixes(tiny_data, 64)
    state = fitted.final_states([s[:-1] for s in sessions])  # what the stream caches ...
    scores, _ = fitted.step(torch.as_tensor(np.array([s[-1] for s in sessions])), state)  # ... one click on
    assert torch.allclose(scores[:, 1:], fitted.score(sessions)[:, 1:], atol=ATOL)
    # and click by click from the initial state, as a session arrives
    longest = max(sessions, key=len)
    state = fitted.initial_state(1)
    for item in longest:
        step_scores, state = fitted.step(torch.tensor([int(item)]), state)
    assert torch.allclose(step_scores[0, 1:], fitted.score([longest])[0, 1:], atol=ATOL)


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
@pytest.mark.parametrize("chunk_items", [None, 7], ids=["whole", "in-chunks"])
def test_recommend_gives_the_top_of_score(fitted, tiny_data, monkeypatch, chunk_items, bf16):
    net = getattr(fitted, "net", None)
    if (chunk_items or bf16) and not isinstance(net, Bf16Scoring):
        pytest.skip(f"{fitted.name} does not score a table of items")
    if chunk_items:
        monkeypatch.setattr(net, "chunk_items", chunk_items)  # 200 items: 29 chunks, merged
    if bf16:
        monkeypatch.setattr(net, "scoring_bf16", True)
    atol = 0.02 if bf16 else ATOL  # bfloat16 keeps 8 bits: products of another shape round apart
    sessions = prefixes(tiny_data, 64)
    k = 20
    items, values = fitted.recommend(sessions, k=k)
    scores = fitted.score(sessions).float()
    best = torch.topk(scores[:, 1:], k, dim=1).values
    assert torch.allclose(values, best, atol=atol), "not the k best scores"
    assert torch.allclose(scores.gather(1, items), values, atol=atol), "an item with another item's score"
    assert all(len(set(row)) == k for row in items.tolist()) and bool((items >= 1).all())
    if hasattr(fitted, "step_top"):
        state = fitted.final_states([s[:-1] for s in sessions])
        last = torch.as_tensor(np.array([s[-1] for s in sessions]))
        step_scores = fitted.step(last, state)[0].float()
        top_items, top_values, _ = fitted.step_top(last, state, k)
        assert torch.allclose(top_values, torch.topk(step_scores[:, 1:], k, dim=1).values, atol=atol)
        assert torch.allclose(step_scores.gather(1, top_items), top_values, atol=atol)


def test_answers_do_not_depend_on_the_batch(fitted, tiny_data):
    sessions = prefixes(tiny_data, 256)
    together = fitted.score(sessions)[:, 1:]
    alone = torch.cat([fitted.score([s])[:, 1:] for s in sessions[:16]])
    assert torch.allclose(alone, together[:16], atol=ATOL), "a session's scores moved with its batch"
    order = np.random.default_rng(0).permutation(len(sessions))
    shuffled = fitted.score([sessions[i] for i in order])[:, 1:]
    assert torch.allclose(shuffled, together[torch.as_tensor(order)], atol=ATOL)
    small = evaluate_model(fitted, tiny_data, batch_size=7)
    large = evaluate_model(fitted, tiny_data, batch_size=512)
    for key in ("recall@20", "mrr@20", "recall@10", "mrr@10"):
        assert small[key] == pytest.approx(large[key], abs=1e-6), key


def test_it_learns_on_the_synthetic_world(fitted, tiny_data):
    got = evaluate_model(fitted, tiny_data)
    random_recall = 20 / fitted.n_items  # a uniformly random ranking's expected Recall@20
    assert got["recall@20"] > 2 * random_recall
    if fitted.name == "pop":
        return
    pop = make_model("pop", tiny_data)
    fit_model(pop, tiny_data)
    base = evaluate_model(pop, tiny_data)
    assert got["recall@20"] > base["recall@20"] + 0.1
    assert got["mrr@20"] > base["mrr@20"] + 0.03
