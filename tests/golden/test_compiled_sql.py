"""Golden files: the SQL the DuckDB engine runs for representative plans.

A change to the compiled SQL shows up as a diff here. To accept a deliberate change, run
``SAFESTATS_REGEN_GOLDEN=1 pytest tests/golden`` and review the diff of the .sql files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safestats.dataset import open_dataset
from safestats.engines.duckdb import DuckDBEngine
from safestats.query.model import INVALID, Aggregate, Filter, Query
from safestats.query.validate import plan_query

GOLDEN = Path(__file__).parent / "duckdb"

CASES = {
    "count_by_la_fsm": Query(
        "PupilOnRoll",
        (Aggregate("count"),),
        ("la_code", "fsm_eligible"),
        (Filter("term", "==", "2017-spring"), Filter("phase", "==", "Secondary")),
    ),
    "attendance_by_phase": Query(
        "PupilOnRoll",
        (Aggregate("mean", "sessions_attended"), Aggregate("quantile", "sessions_attended", 0.5)),
        ("phase",),
    ),
    "nationality_join": Query(
        "PupilOnRoll",
        (Aggregate("count_pupils"),),
        ("la_code", "nationality"),
        (Filter("age", "between", (5, 10)),),
        join="Nationality",
    ),
    "invalid_codes": Query(
        "Nationality",
        (Aggregate("count"),),
        ("term",),
        (Filter("nationality", "==", INVALID), Filter("proficiency_in_english", "!=", None)),
    ),
}


@pytest.fixture(scope="module")
def engine(sample_dir):
    return DuckDBEngine(open_dataset(sample_dir))


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_sql_matches_golden_file(name, engine, catalog):
    sql = engine.sql(plan_query(CASES[name], catalog=catalog, max_cells=100_000)) + "\n"
    path = GOLDEN / f"{name}.sql"
    if os.environ.get("SAFESTATS_REGEN_GOLDEN") == "1":
        path.write_text(sql)
    assert path.exists(), f"no golden file {path}; run with SAFESTATS_REGEN_GOLDEN=1"
    assert sql == path.read_text()


def test_compiled_sql_reads_only_catalog_views(engine, catalog):
    for q in CASES.values():
        sql = engine.sql(plan_query(q, catalog=catalog, max_cells=100_000))
        assert "read_parquet" not in sql and "INSERT" not in sql.upper()
        assert any(f'"{t}"' in sql for t in catalog.tables)
