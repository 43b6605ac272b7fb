from __future__ import annotations

import pytest

from tests.stream.harness import Topics, any_broker


@pytest.fixture(scope="session")
def bootstrap():
    with any_broker() as servers:
        yield servers


@pytest.fixture()
def topics() -> Topics:
    return Topics()


@pytest.fixture(scope="session")
def served_checkpoint(tmp_path_factory):
    """A small vsknn checkpoint on the synthetic item world, trained through the real CLI code path."""
    from model.checkpoint import save_checkpoint
    from model.synthetic import synthetic_data
    from model.training import fit_model, make_model, popular_items

    data = synthetic_data(n_sessions=2000, n_items=300, seed=0)
    model = make_model("vsknn", data)
    fit_model(model, data)
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "vsknn", fallback=popular_items(data))
