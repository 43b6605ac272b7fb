import dataclasses
import math

import numpy as np
import pytest

from model.data.sessions import Sessions
from model.data.vocab import ItemVocab
from model.lifecycle.experiment import evaluate_model, fit_model, make_model
from model.models.knn import KnnParams, SessionKnn, Sknn
from model.models.pop import Pop

TRAIN = [[1, 2, 3], [2, 3, 4], [5, 6], [1, 5, 6, 7], [3, 4, 8]]


def direct_vsknn(session, train, k, n_items, decay=True, idf=True, sample=0):
    """V-SKNN written from its definition, one loop at a time; with `sample`, a click of the session meets
    only the `sample` most recent (latest in `train`) sessions holding its item."""
    n = len(train)
    df = {i: sum(1 for t in train if i in t) for i in range(1, n_items + 1)}
    holding = {i: [idx for idx, t in enumerate(train) if i in t] for i in range(1, n_items + 1)}
    meets = {i: set(held[-sample:] if sample else held) for i, held in holding.items()}
    weight: dict[int, float] = {}
    for pos, item in enumerate(session, start=1):
        w = pos / len(session) if decay else 1.0
        if idf:
            w *= math.log(n / max(df[item], 1))
        weight[item] = weight.get(item, 0.0) + w
    sims = []
    for idx, t in enumerate(train):
        dot = sum(w for i, w in weight.items() if idx in meets[i])
        if dot > 0:
            sims.append((dot / math.sqrt(len(set(t))), idx))
    sims.sort(key=lambda x: (-x[0], -x[1]))
    scores = np.zeros(n_items + 1)
    for sim, idx in sims[:k]:
        for i in set(train[idx]):
            scores[i] += sim
    return scores


@pytest.mark.parametrize(
    "decay,idf,k,sample",
    [
        (True, True, 2, 0),
        (True, False, 3, 0),
        (False, False, 10, 0),
        (True, True, 10, 1),
        (False, False, 3, 2),
    ],
)
def test_vsknn_matches_its_definition(decay, idf, k, sample):
    vocab = ItemVocab([str(i) for i in range(1, 9)])
    model = SessionKnn(vocab, KnnParams(k=k, decay=decay, idf=idf, sample=sample))
    model.fit(Sessions.from_lists(TRAIN))
    queries = [np.array([1, 2]), np.array([3, 3, 4]), np.array([6]), np.array([5, 3])]
    got = model.score(queries).numpy()
    for row, q in zip(got, queries, strict=True):
        want = direct_vsknn(q.tolist(), TRAIN, k, 8, decay, idf, sample)
        scored = want > 0
        # positive scores equal the definition (up to the tiny popularity tie-break) ...
        assert np.allclose(row[scored], want[scored], rtol=1e-3)
        # ... and the order among them is the definition's order
        assert (
            np.argsort(-row[scored], kind="stable") == np.argsort(-want[scored], kind="stable")
        ).all() or (np.unique(want[scored]).size < scored.sum())
        # items no neighbour holds stay below every scored item, ordered by popularity
        assert row[~scored][1:].max(initial=0) < row[scored].min()


def test_knn_beats_popularity_on_the_synthetic_stream(tiny_data):
    results = {}
    for name in ("pop", "sknn", "vsknn"):
        model = make_model(name, tiny_data)
        fit_model(model, tiny_data)
        results[name] = evaluate_model(model, tiny_data)
    assert results["vsknn"]["recall@20"] > results["pop"]["recall@20"] + 0.15
    assert results["sknn"]["mrr@20"] > results["pop"]["mrr@20"]
    assert isinstance(make_model("sknn", tiny_data), Sknn)
    assert isinstance(make_model("pop", tiny_data), Pop)


def test_recommend_excludes_padding_and_seen_items(tiny_data):
    model = make_model("vsknn", tiny_data)
    fit_model(model, tiny_data)
    sessions = [tiny_data.train[0], tiny_data.train[1]]
    items, scores = model.recommend(sessions, k=10, exclude_seen=True)
    assert items.shape == (2, 10) and (items > 0).all()
    for row, s in zip(items.tolist(), sessions, strict=True):
        assert not set(row) & set(s.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_recommend_is_the_top_of_score_without_its_dense_rows(tiny_data):
    """The worker's path (neighbourhood items only, popularity fill) gives `score`'s top k: the same value
    at every rank, the same items up to equal values, in any batch; a session with no neighbour (an item
    no training session holds) gets the popularity list."""
    data = dataclasses.replace(tiny_data, vocab=tiny_data.vocab.extend(["never-clicked"]))
    model = make_model("vsknn", data)
    fit_model(model, data)
    sessions = [data.train[i] for i in range(40)] + [np.array([model.n_items])]
    for k in (5, 20, 150):
        items, values = model.recommend(sessions, k=k)
        dense = model.score(sessions)[:, 1:]
        top = dense.topk(k, dim=1)
        assert items.shape == (len(sessions), k) and (items > 0).all()
        assert np.allclose(values.numpy(), top.values.numpy(), rtol=1e-5)
        for row, (got, want) in enumerate(zip(items.tolist(), (top.indices + 1).tolist(), strict=True)):
            at = dict(zip(want, top.values[row].tolist(), strict=True))
            # an item the dense top k holds is where its value puts it; a different item only on a tie
            assert all(g == w or math.isclose(at.get(g, values[row, r].item()), at[w], rel_tol=1e-5)
                       for r, (g, w) in enumerate(zip(got, want, strict=True)))  # fmt: skip
        alone = model.recommend([sessions[3]], k=k)[0]
        assert alone.tolist()[0] == items[3].tolist()
    assert items[-1].tolist() == model.popular_order[:150].tolist()


def test_with_sessions_is_the_index_fit_makes_on_them_all(tiny_data):
    """V-SKNN's absorbed sessions (`with_sessions`, the worker's between retrains) give the model `fit`
    makes on old and new sessions together; the model they came from is unchanged."""
    model = make_model("vsknn", tiny_data)
    fit_model(model, tiny_data)
    sessions = [tiny_data.train[j][:3] for j in range(40)]
    before = model.score(sessions)
    extra = [np.array([3, 5, 3, 7]), np.array([5, 7]), np.array([2, 9, 11, 2, 5])]
    grown = model.with_sessions(extra)
    indexed = Sessions(model.session_offsets, model.session_items)
    refit = make_model("vsknn", tiny_data)
    refit.fit(Sessions.from_lists([*map(list, indexed), *map(list, extra)]))
    np.testing.assert_array_equal(grown.score(sessions).numpy(), refit.score(sessions).numpy())
    assert not np.array_equal(grown.score(sessions).numpy(), before.numpy())
    np.testing.assert_array_equal(model.score(sessions).numpy(), before.numpy())
