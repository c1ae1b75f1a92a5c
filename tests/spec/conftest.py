"""The spec tests' census: small (3,000 pupils), generated once per module."""

from __future__ import annotations

import pytest

from safestats.catalog import load_catalog
from safestats.dataset import open_dataset
from safestats.synthetic.census import generate


class _Small(tuple):
    def __repr__(self) -> str:  # keep hypothesis' failure reports readable
        return "<small census>"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(dataset, catalog) of a small synthetic census (seed 7)."""
    path = tmp_path_factory.mktemp("census") / "small"
    generate(path, pupils=3000, seed=7, progress=False)
    return _Small((open_dataset(path), load_catalog(data_dir=path)))
