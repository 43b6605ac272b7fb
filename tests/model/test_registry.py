import json

import pytest
import torch

from model.lifecycle.checkpoint import WEIGHTS, CheckpointError
from model.lifecycle.experiment import fit_model, make_model
from model.lifecycle.registry import Registry, verify


@pytest.fixture(scope="module")
def model(tiny_data):
    m = make_model("gru4rec", tiny_data, sets={"layers": [16], "batch_size": 32}, epochs=1)
    fit_model(m, tiny_data)
    return m


def test_publish_list_promote_and_prune(tmp_path, model, tiny_data):
    reg = Registry(tmp_path / "reg", keep=2)
    assert reg.latest() is None and reg.versions() == []
    v1 = reg.publish(model)
    v2 = reg.publish(model, metrics={"mrr@20": 0.1})
    assert (v1, v2) == ("v000001", "v000002")
    assert reg.latest() == v2
    meta = json.loads((reg.path(v2) / "meta.json").read_text())
    assert meta["version"] == v2 and meta["published_at"] > 0
    reg.promote(v1)  # rollback
    assert reg.latest() == v1
    v3 = reg.publish(model)
    # keep=2 prunes the oldest, but never the one LATEST pointed at before this publish... v3 is LATEST now
    assert reg.names() == [v2, v3]
    assert [v.latest for v in reg.versions()] == [False, True]


def test_a_crash_mid_publish_leaves_nothing_visible(tmp_path, model):
    reg = Registry(tmp_path)
    v1 = reg.publish(model)
    staging = tmp_path / ".v000002.staging"  # what a trainer killed mid-write leaves
    staging.mkdir()
    (staging / "meta.json").write_text("{")
    assert reg.names() == [v1] and reg.latest() == v1
    assert reg.publish(model) == "v000002"
    assert not staging.exists() and (tmp_path / "v000002").is_dir()  # the leftover is cleared first


def test_corrupt_versions_are_refused(tmp_path, model):
    reg = Registry(tmp_path)
    v1 = reg.publish(model)
    bad = tmp_path / "v000002"
    bad.mkdir()
    for f in reg.path(v1).iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = bad / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        reg.promote("v000002")
    assert reg.latest() == v1


def test_the_canary_refuses_nan_weights(tmp_path, model):
    reg = Registry(tmp_path)
    v1 = reg.publish(model)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(reg.path(v1) / WEIGHTS))
    tensors = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()
    }
    save_file(tensors, str(reg.path(v1) / WEIGHTS))
    with pytest.raises(CheckpointError, match="non-finite"):
        verify(reg.path(v1))


def test_a_worker_whose_latest_names_a_missing_version_serves_the_newest_one_that_loads(tmp_path, model):
    """A stale LATEST (a version pruned or copied by hand) used to leave a starting worker waiting for
    ever, answering nobody."""
    import asyncio

    from stream.worker.hotswap import ModelWatcher, load_verified

    reg = Registry(tmp_path)
    reg.publish(model)
    (tmp_path / "LATEST").write_text("v000007\n")
    refused: list[str] = []

    async def first():
        watcher = ModelWatcher(
            str(tmp_path),
            bootstrap="127.0.0.1:1",
            topic="model-updates",
            poll_interval=0.1,
            load=lambda path: load_verified(path, "cpu", 20, False),
            on_swap=None,  # type: ignore[arg-type]
            on_refused=lambda version, reason: refused.append(version),
        )
        return await asyncio.wait_for(watcher.first(), 20)

    served = asyncio.run(first())
    assert served.version == "v000001" and refused == ["v000007"]
