import numpy as np
import pytest

from model.data.load import load_data
from model.errors import DataError
from tests.conftest import shared

DAY = 86400


def _write(path, text):
    path.write_text(text)
    return path


def test_event_folder_train_test(tmp_path):
    folder = tmp_path / "ev"
    folder.mkdir()
    _write(
        folder / "train_full.txt",
        "SessionId\tItemId\tTime\n1\t10\t5\n1\t11\t6\n2\t12\t1\n2\t10\t2\n2\t11\t3\n",
    )
    _write(folder / "test.txt", "SessionId\tItemId\tTime\n9\t10\t100\n9\t99\t101\n9\t11\t102\n8\t12\t90\n")
    data = load_data(folder)
    # sessions in start-time order; vocabulary from training items only, numeric order
    assert data.vocab.ids == ["<pad>", "10", "11", "12"]
    assert [data.vocab.decode(s) for s in data.train] == [["12", "10", "11"], ["10", "11"]]
    # the unknown item 99 is dropped from the test session; session 8 has one click and is dropped
    assert [data.vocab.decode(data.test.prefix(j)) for j in range(len(data.test))] == [["10"]]
    assert data.vocab.decode(data.test.labels) == ["11"]


def test_single_csv_is_split_by_time(tmp_path):
    rows = ["session_id,item_id,timestamp"]
    for s in range(20):
        rows += [f"{s},{s % 3},{s * 10}", f"{s},{(s + 1) % 3},{s * 10 + 1}"]
    data = load_data(_write(tmp_path / "clicks.csv", "\n".join(rows) + "\n"))
    assert len(data.train) == 18 and len(data.test) == 2  # newest 10 % of sessions


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("a\tb\tc\n1\t2\t3\n", "unrecognised columns"),
        ("SessionId\tItemId\tTime\n1\t2\tnoon\n", "non-numeric Time value 'noon'"),
        ("SessionId\tItemId\tTime\n", "no events after the header"),
    ],
)
def test_malformed_event_files_give_one_clear_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message) as err:
        load_data(_write(tmp_path / "bad.txt", text))
    assert "\n" not in str(err.value) and "bad.txt" in str(err.value)


def test_missing_path():
    with pytest.raises(DataError, match="no such file or folder"):
        load_data("/nonexistent/data")


def test_diginetica_raw_preprocessing(tmp_path):
    lines = ["session_id;user_id;item_id;timeframe;eventdate"]
    # items 1..3 are frequent, item 9 is seen once (dropped), session 50 has one click (dropped)
    for s in range(1, 11):
        day = "2016-05-01" if s <= 6 else "2016-05-20"
        lines += [f"{s};NA;{1 + s % 3};{100 * s};{day}", f"{s};NA;{1 + (s + 1) % 3};{100 * s - 50};{day}"]
    lines += ["3;NA;9;999999;2016-05-01", "50;NA;1;5;2016-05-01"]
    data = load_data(_write(tmp_path / "train-item-views.csv", "\n".join(lines) + "\n"))
    assert len(data.train) == 6  # sessions 1..6; 7..10 fall in the last 7 days
    assert data.test_sessions is not None and len(data.test_sessions) == 4
    assert "9" not in data.vocab.index
    # clicks ordered by timeframe within a session: session 1 = item (1+2%3)=3 at 50, then item 2 at 100
    assert data.vocab.decode(data.train[0]) == ["3", "2"]


def test_shared_test_splits_have_the_published_sizes():
    tmall = load_data(shared("tmall"))
    assert len(tmall.test) == 25_898 and tmall.vocab.n_items == 40_727
    assert len(tmall.train) == 65_286
    digi = load_data(shared("diginetica"))
    assert len(digi.test) == 60_858 and digi.vocab.n_items == 43_097
    # item ids 1..n keep their numbers as indices
    assert np.array_equal(np.asarray(tmall.vocab.ids[1:6], dtype=int), np.arange(1, 6))


def test_shared_raw_and_event_files_load():
    raw = load_data(shared("diginetica-raw-sample.csv"))
    assert len(raw.train) > 100 and len(raw.test) > 10
    yc = load_data(shared("yoochoose-100k"))
    assert len(yc.train) > 10_000 and len(yc.test) > 5_000
