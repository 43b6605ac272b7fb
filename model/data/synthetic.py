"""A seeded synthetic click stream with something to learn, for the demo and for tests.

Items have power-law popularity (Zipf, exponent 1.1). Every item has four successors (drawn uniformly, so that transitions spread the clicks)
and a session walks them: the next click follows a successor of the current item with probability 0.55
(weights .5/.25/.15/.1), repeats an earlier item of the session with probability 0.15 (Tmall's sessions
repeat a lot), and otherwise jumps to a popular item. Session lengths are 2 + Geometric(1/5) capped at 50
(mean ~6, like Tmall's 6.4); sessions start as a Poisson process and clicks follow each other after
exponential dwell times (mean 30 s). All sessions are generated step by step in parallel with numpy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from model.data.dataset import SessionData
from model.data.readers import finish_split, time_split_frame
from model.data.sessions import Sessions

FOLLOW, REPEAT = 0.55, 0.15
STREAM_START = 1_700_000_000.0  # the synthetic stream's clock (`nextclick replay --data synthetic:N`)
HISTORY_LEAD = 86400.0  # `synthetic_data` begins a day before it: a model learns from the past, then serves
SUCCESSOR_WEIGHTS = np.array([0.5, 0.25, 0.15, 0.1])


def item_id(index: np.ndarray | int) -> np.ndarray | str:
    """External ids of synthetic items: 'i1', 'i2', ... (strings, as on the `clicks` topic)."""
    if isinstance(index, int | np.integer):
        return f"i{index}"
    return np.char.add("i", np.asarray(index).astype(str))


def synthetic_sessions(
    n_sessions: int,
    n_items: int = 1000,
    seed: int = 0,
    start: float = STREAM_START,
    sessions_per_second: float = 2.0,
    max_length: int = 50,
    world_seed: int = 0,
) -> Sessions:
    """Sessions (item numbers 1..n_items, timestamps) in start-time order.

    `world_seed` fixes the items' popularity and successors, `seed` the sessions walked through them: a
    replayed stream (another seed) follows the same transitions a model learnt from (seed 0)."""
    world = np.random.default_rng(world_seed)
    ranks = np.arange(1, n_items + 1)
    pop = 1.0 / ranks**1.1
    pop /= pop.sum()
    perm = world.permutation(n_items) + 1  # item number of popularity rank r
    successors = world.integers(1, n_items + 1, size=(n_items + 1, 4))
    rng = np.random.default_rng((world_seed, seed))
    lengths = np.minimum(2 + rng.geometric(1 / 5, size=n_sessions) - 1, max_length)
    longest = int(lengths.max())
    seq = np.zeros((n_sessions, longest), dtype=np.int64)
    seq[:, 0] = perm[rng.choice(n_items, size=n_sessions, p=pop)]
    for t in range(1, longest):
        u = rng.random(n_sessions)
        follow = successors[seq[:, t - 1], rng.choice(4, size=n_sessions, p=SUCCESSOR_WEIGHTS)]
        earlier = seq[np.arange(n_sessions), rng.integers(0, t, size=n_sessions)]
        jump = perm[rng.choice(n_items, size=n_sessions, p=pop)]
        seq[:, t] = np.where(u < FOLLOW, follow, np.where(u < FOLLOW + REPEAT, earlier, jump))
    starts = start + np.cumsum(rng.exponential(1.0 / sessions_per_second, size=n_sessions))
    gaps = rng.exponential(30.0, size=(n_sessions, longest))
    gaps[:, 0] = 0.0
    times = starts[:, None] + np.cumsum(gaps, axis=1)
    mask = np.arange(longest)[None, :] < lengths[:, None]
    offsets = np.zeros(n_sessions + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sessions(offsets, seq[mask], times[mask])


def synthetic_events(
    n_sessions: int, n_items: int = 1000, seed: int = 0, start: float = STREAM_START
) -> pd.DataFrame:
    """The same stream as events (session, item, time), ordered by time, with string ids."""
    s = synthetic_sessions(n_sessions, n_items, seed, start)
    frame = pd.DataFrame(
        {
            "session": np.char.add("s", s.session_of_event().astype(str)),
            "item": item_id(s.items),
            "time": s.times,
        }
    )
    return frame.sort_values("time", kind="stable").reset_index(drop=True)


def synthetic_data(n_sessions: int = 5000, n_items: int = 1000, seed: int = 0) -> SessionData:
    """A SessionData whose newest 10 % of sessions are the test set (the event readers' time split), a day
    before the stream's clock: trained on it, a model's newest click (`trained_until`) is older than the
    replayed stream's sessions, which the trainer may then hold out to gate on, as in production."""
    frame = synthetic_events(n_sessions, n_items, seed, STREAM_START - HISTORY_LEAD)
    return finish_split(f"synthetic-{n_sessions}x{n_items}-seed{seed}", *time_split_frame(frame))
