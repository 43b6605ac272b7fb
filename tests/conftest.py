from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(name: str) -> Path:
    """A data set under ../shared/data, or a skip where this clone has none (a user's clone)."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def tiny_data():
    from model.data.synthetic import synthetic_data

    return synthetic_data(n_sessions=1500, n_items=200, seed=3)
