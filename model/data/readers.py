"""Readers for the data formats of the contract, each returning a `SessionData`.

- SR-GNN / GCE-GNN folders (`all_train_seq.txt` + `test.txt` pickles): the given test split is kept exactly
  as it is, so numbers compare with the papers; item ids 1..n keep their numbers as indices.
- `SessionId ItemId Time` event files (TAB, comma or semicolon separated, GRU4Rec / session-rec format),
  either a folder holding a train and a test file (`train_full.txt` + `test.txt`, as GRU4Rec ships its
  splits) or one file, split by time: the sessions ending in the last day are the test set when the file spans
  at least a week (GRU4Rec's YOOCHOOSE protocol), otherwise the newest 10 % of sessions.
- The raw Diginetica CSV (`session_id;user_id;item_id;timeframe;eventdate`), preprocessed as SR-GNN's
  `preprocess.py` does: clicks ordered by `timeframe` inside a session, a session dated by its `eventdate`;
  sessions of length 1 dropped, then items seen fewer than 5 times, then sessions left shorter than 2;
  the sessions of the last 7 days are the test set.

In every event format the test set keeps only items seen in training and then only sessions of at least
two clicks, and each test session gives its prefix -> next-click samples.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from model.data.dataset import SessionData
from model.data.safe_pickle import PICKLE_MAGIC, load_prefix_label_pair, load_session_list
from model.data.sessions import Samples, Sessions, prefix_samples
from model.data.vocab import ItemVocab
from model.errors import DataError

DAY = 86400.0
DIGINETICA_HEADER = ["session_id", "user_id", "item_id", "timeframe", "eventdate"]
EVENT_COLUMNS = {
    "session": ("sessionid", "session_id", "session"),
    "item": ("itemid", "item_id", "item"),
    "time": ("time", "timestamp", "ts"),
    "user": ("userid", "user_id", "user"),
}
TRAIN_NAMES = ("train_full", "train")
TEST_NAMES = ("test",)
EVENT_SUFFIXES = (".txt", ".tsv", ".csv", "")


# ---------------------------------------------------------------------------------------------- detection
def detect_format(path: Path) -> str:
    if path.is_dir():
        seq, test = path / "all_train_seq.txt", path / "test.txt"
        if seq.is_file() and test.is_file() and _starts_with(seq, PICKLE_MAGIC):
            return "srgnn"
        if _find_pair(path) is not None:
            return "events"
        raise DataError(
            f"{path}: no data set found (expected all_train_seq.txt + test.txt pickles, "
            "or train and test SessionId/ItemId/Time files)"
        )
    if _starts_with(path, PICKLE_MAGIC):
        raise DataError(f"{path}: a lone pickle; pass the folder holding all_train_seq.txt and test.txt")
    header, _ = _header(path)
    if header[: len(DIGINETICA_HEADER)] == DIGINETICA_HEADER:
        return "diginetica"
    if _column_map(header, path, required=False) is not None:
        return "events"
    raise DataError(
        f"{path}: unrecognised columns {header[:6]}; expected SessionId, ItemId, Time "
        f"or the Diginetica header {';'.join(DIGINETICA_HEADER)}"
    )


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _header(path: Path) -> tuple[list[str], str]:
    """The header's column names, lower-cased, and the file's delimiter."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            line = f.readline()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if not line.strip():
        raise DataError(f"{path}: empty file")
    delim = _delimiter(line)
    return [c.strip().lower() for c in next(csv.reader([line], delimiter=delim))], delim


def _delimiter(line: str) -> str:
    return max(("\t", ",", ";"), key=line.count)


def _find_pair(folder: Path) -> tuple[Path, Path] | None:
    def first(names: tuple[str, ...]) -> Path | None:
        for name in names:
            for suffix in EVENT_SUFFIXES:
                p = folder / f"{name}{suffix}"
                if p.is_file() and not _starts_with(p, PICKLE_MAGIC):
                    return p
        return None

    train, test = first(TRAIN_NAMES), first(TEST_NAMES)
    return (train, test) if train and test else None


def _column_map(header: list[str], path: Path, required: bool = True) -> dict[str, int] | None:
    found: dict[str, int] = {}
    for role, names in EVENT_COLUMNS.items():
        for i, col in enumerate(header):
            if col.replace(" ", "") in names:
                found[role] = i
                break
    if all(r in found for r in ("session", "item", "time")):
        return found
    if required:
        raise DataError(f"{path}: missing columns; need SessionId, ItemId and Time, found {header[:6]}")
    return None


# ---------------------------------------------------------------------------------------------- SR-GNN
def read_srgnn_folder(folder: Path) -> SessionData:
    train_lists = load_session_list(folder / "all_train_seq.txt")
    prefixes, labels = load_prefix_label_pair(folder / "test.txt")
    train = Sessions.from_lists(train_lists)
    test = Samples.from_lists(prefixes, labels)
    ids = np.unique(np.concatenate([train.items, test.items, test.labels]))
    if ids.size == 0 or ids[0] < 1:
        raise DataError(f"{folder}: item ids must be positive integers (0 is padding)")
    vocab = ItemVocab([str(i) for i in ids])  # already numerically sorted
    # ids -> dense indices; identity when ids are 1..n as in the published files
    to_index = lambda a: np.searchsorted(ids, a) + 1  # noqa: E731
    train = Sessions(train.offsets, to_index(train.items))
    test = Samples(to_index(test.items), test.starts, test.ends, to_index(test.labels))
    return SessionData(folder.name or str(folder), vocab, train, test)


# ---------------------------------------------------------------------------------------------- events
def read_event_frame(path: Path) -> pd.DataFrame:
    """Columns session, item (strings), time (float seconds) and user (string or missing)."""
    header, delim = _header(path)
    cols = _column_map(header, path)
    assert cols is not None
    names = {i: role for role, i in cols.items()}
    try:
        frame = pd.read_csv(
            path, sep=delim, usecols=sorted(names), dtype=str, keep_default_na=False, engine="c"
        )
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed ({str(exc).splitlines()[0]})") from None
    frame.columns = [names[header.index(c.strip().lower())] for c in frame.columns]
    if frame.empty:
        raise DataError(f"{path}: no events after the header")
    time = pd.to_numeric(frame["time"], errors="coerce")
    if time.isna().any():
        bad = frame["time"][time.isna()].iloc[0]
        raise DataError(f"{path}: non-numeric Time value {bad!r} (expected epoch seconds)")
    frame["time"] = time.astype(np.float64)
    if (frame["session"] == "").any() or (frame["item"] == "").any():
        raise DataError(f"{path}: empty SessionId or ItemId values")
    return frame


def frame_to_sessions(frame: pd.DataFrame, vocab: ItemVocab) -> Sessions:
    """Sessions in start-time order, events in time order; unknown items are dropped."""
    start = frame.groupby("session", sort=False)["time"].transform("min")
    frame = frame.assign(_start=start).sort_values(["_start", "session", "time"], kind="stable")
    items = vocab.lookup_array(frame["item"].to_numpy())
    keep = items >= 1
    codes, uniques = pd.factorize(frame["session"].to_numpy()[keep], sort=False)
    lengths = np.bincount(codes, minlength=len(uniques))
    offsets = np.zeros(len(uniques) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    users = None
    if "user" in frame:
        first_rows = np.concatenate([[0], offsets[1:-1]]) if len(uniques) else np.zeros(0, np.int64)
        user_ids = frame["user"].to_numpy()[keep][first_rows]
        user_codes, _ = pd.factorize(user_ids)
        users = np.where(np.isin(user_ids, ["", "NA", "nan"]), -1, user_codes).astype(np.int64)
    return Sessions(offsets, items[keep], frame["time"].to_numpy()[keep], users)


def _vocab_of(frame: pd.DataFrame) -> ItemVocab:
    ids = frame["item"].unique()
    return ItemVocab.from_ids(ids, numeric_order=all(s.isdigit() for s in ids))


def finish_split(name: str, train_frame: pd.DataFrame, test_frame: pd.DataFrame) -> SessionData:
    vocab = _vocab_of(train_frame)
    train = frame_to_sessions(train_frame, vocab)
    test = frame_to_sessions(test_frame, vocab)
    test = test.select(test.lengths >= 2)
    if len(train) == 0:
        raise DataError(f"{name}: no training sessions")
    if len(test) == 0:
        raise DataError(f"{name}: no test session of two or more known items")
    return SessionData(name, vocab, train, prefix_samples(test), test)


def read_events(path: Path) -> SessionData:
    if path.is_dir():
        pair = _find_pair(path)
        if pair is None:
            raise DataError(f"{path}: no train and test event files found")
        return finish_split(path.name, read_event_frame(pair[0]), read_event_frame(pair[1]))
    frame = read_event_frame(path)
    return finish_split(path.name, *time_split_frame(frame))


def time_split_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    end = frame.groupby("session")["time"].transform("max")
    span = frame["time"].max() - frame["time"].min()
    if span >= 7 * DAY:
        is_test = end > frame["time"].max() - DAY
    else:
        session_end = frame.groupby("session")["time"].max().sort_values(kind="stable")
        n_test = max(1, len(session_end) // 10)
        is_test = frame["session"].isin(set(session_end.index[-n_test:]))
    return frame[~is_test], frame[is_test]


# ---------------------------------------------------------------------------------------------- Diginetica
def read_diginetica_raw(path: Path) -> SessionData:
    try:
        frame = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed ({str(exc).splitlines()[0]})") from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    if list(frame.columns[:5]) != DIGINETICA_HEADER:
        raise DataError(f"{path}: expected the header {';'.join(DIGINETICA_HEADER)}")
    if frame.empty:
        raise DataError(f"{path}: no events after the header")
    timeframe = pd.to_numeric(frame["timeframe"], errors="coerce")
    date = pd.to_datetime(frame["eventdate"], format="%Y-%m-%d", errors="coerce")
    if timeframe.isna().any() or date.isna().any():
        raise DataError(f"{path}: non-numeric timeframe or eventdate not YYYY-MM-DD")
    day = (date - pd.Timestamp("1970-01-01")).dt.days.astype(np.float64) * DAY
    events = pd.DataFrame(
        {
            "session": frame["session_id"],
            "item": frame["item_id"],
            "user": frame["user_id"],
            # the session's date orders sessions; timeframe (ms since the session's first day) orders clicks
            "time": day.groupby(frame["session_id"]).transform("max") + timeframe / 1000.0,
            "_date": day.groupby(frame["session_id"]).transform("max"),
        }
    )
    events = events[events.groupby("session")["item"].transform("size") > 1]
    item_count = events.groupby("item")["item"].transform("size")
    events = events[item_count >= 5]
    events = events[events.groupby("session")["item"].transform("size") >= 2]
    if events.empty:
        raise DataError(
            f"{path}: no session survives the SR-GNN filters (length >= 2, items seen >= 5 times)"
        )
    is_test = events["_date"] > events["_date"].max() - 7 * DAY
    train, test = events[~is_test].drop(columns="_date"), events[is_test].drop(columns="_date")
    return finish_split(path.name, train, test)
