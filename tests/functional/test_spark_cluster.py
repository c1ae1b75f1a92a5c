"""The Spark engine on a standalone cluster (a master and a worker on loopback), not local[2].

The master and the worker are started from the pyspark installation (`spark-class`); the engine
is pointed at `spark://127.0.0.1:PORT` in a process of its own (a Spark session belongs to its
process, and the other tests' is local), and the spec queries — plain, dp and sdc plans — must
agree with DuckDB's row for row.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from safestats.engines import spark_available
from tests.spark_cluster import standalone, state

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not spark_available(), reason="needs the spark extra and Java 17")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    with standalone(tmp_path_factory.mktemp("spark")) as cluster:
        yield cluster


CHECK = textwrap.dedent(
    """
    import json, sys, time
    from dataclasses import replace
    from fractions import Fraction
    from safestats.access.policy import Disclosure
    from safestats.catalog import load_catalog
    from safestats.config import Settings
    from safestats.dataset import open_dataset
    from safestats.disclosure.dp import plan_dp
    from safestats.engines import create_engine
    from safestats.query.validate import plan_query
    from tests.spec.test_engines import DP_SPEC, SDC_SPEC, SPEC, _normalise

    path, master, manifest_only, uri = sys.argv[1:5]
    ds, catalog = open_dataset(path), load_catalog(data_dir=path)
    started = time.perf_counter()
    # the engine's dataset is a folder holding only the manifest; the files are read at the URI
    spark = create_engine("spark", open_dataset(manifest_only), Settings.load({}, spark_master=master, spark_data_uri=uri))
    opened = time.perf_counter() - started
    duck = create_engine("duckdb", ds)
    plans = [plan_query(q, catalog=catalog, max_cells=100_000) for q in SPEC]
    plans += [plan_dp(plan_query(q, catalog=catalog, max_cells=100_000), Disclosure(mode="dp", per_query=Fraction(1)),
                      max_cells=100_000).plan for q in DP_SPEC]
    plans += [replace(plan_query(q, catalog=catalog, max_cells=100_000), top_n=3, record_key=(7, 11, 13, 17))
              for q in SDC_SPEC]
    times, problems = [], []
    for plan in plans:
        keys = [k.name for k in plan.keys]
        t = time.perf_counter()
        got = _normalise(spark.execute(plan), keys)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        want = _normalise(duck.execute(plan), keys)
        times[-1] = (times[-1], time.perf_counter() - t)
        if list(got.columns) != list(want.columns) or len(got) != len(want):
            problems.append(f"{plan.query.hash[:8]}: shape {got.shape} vs {want.shape}")
            continue
        for col in want.columns:
            if col in keys:
                same = got[col].tolist() == want[col].tolist()
            else:
                a = got[col].astype(float).fillna(-1.5e300).to_numpy()
                b = want[col].astype(float).fillna(-1.5e300).to_numpy()
                same = bool(((a - b) == 0).all() or (abs(a - b) <= 1e-9 * abs(b).clip(1)).all())
            if not same:
                problems.append(f"{plan.query.hash[:8]}: column {col} differs")
    master_seen = spark._spark.sparkContext.master
    print("RESULT " + json.dumps({"plans": len(plans), "problems": problems, "master": master_seen,
                                   "open_s": opened, "times": times}))
    spark.close()
    """
)


def _manifest_only(census: Path, folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(census / "manifest.json", folder / "manifest.json")
    return folder


def test_the_spec_queries_agree_with_duckdb_on_a_standalone_cluster(spark_cluster, tmp_path):
    """The executors read the census from a URI (``spark_data_uri``), not from data_dir, which
    holds only the manifest here: as a census on HDFS or an object store would be read."""
    from safestats.synthetic.census import generate

    census = tmp_path / "small"
    generate(census, pupils=3000, seed=7, progress=False)  # the spec tests' census
    manifest_only = _manifest_only(census, tmp_path / "manifest-only")
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(census), spark_cluster["url"], str(manifest_only), census.as_uri()],
        env={**spark_cluster["env"], "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["master"] == spark_cluster["url"]  # the cluster, not a local session
    assert result["plans"] >= 15 and result["problems"] == []
    apps = state(spark_cluster["ui"]).get("completedapps", []) + state(spark_cluster["ui"]).get("activeapps", [])
    assert any(app.get("name") == "safestats" for app in apps)  # the master ran our application


REFUSE = textwrap.dedent(
    """
    import sys
    from safestats.config import Settings
    from safestats.dataset import open_dataset
    from safestats.engines import create_engine
    from safestats.errors import DataError
    try:
        create_engine("spark", open_dataset(sys.argv[1]), Settings.load({}, spark_master=sys.argv[2], spark_data_uri=sys.argv[3]))
    except DataError as e:
        print("REFUSED " + str(e))
    """
)


def test_files_at_the_uri_that_are_not_the_manifests_census_are_refused(spark_cluster, tmp_path):
    from safestats.synthetic.census import generate

    census, other = tmp_path / "census", tmp_path / "other"
    generate(census, pupils=3000, seed=7, progress=False)
    generate(other, pupils=2000, seed=8, progress=False)  # another census at the URI
    manifest_only = _manifest_only(census, tmp_path / "manifest-only")
    run = subprocess.run(
        [sys.executable, "-c", REFUSE, str(manifest_only), spark_cluster["url"], other.as_uri()],
        env={**spark_cluster["env"], "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "REFUSED " in run.stdout, run.stderr[-2000:]
    assert "rows; the manifest in data_dir says" in run.stdout and "not this census" in run.stdout
