import os
import pickle

import pytest

from model.data.load import load_data
from model.data.safe_pickle import load_restricted
from model.errors import DataError


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_pair(folder, train, test):
    folder.mkdir()
    (folder / "all_train_seq.txt").write_bytes(pickle.dumps(train))
    (folder / "test.txt").write_bytes(pickle.dumps(test))
    return folder


def test_reduce_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = _write_pair(tmp_path / "evil", [[1, 2], Payload(str(marker))], ([[1]], [2]))
    with pytest.raises(DataError, match=r"all_train_seq\.txt: refused: .*system"):
        load_data(folder)
    assert not marker.exists()


def test_other_types_are_refused(tmp_path):
    for value in ({"a": 1}, [[1, "x"]], [[1.5]], [{1, 2}]):
        path = tmp_path / "f.pkl"
        path.write_bytes(pickle.dumps(value))
        with pytest.raises(DataError, match="only lists, tuples and ints"):
            load_restricted(path)


def test_plain_lists_load_and_keep_the_test_split(tmp_path):
    folder = _write_pair(tmp_path / "ok", [[1, 2], [3, 4, 1]], ([[1, 2], [3]], [3, 4]))
    data = load_data(folder)
    assert data.train.to_lists() == [[1, 2], [3, 4, 1]]
    assert [p.tolist() for p in data.test.prefixes(range(2))] == [[1, 2], [3]]
    assert data.test.labels.tolist() == [3, 4]


def test_wrong_shape_and_garbage(tmp_path):
    folder = _write_pair(tmp_path / "shape", [[1, 2]], [[1, 2], [3]])
    with pytest.raises(DataError, match="expected a pair"):
        load_data(folder)
    bad = tmp_path / "garbage"
    bad.mkdir()
    (bad / "all_train_seq.txt").write_bytes(b"\x80\x04garbage")
    (bad / "test.txt").write_bytes(pickle.dumps(([[1]], [2])))
    with pytest.raises(DataError, match="not a readable pickle"):
        load_data(bad)
