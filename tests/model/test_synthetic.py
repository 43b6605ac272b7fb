import numpy as np

from model.data.synthetic import synthetic_events, synthetic_sessions


def test_seeded_and_shaped_like_tmall():
    a = synthetic_sessions(2000, n_items=500, seed=1)
    b = synthetic_sessions(2000, n_items=500, seed=1)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.times, b.times)
    assert 4.5 < a.lengths.mean() < 7.5 and a.lengths.min() >= 2
    assert a.items.min() >= 1 and a.items.max() <= 500
    # power-law popularity: the top 5 % of items take a large share of clicks
    counts = np.sort(np.bincount(a.items))[::-1]
    assert counts[:25].sum() > 0.3 * counts.sum()
    # time flows forward inside every session
    assert all((np.diff(a.times[a.offsets[i] : a.offsets[i + 1]]) >= 0).all() for i in range(100))


def test_events_are_time_ordered_strings():
    frame = synthetic_events(300, n_items=100, seed=0)
    assert frame["time"].is_monotonic_increasing
    assert frame["item"].str.startswith("i").all() and frame["session"].str.startswith("s").all()
