"""Embedded mode runs the service inside the analyst's own process, so it must never open real
data: an analyst who points ``ss.connect(data_dir=...)`` (or the embedded CLI) at a census that
is not the synthetic one is refused before anything is read, while the service itself (run by
the data owner, behind HTTP) opens it."""

from __future__ import annotations

import json
import shutil

import pytest

import safestats as ss
from safestats.cli import main
from safestats.config import Settings
from safestats.errors import ConfigError
from safestats.service.pipeline import Service


@pytest.fixture
def real_looking(sample_dir, tmp_path):
    census = tmp_path / "census"
    shutil.copytree(sample_dir, census)
    manifest = json.loads((census / "manifest.json").read_text())
    manifest.pop("synthetic")  # a census of real pupils carries no such flag
    (census / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return census


def test_embedded_mode_refuses_a_census_that_is_not_synthetic(real_looking, tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(ConfigError, match="not the synthetic census.*connect to the safestats service"):
        ss.connect(data_dir=real_looking, store_url=store, environ={})
    assert not (tmp_path / "s.db").exists()  # refused before the store, the census or the engine is opened
    env = {"SAFESTATS_DATA_DIR": str(real_looking), "SAFESTATS_STORE_URL": store}
    assert main(["query", "SELECT phase, COUNT(*) FROM PupilOnRoll GROUP BY phase"], environ=env) != 0
    assert "not the synthetic census" in capsys.readouterr().err


def test_the_service_itself_opens_it_and_embedded_mode_opens_the_synthetic_census(real_looking, sample_dir, tmp_path):
    service = Service(Settings.load({}, data_dir=real_looking, store_url=f"sqlite:///{tmp_path / 'svc.db'}"))
    assert service.dataset.manifest.get("synthetic") is None
    s = ss.connect(data_dir=sample_dir, store_url=f"sqlite:///{tmp_path / 'e.db'}", environ={})
    assert len(s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()) == 4


def test_the_service_will_not_serve_a_real_census_or_keys_that_others_can_read(real_looking, tmp_path, capsys):
    """`safestats serve` checks file modes before it listens: a real census readable by other
    users (the analysts' accounts) refuses the start, naming the files; made private, it passes
    that check. The keys are checked whatever the census."""
    from safestats.service.boundary import check_private

    key, signing = tmp_path / "keys" / "k", tmp_path / "keys" / "sk"
    settings = Settings.load(
        {},
        data_dir=real_looking,
        store_url=f"sqlite:///{tmp_path / 's.db'}",
        secret_key_file=str(key),
        signing_key_file=str(signing),
    )
    service = Service(settings)  # creates both keys, 0600
    real_looking.chmod(0o755)
    for f in real_looking.iterdir():
        f.chmod(0o644)
    env = {
        "SAFESTATS_DATA_DIR": str(real_looking),
        "SAFESTATS_STORE_URL": settings.store_url,
        "SAFESTATS_SECRET_KEY_FILE": str(key),
        "SAFESTATS_SIGNING_KEY_FILE": str(signing),
    }
    assert main(["serve", "--port", "1"], environ=env) != 0
    err = capsys.readouterr().err
    assert "will not start while others can read" in err and "PupilOnRoll.parquet" in err
    real_looking.chmod(0o750)
    for f in real_looking.iterdir():
        f.chmod(0o640)
    check_private(settings, service.dataset)  # private now: no error
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="k \\(mode"):
        check_private(settings, service.dataset)
