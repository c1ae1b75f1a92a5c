"""Shared fixtures. The committed sample census is read-only to every test."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "synthetic" / "sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    assert (SAMPLE / "manifest.json").exists(), "the committed sample census is missing"
    return SAMPLE


@pytest.fixture(scope="session")
def duck(sample_dir):
    """A DuckDB connection with a view per census table, for checking the data itself."""
    import duckdb

    con = duckdb.connect()
    for f in sample_dir.glob("*.parquet"):
        con.execute(f"CREATE VIEW {f.stem} AS SELECT * FROM read_parquet('{f}')")
    con.execute(f"CREATE VIEW schools AS SELECT * FROM read_csv('{sample_dir / 'schools.csv'}')")
    yield con
    con.close()
