import dataclasses
import time

import numpy as np
import pytest
import torch

from model.data.sessions import Sessions
from model.data.synthetic import item_id, synthetic_sessions
from model.errors import DataError
from model.lifecycle.experiment import make_model
from model.lifecycle.retrain import gate, log_to_data, train_candidate, warm_start
from model.lifecycle.sessionlog import SessionLog


def _records(n: int, seed: int) -> list[dict]:
    s = synthetic_sessions(n, n_items=150, seed=seed)
    return [
        {
            "session_id": f"{seed}-{i}",
            "items": list(item_id(s[i])),
            "timestamps": s.times[s.offsets[i] : s.offsets[i + 1]].tolist(),
        }
        for i in range(len(s))
    ]


def test_session_log_appends_dedupes_and_survives_a_torn_line(tmp_path):
    log = SessionLog(tmp_path)
    recs = _records(20, 0)
    assert log.append(recs[:15]) == 15
    assert log.append([*recs[10:], {"session_id": "empty", "items": []}]) == 10  # 5 repeats, empty skipped
    with open(log.segments()[-1], "a") as fh:
        fh.write('{"session_id": "torn", "ite')
    again = SessionLog(tmp_path).read()
    assert [r["session_id"] for r in again] == [r["session_id"] for r in recs]
    assert len(SessionLog(tmp_path).read(max_sessions=5)) == 5


def test_session_log_retention_drops_old_segments(tmp_path):
    log = SessionLog(tmp_path, retention_days=1)
    log.append(_records(3, 0), now=1_700_000_000)
    log.append(_records(3, 1), now=1_700_000_000 + 3 * 86400)
    assert len(log.segments()) == 2
    assert len(log.retain(now=1_700_000_000 + 3 * 86400 + 60)) == 1
    assert len(log.read()) == 3


def test_log_to_data_holds_out_the_newest_sessions_and_extends_a_vocabulary():
    recs = _records(200, 0)
    data = log_to_data(recs, holdout_fraction=0.1)
    assert len(data.test_sessions) == 20
    newest = sorted(recs, key=lambda r: r["timestamps"][-1])[-20:]
    assert data.vocab.decode(data.test_sessions[0]) == newest[0]["items"]
    base = log_to_data(recs[:100]).vocab
    grown = log_to_data(recs, base=base).vocab
    assert grown.ids[: len(base.ids)] == base.ids
    with pytest.raises(DataError):
        log_to_data(recs[:3])


def test_warm_start_keeps_known_items_and_initialises_new_ones():
    old_data = log_to_data(_records(100, 0))
    new_data = log_to_data(_records(300, 1), base=old_data.vocab)
    assert new_data.vocab.n_items > old_data.vocab.n_items
    old = make_model("gru4rec", old_data, sets={"layers": [16]})
    new = make_model("gru4rec", new_data, sets={"layers": [16]})
    fresh = {k: v.clone() for k, v in new.state_tensors().items()}
    assert warm_start(new, old) > 0
    n = old.n_items + 1
    grown = 0
    for name, t in new.state_tensors().items():
        src = old.state_tensors()[name]
        if t.shape == src.shape:
            assert torch.equal(t, src)
        else:  # item tables: old rows copied, the new items' rows as the new model initialised them
            assert torch.equal(t[:n], src) and torch.equal(t[n:], fresh[name][n:])
            grown += 1
    assert grown >= 2


def test_the_gate_refuses_a_model_trained_on_shuffled_labels():
    data = log_to_data(_records(1500, 0))
    sets = {"layers": [32], "batch_size": 32}
    serving, _ = train_candidate("gru4rec", data, epochs=3, sets=sets)
    rng = np.random.default_rng(0)
    shuffled = dataclasses.replace(
        data, train=Sessions(data.train.offsets, rng.permutation(data.train.items), data.train.times)
    )
    worse, _ = train_candidate("gru4rec", shuffled, epochs=3, sets=sets)
    refused = gate(worse, serving, data)
    assert not refused.publish and refused.candidate < refused.serving - refused.tolerance
    # the same training on the real sessions passes (warm start from the serving model)
    better, history = train_candidate("gru4rec", data, serving=serving, epochs=1, sets=sets)
    assert history["warm_start"]
    assert gate(better, serving, data).publish


def test_only_sessions_newer_than_the_serving_model_are_held_out():
    """A serving model scored on sessions it learnt from wins the gate by memory: with `after` (its newest
    training click) the newest share's older sessions train, and only those ending later are held out."""
    recs = sorted(_records(200, 0), key=lambda r: r["timestamps"][-1])
    last = [r["timestamps"][-1] for r in recs]
    data = log_to_data(recs, holdout_fraction=0.1, after=last[185])
    held = [data.vocab.decode(data.test_sessions[i]) for i in range(len(data.test_sessions))]
    assert held == [r["items"] for r in recs[186:]]  # 14 of the newest 20
    assert len(data.train) == 186 and data.train_until() == last[185]
    assert log_to_data(recs, holdout_fraction=0.1).train_until() == last[179]  # no `after`: the newest 20
    with pytest.raises(DataError, match="nothing it has not learnt from"):
        log_to_data(recs, after=last[-1])
    # a clock in milliseconds (or running fast) is recorded as now, not as a time no session reaches
    assert dataclasses.replace(data, until=1.7e12).train_until() <= time.time()
