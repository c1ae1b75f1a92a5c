"""Shared fixtures. The committed sample census is read-only to every test."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_wall_clock_in_the_incident_watch(monkeypatch):
    """The out-of-hours rule reads the wall clock: left in the service's check at every request,
    a test of anything over HTTP would gain an incident record when CI runs at night or at a
    weekend. The rule itself is tested on records with fixed times (tests/functional/test_incidents.py)."""
    import safestats.service.incident_watch as watch

    monkeypatch.setattr(watch, "AT_EVERY_REQUEST", tuple(r for r in watch.AT_EVERY_REQUEST if r != "out_of_hours"))


def pytest_sessionfinish(session, exitstatus):
    """Close DuckDB connections before the interpreter exits, so its bindings stay quiet."""
    import gc

    from safestats.engines.duckdb import close_all

    close_all()
    gc.collect()


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


@pytest.fixture(scope="session")
def catalog(sample_dir):
    from safestats.catalog import load_catalog

    return load_catalog(data_dir=sample_dir)


@pytest.fixture(scope="session")
def policy(catalog):
    from safestats.access.policy import load_policy

    return load_policy(catalog=catalog)


@pytest.fixture
def store_url(tmp_path):
    return f"sqlite:///{tmp_path / 'safestats.db'}"


@pytest.fixture
def connect(sample_dir, store_url):
    """Open embedded sessions over the sample census, sharing one fresh audit store."""
    import safestats

    def _connect(user="demo.analyst", **settings):
        settings.setdefault("store_url", store_url)
        settings.setdefault("output_checking_dir", str(Path(store_url.removeprefix("sqlite:///")).parent / "outputs"))
        settings.setdefault("output_dir", str(Path(store_url.removeprefix("sqlite:///")).parent / "saved"))
        return safestats.connect(user=user, data_dir=sample_dir, environ={}, **settings)

    return _connect


@pytest.fixture
def olive_service(sample_dir, tmp_path):
    """``make(**settings)``: a service over the sample census with a fresh store and keys in
    ``tmp_path``, and the bearer header of its dp analyst ``olive`` (for the HTTP app's tests)."""
    from safestats.config import Settings
    from safestats.service.pipeline import Service

    def make(**settings):
        where = {
            "data_dir": sample_dir,
            "store_url": f"sqlite:///{tmp_path / 'store.db'}",
            "secret_key_file": str(tmp_path / "key"),
            "signing_key_file": str(tmp_path / "signing.key"),
        }
        service = Service(Settings.load({}, **(where | settings)))
        service.users.add_user("olive", groups=["I_STORE_SC_USERS"], organisation="DfE")
        return service, {"Authorization": f"Bearer {service.users.issue_token('olive')}"}

    return make


@pytest.fixture(scope="module")
def module_service(sample_dir, tmp_path_factory):
    """One embedded service per test module (its audit store is the module's own)."""
    from safestats.config import Settings
    from safestats.service.pipeline import Service

    db = tmp_path_factory.mktemp("store") / "safestats.db"
    return Service(
        Settings.load(
            {}, data_dir=sample_dir, store_url=f"sqlite:///{db}", output_checking_dir=str(db.parent / "outputs")
        )
    )


@pytest.fixture(scope="session")
def pg_cluster():
    import shutil
    import tempfile

    from tests.pg import start_cluster

    root = Path(tempfile.mkdtemp(prefix="safestats-pg-"))  # outside pytest's 0700 folders
    cluster = start_cluster(root)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store_url(request, tmp_path):
    """A fresh, empty store on SQLite and on PostgreSQL: the same tests run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_cluster").new_database()


@pytest.fixture
def serve(sample_dir, tmp_path):
    """``start(workers, user=True, **env)``: `safestats serve --workers N` on a free port
    (tests/workers.py: Served); every one started is stopped, workers included, at the end."""
    from tests.workers import Served

    made: list[Served] = []

    def start(workers: int, *, user: bool = True, **env: str) -> Served:
        made.append(Served(sample_dir, tmp_path, workers, user=user, **env))
        return made[-1]

    yield start
    for s in made:
        s.close()
