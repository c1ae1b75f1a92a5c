from __future__ import annotations

import shutil

import pytest
import yaml

from safestats.catalog import load_catalog
from safestats.errors import CatalogError
from safestats.resources import CODELISTS, RESOURCES


@pytest.fixture
def catalog(sample_dir):
    return load_catalog(data_dir=sample_dir)


def test_catalog_declares_the_seed_case_tables(catalog):
    assert set(catalog.tables) == {
        "PupilOnRoll",
        "PupilNoLongerOnRoll",
        "Nationality",
        "PupilOnRoll_Unrestricted",
        "PupilNoLongerOnRoll_Unrestricted",
    }
    restricted = {t.name for t in catalog.tables.values() if t.restricted}
    assert restricted == {"Nationality", "PupilOnRoll_Unrestricted", "PupilNoLongerOnRoll_Unrestricted"}
    assert catalog.privacy_unit == "pupil_id"


def test_identifiers_are_declared_and_sensitive(catalog):
    por = catalog.table("PupilOnRoll")
    ids = {c.name for c in por.columns.values() if c.is_identifier}
    assert ids == {"pupil_id", "upn", "forename", "surname", "date_of_birth", "postcode"}
    assert all(por.columns[c].classification == "OFFICIAL-SENSITIVE" for c in ids)


def test_public_domains_come_from_the_code_lists(catalog):
    por = catalog.table("PupilOnRoll")
    assert len(por.column("la_code").domain) == 152
    assert len(catalog.table("Nationality").column("nationality").domain) == 202
    assert {"NYO", "REF"} <= set(catalog.table("Nationality").column("nationality").domain)
    assert por.column("fsm_eligible").domain == (False, True)
    assert por.column("sessions_attended").bounds == (0, 200)


def test_school_register_domain_is_read_from_the_data(catalog, sample_dir):
    urns = catalog.table("PupilOnRoll").column("school_urn").domain
    n_schools = len((sample_dir / "schools.csv").read_text().splitlines()) - 1
    assert urns is not None and len(urns) == n_schools
    without_data = load_catalog()
    assert without_data.table("PupilOnRoll").column("school_urn").domain is None


def test_classification_order_and_highest(catalog):
    assert catalog.classifications == ("OFFICIAL", "OFFICIAL-SENSITIVE")
    assert catalog.highest(["OFFICIAL", "OFFICIAL-SENSITIVE"]) == "OFFICIAL-SENSITIVE"
    assert catalog.highest([]) == "OFFICIAL"
    assert catalog.impact_levels["OFFICIAL-SENSITIVE"] == "IL3"


def test_only_declared_joins(catalog):
    assert catalog.join_between("Nationality", "PupilOnRoll").using == ("pupil_id", "term")
    assert catalog.join_between("PupilNoLongerOnRoll", "PupilOnRoll") is None


def _broken_copy(tmp_path, mutate):
    shutil.copytree(CODELISTS, tmp_path / "codelists")
    raw = yaml.safe_load((RESOURCES / "catalog.yaml").read_text())
    mutate(raw)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["columns"]["sex"].update(role="colour"), "column sex: role 'colour'"),
        (lambda r: r["columns"]["la_code"].pop("domain"), "column la_code: a key column needs a public domain"),
        (lambda r: r["columns"]["sessions_possible"].update(bounds=[5, 1]), "column sessions_possible: bounds"),
        (lambda r: r["columns"]["sex"].update(domain="genders"), "column sex: domain names unknown code list"),
        (lambda r: r["tables"]["Nationality"]["columns"].append("shoe_size"), "table Nationality, column shoe_size"),
        (lambda r: r["tables"]["PupilOnRoll"].update(classification="SECRET"), "table PupilOnRoll: classification"),
        (
            lambda r: r["joins"].append({"left": "PupilOnRoll", "right": "Nope", "using": ["term"]}),
            "joins[1]: unknown table",
        ),
    ],
)
def test_invalid_catalogs_name_file_table_and_column(tmp_path, mutate, expected):
    path = _broken_copy(tmp_path, mutate)
    with pytest.raises(CatalogError) as e:
        load_catalog(path)
    assert str(path) in str(e.value)
    assert expected in str(e.value)


def test_missing_catalog_file_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogError, match="catalog file not found"):
        load_catalog(tmp_path / "nope.yaml")
