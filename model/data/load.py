"""Any data set by name: a path in one of the contract's three formats, or `synthetic[:N]`.

`load_data` is what `nextclick train`, `eval` and the benchmarks open; `click_events` is the same data set
as a time-ordered click stream, what `nextclick replay` and the demo publish.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from model.data import readers
from model.data.dataset import SessionData
from model.data.synthetic import synthetic_data, synthetic_events
from model.errors import DataError

FORMATS = ("srgnn", "events", "diginetica")
SYNTHETIC = re.compile(r"^synthetic(?::(\d+))?$")


def load_data(spec: str | Path, fmt: str | None = None) -> SessionData:
    """A path in one of the contract's formats (auto-detected unless `fmt`), or `synthetic[:N]` for N
    seeded synthetic sessions."""
    m = SYNTHETIC.match(str(spec))
    if m:
        return synthetic_data(int(m.group(1) or 5000))
    p = Path(spec)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    fmt = fmt or readers.detect_format(p)
    if fmt == "srgnn":
        return readers.read_srgnn_folder(p)
    if fmt == "events":
        return readers.read_events(p)
    if fmt == "diginetica":
        return readers.read_diginetica_raw(p)
    raise DataError(f"{p}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def click_events(spec: str, limit: int | None = None) -> pd.DataFrame:
    """Clicks (session, item, time[, user]) in time order from a data set: the test sessions of an event
    format, the newest 10 % of training sessions of an SR-GNN folder (no timestamps: one click per second,
    sessions started 0.5 s apart), or the synthetic stream (`synthetic[:N]`)."""
    m = SYNTHETIC.match(spec)
    if m:
        frame = synthetic_events(int(m.group(1) or 5000), n_items=1000, seed=7)
    else:
        data = load_data(spec)
        sessions = data.test_sessions
        if sessions is None or sessions.times is None:
            n = max(1, len(data.train) // 10)
            sessions = data.train.select(np.arange(len(data.train) - n, len(data.train)))
            pos = np.arange(sessions.n_events) - np.repeat(sessions.offsets[:-1], sessions.lengths)
            times = 1.7e9 + np.repeat(np.arange(len(sessions)) * 0.5, sessions.lengths) + pos
        else:
            times = sessions.times
        ids = np.asarray(data.vocab.ids, dtype=object)
        frame = pd.DataFrame(
            {
                "session": np.char.add("r", sessions.session_of_event().astype(str)),
                "item": ids[sessions.items],
                "time": times,
            }
        ).sort_values("time", kind="stable")
    return frame.head(limit) if limit else frame
