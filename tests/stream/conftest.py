from __future__ import annotations

import pytest

from stream.kafka.broker import is_tansu
from stream.settings import Topics
from tests.stream.harness import any_broker, local_broker


@pytest.fixture(scope="session")
def bootstrap():
    """The suite's broker (harness.any_broker): Apache Kafka wherever Java and its jars are there."""
    with any_broker() as servers:
        yield servers


@pytest.fixture(scope="session")
def tansu_bootstrap(bootstrap):
    """The embedded Tansu, the zero-setup default of `nextclick demo` and `nextclick broker`, for the
    smoke tests that run on it besides the suite's broker (skipped where that is Tansu already)."""
    if is_tansu(bootstrap):
        pytest.skip("the suite's broker is Tansu already")
    with local_broker("tansu") as broker:
        yield broker.bootstrap


@pytest.fixture(params=["suite-broker", "tansu"])
def smoke_bootstrap(request):
    """For the smoke subset: the suite's broker, then the embedded Tansu."""
    return request.getfixturevalue("bootstrap" if request.param == "suite-broker" else "tansu_bootstrap")


@pytest.fixture()
def topics() -> Topics:
    return Topics()


@pytest.fixture(scope="session")
def served_checkpoint(tmp_path_factory):
    """A small vsknn checkpoint on the synthetic item world, trained through the real CLI code path."""
    from model.data.synthetic import synthetic_data
    from model.lifecycle.checkpoint import save_checkpoint
    from model.lifecycle.experiment import fit_model, make_model

    data = synthetic_data(n_sessions=2000, n_items=300, seed=0)
    model = make_model("vsknn", data)
    fit_model(model, data)
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "vsknn")
