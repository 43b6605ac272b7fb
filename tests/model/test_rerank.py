"""The re-ranker (model.models.rerank): its features equal their definitions, no test sample sees another,
evaluation changes nothing, its ablations switch what they say, and the trainer warm-starts it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data.dataset import SessionData
from model.data.sessions import Sessions, prefix_samples, split_last
from model.errors import UserError
from model.lifecycle.checkpoint import load_checkpoint, save_checkpoint
from model.lifecycle.experiment import evaluate_model, fit_model, make_model
from model.lifecycle.retrain import train_candidate
from model.models import rerank
from model.models.rerank import (
    FEATURES,
    KnnReranker,
    _gather_rows,
    _row_top,
    _scaled_entries,
    sequential_rules,
)

FAST = {"epochs": 4}


@pytest.fixture(scope="module")
def fitted(tiny_data) -> KnnReranker:
    """Every group but the neural one (tested below): the default and item2vec."""
    model = make_model("rerank", tiny_data, sets={**FAST, "features": "knn,rules,repeat,trend,embed"})
    fit_model(model, tiny_data)
    return model


def test_sequential_rules_match_their_definition():
    sessions = [[1, 2, 3, 2], [2, 4], [3, 1, 2]]
    m = sequential_rules(Sessions.from_lists(sessions), n_items=4, steps=2).toarray()
    direct = np.zeros((5, 5))
    for s in sessions:
        for i, a in enumerate(s):
            for d in (1, 2):
                if i + d < len(s):
                    direct[a, s[i + d]] += 1.0 / d
    np.testing.assert_allclose(m, direct, rtol=1e-6)


def test_row_top_is_each_rows_best_k_with_ties_to_the_smaller_item():
    rng = np.random.default_rng(0)
    width, k = 60, 7
    keys = np.sort(
        np.concatenate([r * width + rng.choice(np.arange(1, width), 25, replace=False) for r in range(8)])
    )
    values = rng.integers(0, 5, len(keys)).astype(np.float32)  # many ties
    want = []
    for r in range(8):
        mine = [(-values[j], keys[j]) for j in range(len(keys)) if keys[j] // width == r]
        want += [key for _, key in sorted(mine)[:k]]
    assert sorted(_row_top(keys, values, width, k).tolist()) == sorted(want)


def test_rule_rows_made_at_indexing_equal_the_rows_scaled_at_a_call(fitted, tiny_data):
    """The rows a call gathers equal the rules rows of its last clicks scaled by their maxima, and each item's
    best targets made at indexing equal that row's best `rules_candidates`."""
    width = tiny_data.vocab.n_items + 1
    raw = sequential_rules(
        Sessions(fitted.session_offsets, fitted.session_items),
        tiny_data.vocab.n_items,
        fitted.params.rules_steps,
    )
    last = np.array([5, 9, 5, 1, 0, width - 1])
    keys, values = _gather_rows(fitted.rules, last, width)
    want_keys, want_values = _scaled_entries(raw[last], width)
    assert np.array_equal(keys, want_keys) and np.array_equal(values, want_values)
    best = _row_top(want_keys, want_values, width, fitted.params.rules_candidates)
    for row, item in enumerate(last):
        mine = sorted(key % width for key in best if key // width == row)
        assert sorted(i for i in fitted.rules_top[item].tolist() if i) == mine


def test_candidate_features_follow_the_session(fitted):
    session = np.array([5, 9, 5, 7], dtype=np.int64)
    c = fitted.candidates([session])
    items = c.items[0][c.mask[0]]
    features = {f: c.features[0][c.mask[0]][:, i] for i, f in enumerate(FEATURES)}
    at = {int(item): row for row, item in enumerate(items)}
    assert {5, 9, 7} <= set(at)  # the session's own items are always candidates
    assert features["log_count"][at[5]] == pytest.approx(np.log1p(2))
    assert features["recency"][at[5]] == pytest.approx(1 / 2)  # latest 5 is two clicks from the end
    assert features["recency"][at[7]] == 1.0 and features["is_last"][at[7]] == 1.0
    assert features["is_last"][at[9]] == 0.0
    assert features["repeat_share"][0] == pytest.approx(1 - 3 / 4)
    others = [row for item, row in at.items() if item not in (5, 7, 9)]
    assert others and np.all(features["in_session"][others] == 0)
    assert features["knn"].max() == pytest.approx(1.0)  # scaled by the row's maximum


def test_recent_popularity_counts_the_newest_sessions_only(tiny_data):
    """The trend feature: an item's clicks among the newest `trend_fraction` of the indexed sessions (time
    order), log-scaled by the most clicked one's there; older clicks do not count."""
    sessions = [[1, 1, 1, 1], [2, 3], [1, 2], [3, 3, 4], [4, 3]]  # the newest two: [3, 3, 4], [4, 3]
    params = dataclasses.replace(KnnReranker.Params(), trend_fraction=0.4, features="knn,rules,repeat,trend")
    model = KnnReranker(tiny_data.vocab, params)
    model._index(Sessions.from_lists(sessions))
    counts = {1: 0, 2: 0, 3: 3, 4: 2}
    for item, n in counts.items():
        assert model.log_recent_popularity[item] == pytest.approx(np.log1p(n) / np.log1p(3))
    c = model.candidates([np.array([1, 3], dtype=np.int64)])
    column = c.features[0][c.mask[0]][:, FEATURES.index("recent_popularity")]
    assert np.array_equal(column, model.log_recent_popularity[c.items[0][c.mask[0]]])
    assert "recent_popularity" in {FEATURES[i] for i in model.active.tolist()}


def test_item_vectors_put_items_of_the_same_sessions_together(tiny_data):
    """The embed group: item2vec over the indexed sessions; items clicked in the same sessions end up close,
    and each candidate's features are its cosines with the last click and with the session's vector."""
    rng = np.random.default_rng(0)
    group = np.arange(1, 61) // 31  # items 1..30 and 31..60: each session stays in one group
    sessions = [list(rng.choice(np.arange(1, 31) + 30 * (j % 2), 5)) for j in range(2000)]
    params = dataclasses.replace(KnnReranker.Params(), features="knn,rules,repeat,embed")
    model = KnnReranker(tiny_data.vocab, params)
    model._index(Sessions.from_lists(sessions))
    model._embed(Sessions.from_lists(sessions))
    cosine = model.item_vectors @ model.item_vectors.T
    for a in range(1, 61):  # each item is nearer its own group than the other, on average
        own = [cosine[a, b] for b in range(1, 61) if b != a and group[b - 1] == group[a - 1]]
        others = [cosine[a, b] for b in range(1, 61) if group[b - 1] != group[a - 1]]
        assert np.mean(own) > np.mean(others), a
    assert not model.item_vectors[61:].any()  # never clicked: no vector
    first = model.item_vectors
    model._embed(Sessions.from_lists(sessions))
    assert np.array_equal(model.item_vectors, first)  # a fit repeats to the bit
    c = model.candidates([np.array([2], dtype=np.int64)])
    items = c.items[0][c.mask[0]]
    last = c.features[0][c.mask[0]][:, FEATURES.index("embed_last")]
    whole = c.features[0][c.mask[0]][:, FEATURES.index("embed_session")]
    np.testing.assert_allclose(last, cosine[2, items], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole, last, rtol=1e-5, atol=1e-6)  # one click: the session is that item


def test_no_test_sample_sees_another(fitted, tiny_data: SessionData, tmp_path: Path):
    """A checkpoint's metrics on a test set equal those on the same set shuffled, and at batch sizes 1 and
    512: the kNN part, the rules, the repeat features and the scorer all look at one session at a time."""
    model, _ = load_checkpoint(save_checkpoint(fitted, tmp_path / "ck"))
    test = tiny_data.test.select(np.arange(300))
    data = SessionData(tiny_data.name, tiny_data.vocab, tiny_data.train, test)
    shuffled = SessionData(
        data.name, data.vocab, data.train, test.select(np.random.default_rng(0).permutation(len(test)))
    )
    runs = [
        evaluate_model(model, data, batch_size=512),
        evaluate_model(model, data, batch_size=1),
        evaluate_model(model, shuffled, batch_size=512),
        evaluate_model(model, shuffled, batch_size=7),
    ]
    for other in runs[1:]:
        for key in ("recall@10", "mrr@10", "recall@20", "mrr@20"):
            assert other[key] == pytest.approx(runs[0][key], abs=1e-9), key


def test_a_session_gets_the_same_bits_alone_and_in_a_batch(fitted, tiny_data: SessionData):
    """The worker answers a session inside whatever batch it arrived with; the list must not change."""
    sessions = tiny_data.test.prefixes(range(64))
    together = fitted.score(sessions)
    items, values = fitted.recommend(sessions, k=20)
    for i in (0, 17, 63):
        assert torch.equal(fitted.score([sessions[i]])[0], together[i])
        alone_items, alone_values = fitted.recommend([sessions[i]], k=20)
        assert torch.equal(alone_items[0], items[i]) and torch.equal(alone_values[0], values[i])


def test_the_exact_scorer_gives_the_same_bits_in_chunks(fitted, tiny_data: SessionData, monkeypatch):
    """Serving scores a large batch's candidates `EXACT_CHUNK` at a time (the caches); the bits must not move."""
    candidates = fitted.candidates(tiny_data.test.prefixes(range(256)))
    whole = fitted._candidate_scores(candidates, exact=True)
    monkeypatch.setattr(rerank, "EXACT_CHUNK", 7)
    assert candidates.mask.sum() > 100 * 7, "too few candidates to make many chunks"
    assert torch.equal(fitted._candidate_scores(candidates, exact=True), whole)


def test_equal_scores_are_ordered_by_item_in_every_batch(fitted, tiny_data: SessionData):
    """Ties (candidates with the same features score the same) must not be ordered by the sort's whim."""
    sessions = tiny_data.test.prefixes(range(64))
    items, values = fitted.recommend(sessions, k=50)
    tied = 0
    for row_items, row_values in zip(items, values, strict=True):
        for j in range(49):
            if row_values[j] == row_values[j + 1] and torch.isfinite(row_values[j]):
                assert row_items[j] < row_items[j + 1]
                tied += 1
    assert tied > 0  # the check above ran


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_recommend_is_the_top_of_the_full_ranking(fitted, tiny_data: SessionData, exclude_seen: bool):
    """The worker's `recommend` skips the full score matrix; it must answer what that matrix ranks first,
    also where a session has fewer candidates than k (k = 150 here)."""
    sessions = tiny_data.test.prefixes(range(40))
    full = fitted.score(sessions)
    full[:, 0] = -torch.inf
    if exclude_seen:
        for row, s in enumerate(sessions):
            full[row, torch.from_numpy(s)] = -torch.inf
    items, values = fitted.recommend(sessions, k=150, exclude_seen=exclude_seen)
    assert torch.equal(values, torch.topk(full, 150, dim=1).values)
    assert torch.equal(full.gather(1, items), values)  # each item carries its own full-ranking score
    assert all(len(set(row.tolist())) == 150 for row in items)


def test_evaluation_builds_nothing_from_the_test_split(fitted, tiny_data: SessionData):
    before = {k: v.clone() for k, v in fitted.state_tensors().items()}
    probe = tiny_data.test.prefixes(range(20))
    scores = fitted.score(probe)
    evaluate_model(fitted, tiny_data)
    after = fitted.state_tensors()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(fitted.score(probe), scores)


def test_it_beats_vsknn_where_visitors_come_back(tiny_data: SessionData):
    """On a world where a third of the next clicks go back to an item already seen, learning when to
    repeat pays: the re-ranker's MRR@20 beats V-SKNN's (0.400 against 0.366 when written)."""
    rng = np.random.default_rng(1)
    sessions = []
    for s in tiny_data.train:
        s = s.tolist()
        for i in range(2, len(s)):
            if rng.random() < 0.35:
                s[i] = s[rng.integers(0, i)]
        sessions.append(s)
    train = Sessions.from_lists(sessions[:1200])
    from model.data.sessions import prefix_samples

    data = SessionData(
        "repeats", tiny_data.vocab, train, prefix_samples(Sessions.from_lists(sessions[1200:]))
    )
    results = {}
    for name in ("vsknn", "rerank"):
        model = make_model(name, data, sets=FAST if name == "rerank" else None)
        fit_model(model, data)
        results[name] = evaluate_model(model, data)
    assert results["rerank"]["mrr@20"] > results["vsknn"]["mrr@20"] + 0.015, results


def test_feature_groups_switch_off(tiny_data: SessionData):
    model = make_model("rerank", tiny_data, sets={"features": "knn", "epochs": 1})
    fit_model(model, tiny_data)
    read = {FEATURES[i] for i in model.active.tolist()}
    assert read == {"knn", "sqrt_knn", "popularity", "log_length"}
    assert model.net.layers[0].in_features == len(read)
    with pytest.raises(UserError, match="features must name"):
        make_model("rerank", tiny_data, sets={"features": "knn,magic"})


@pytest.fixture(scope="module")
def with_neural(tiny_data) -> KnnReranker:
    model = make_model("rerank", tiny_data, sets={**FAST, "features": "knn,rules,repeat,neural"})
    fit_model(model, tiny_data)
    return model


def test_the_neural_group_proposes_and_scores(with_neural: KnnReranker, tiny_data: SessionData):
    """MTAW's best items join the candidates, and its feature is each one's probability over MTAW's
    first choice's (1 for that choice)."""
    sessions = tiny_data.test.prefixes(range(8))
    c = with_neural.candidates(sessions)
    logits = with_neural.neural.score(sessions).float()
    for row in range(len(sessions)):
        items = c.items[row][c.mask[row]]
        first = int(torch.argmax(logits[row, 1:])) + 1
        assert first in items.tolist()
        neural = c.features[row][c.mask[row]][:, FEATURES.index("neural")]
        assert neural[items.tolist().index(first)] == pytest.approx(1.0)
        expected = (
            torch.softmax(logits[row], 0)[torch.from_numpy(items)] / torch.softmax(logits[row], 0).max()
        )
        np.testing.assert_allclose(neural, expected.numpy(), rtol=1e-4, atol=1e-7)


def test_without_neural_candidates_it_scores_only_the_others(
    with_neural: KnnReranker, tiny_data, monkeypatch
):
    """`neural_candidates=0`: MTAW proposes nothing and scores only the other sources' candidates, never
    every item; each one's feature is its probability over the best candidate's (1 for that one)."""
    sessions = tiny_data.test.prefixes(range(8))
    logits = with_neural.neural.score(sessions).float()
    monkeypatch.setattr(with_neural, "params", dataclasses.replace(with_neural.params, neural_candidates=0))
    without = KnnReranker(
        tiny_data.vocab, dataclasses.replace(with_neural.params, features="knn,rules,repeat")
    )
    without._index(Sessions(with_neural.session_offsets, with_neural.session_items))

    def every_item(_):
        raise AssertionError("scored every item")

    monkeypatch.setattr(with_neural.neural, "score", every_item)
    c = with_neural.candidates(sessions)
    assert np.array_equal(c.items, without.candidates(sessions).items)
    for row in range(len(sessions)):
        items = torch.from_numpy(c.items[row][c.mask[row]])
        neural = c.features[row][c.mask[row]][:, FEATURES.index("neural")]
        expected = torch.exp(logits[row, items] - logits[row, items].max())
        np.testing.assert_allclose(neural, expected.numpy(), rtol=1e-5, atol=1e-6)
        assert neural.max() == 1.0
    with_neural.recommend(sessions)


@pytest.mark.parametrize("neural_candidates", [50, 0])
def test_the_neural_group_sees_one_session_at_a_time(
    with_neural, tiny_data: SessionData, tmp_path: Path, neural_candidates: int
):
    """Its checkpoint holds MTAW's weights too, and its metrics do not depend on order or batch size, whether
    MTAW proposes candidates or scores only the others' (each row's feature against its own best)."""
    model, _ = load_checkpoint(save_checkpoint(with_neural, tmp_path / "ck"))
    probe = tiny_data.test.prefixes(range(20))
    assert torch.equal(model.score(probe), with_neural.score(probe))
    model.params = dataclasses.replace(model.params, neural_candidates=neural_candidates)
    test = tiny_data.test.select(np.arange(300))
    order = np.random.default_rng(0).permutation(len(test))
    runs = [
        evaluate_model(model, SessionData("t", tiny_data.vocab, tiny_data.train, test), batch_size=512),
        evaluate_model(model, SessionData("t", tiny_data.vocab, tiny_data.train, test), batch_size=1),
        evaluate_model(
            model, SessionData("t", tiny_data.vocab, tiny_data.train, test.select(order)), batch_size=7
        ),
    ]
    for other in runs[1:]:
        for key in ("recall@10", "mrr@10", "recall@20", "mrr@20"):
            assert other[key] == pytest.approx(runs[0][key], abs=1e-9), key


def test_the_trainer_warm_starts_it(fitted, tiny_data: SessionData):
    extended = tiny_data.vocab.extend(["brand-new"])
    data = SessionData("log", extended, tiny_data.train, tiny_data.test)
    candidate, history = train_candidate("rerank", data, serving=fitted, epochs=1)
    assert history["warm_start"] is True and history["warm_tensors"] == len(fitted.net.state_dict())
    assert candidate.n_items == fitted.n_items + 1


def test_the_trainer_warm_starts_its_neural_part(with_neural, tiny_data: SessionData):
    extended = tiny_data.vocab.extend(["brand-new"])
    data = SessionData("log", extended, tiny_data.train, tiny_data.test)
    candidate, history = train_candidate("rerank", data, serving=with_neural, epochs=1)
    assert history["warm_tensors"] == len(with_neural.net.state_dict()) + len(
        with_neural.neural.state_tensors()
    )
    assert candidate.neural is not None and candidate.neural.n_items == with_neural.n_items + 1


def test_the_neural_group_takes_any_neural_model(tiny_data: SessionData):
    """GRU4Rec counts its epochs in `n_epochs`: the group sets whichever field the model has."""
    model = make_model(
        "rerank", tiny_data, sets={"features": "knn,neural", "neural_model": "gru4rec", "neural_epochs": 1}
    )
    assert model.neural is not None and model.neural.params.n_epochs == 1


def test_the_neural_last_pass_is_checked_on_dev_without_training_on_it(tiny_data: SessionData):
    """The neural model picks its epochs on the scorer's samples outside dev, the trial of the last pass trains
    on none of dev's sessions at the kept epoch's learning rate, and the pass makes over all held-out sessions
    exactly the epochs that raised dev's Recall@20 + MRR@20 one after another (none: the weights from before
    the trial)."""
    model = make_model("rerank", tiny_data, sets={**FAST, "features": "knn,rules,repeat,neural"})
    assert model.neural is not None
    calls: list[tuple[Sessions, object, dict[str, torch.Tensor], float]] = []
    fit = model.neural.fit

    def recorded(sessions, valid=None, *, progress=False):
        lr = model.neural.params.lr  # as the call found it
        history = fit(sessions, valid, progress=progress)
        calls.append((sessions, valid, {k: v.clone() for k, v in model.neural.state_tensors().items()}, lr))
        return history

    model.neural.fit = recorded
    history = fit_model(model, tiny_data)["neural"]
    older, held = split_last(tiny_data.train, model.params.rerank_fraction)
    samples = prefix_samples(held)
    n_chunks = -(-len(samples) // model.params.batch_size)
    dev_start = (n_chunks - round(n_chunks * model.params.dev_fraction)) * model.params.batch_size
    first_dev_session_starts = samples.starts[dev_start]

    (sessions, valid, after_older, _), (trial, _, _, trial_lr) = calls[:2]
    older_epochs = history["older"]["epochs"]
    assert trial_lr == older_epochs[history["older"]["best_epoch"] - 1]["lr"]
    assert all(lr == trial_lr for *_, lr in calls[1:])
    assert np.array_equal(sessions.items, older.items)
    assert valid is not None and len(valid) and valid.ends.max() < first_dev_session_starts
    assert 0 < len(trial) < len(held) and trial.offsets[-1] <= first_dev_session_starts
    assert np.array_equal(trial.items, held.items[: trial.offsets[-1]])
    tried = history["dev_after_epoch"]
    sums = [sum(history["dev_before_pass"])] + [sum(m) for m in tried]
    rising = next((i for i in range(len(tried)) if sums[i + 1] <= sums[i]), len(tried))
    assert history["pass_epochs"] == rising and len(tried) == min(rising + 1, model.params.neural_epochs)
    assert all(np.array_equal(t.items, trial.items) for t, *_ in calls[1 : 1 + len(tried)])
    made = calls[1 + len(tried) :]
    assert len(made) == rising and all(np.array_equal(t.items, held.items) for t, *_ in made)
    if not made:  # back to the weights from before the trial
        for key, value in model.neural.state_tensors().items():
            assert torch.equal(value, after_older[key]), key


def test_with_sessions_is_the_index_fit_makes_on_them_all(fitted: KnnReranker, tiny_data: SessionData):
    """What the worker absorbs between retrains (`with_sessions`) gives the index `fit`'s last step would
    make on the old and the new sessions together, the scorer unchanged, and leaves the model it came from
    as it was."""
    sessions = [tiny_data.train[j][:3] for j in range(40)]
    before = fitted.score(sessions)
    extra = [np.array([3, 5, 3, 7]), np.array([5, 7]), np.array([2, 9, 11, 2, 5])]
    grown = fitted.with_sessions(extra)
    rebuilt = KnnReranker(tiny_data.vocab, fitted.params)
    rebuilt.net.load_state_dict(fitted.net.state_dict())
    rebuilt.item_vectors = fitted.item_vectors  # weights, as the scorer's
    indexed = Sessions(fitted.session_offsets, fitted.session_items)
    rebuilt._index(Sessions.from_lists([*map(list, indexed), *map(list, extra)]))
    np.testing.assert_array_equal(grown.score(sessions).numpy(), rebuilt.score(sessions).numpy())
    assert len(grown.session_offsets) == len(fitted.session_offsets) + len(extra)
    assert not np.array_equal(grown.score(sessions).numpy(), before.numpy())  # the new sessions count
    np.testing.assert_array_equal(fitted.score(sessions).numpy(), before.numpy())
