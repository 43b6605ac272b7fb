import numpy as np

from model.data.sessions import Samples, Sessions, prefix_samples, split_last
from model.data.vocab import UNKNOWN, ItemVocab


def test_prefix_samples_hand_example():
    s = Sessions.from_lists([[1, 2, 3], [4], [5, 6]])
    samples = prefix_samples(s)
    got = [(samples.prefix(j).tolist(), int(samples.labels[j])) for j in range(len(samples))]
    assert got == [([1], 2), ([1, 2], 3), ([5], 6)]


def test_prefix_samples_cap_keeps_the_latest_clicks():
    samples = prefix_samples(Sessions.from_lists([[1, 2, 3, 4]]), max_prefix=2)
    assert [samples.prefix(j).tolist() for j in range(3)] == [[1], [1, 2], [2, 3]]


def test_select_and_filter_events():
    s = Sessions.from_lists([[1, 2], [3, 4, 5], [6]], times=[[0, 1], [2, 3, 4], [5]])
    picked = s.select(np.array([2, 0]))
    assert picked.to_lists() == [[6], [1, 2]]
    assert picked.times.tolist() == [5, 0, 1]
    kept = s.filter_events(s.items != 4, min_length=2)
    assert kept.to_lists() == [[1, 2], [3, 5]]


def test_split_last_is_time_ordered():
    s = Sessions.from_lists([[i, i + 1] for i in range(1, 11)])
    older, newer = split_last(s, 0.2)
    assert len(older) == 8 and newer.to_lists() == [[9, 10], [10, 11]]


def test_samples_from_lists_round_trip():
    samples = Samples.from_lists([[3, 1], [2]], [5, 6])
    assert [p.tolist() for p in samples.prefixes(range(2))] == [[3, 1], [2]]
    assert samples.labels.tolist() == [5, 6]


def test_vocab_padding_and_unknown():
    v = ItemVocab.from_ids(["10", "2", "33"], numeric_order=True)
    assert v.ids == ["<pad>", "2", "10", "33"]
    assert v.lookup(["33", "nope", 2]).tolist() == [3, UNKNOWN, 1]
    assert v.lookup_array(np.array(["10", "x"])).tolist() == [2, UNKNOWN]
    assert v.decode([1, 3]) == ["2", "33"]
    w = v.extend(["33", "44"])
    assert w.ids == ["<pad>", "2", "10", "33", "44"]
