"""The synthetic census: shape, validity, determinism and the injected quality problems."""

from __future__ import annotations

import json
import math
import re

import pytest

from safestats.catalog import load_catalog
from safestats.dataset import open_dataset
from safestats.errors import DataError, UserError
from safestats.synthetic import reference as ref
from safestats.synthetic.census import QualityRates, generate, upn_check_letter


def _near(observed: int, n: int, rate: float, sds: float = 4.5) -> bool:
    """``observed`` is within ``sds`` binomial standard deviations of ``n * rate``."""
    expected = n * rate
    return abs(observed - expected) <= sds * math.sqrt(n * rate * (1 - rate)) + 1


def test_committed_sample_is_exactly_what_the_generator_makes(sample_dir, tmp_path):
    """Determinism: the committed sample regenerates byte for byte from its seed."""
    committed = json.loads((sample_dir / "manifest.json").read_text())
    fresh = generate(tmp_path / "again", scale="sample", seed=committed["seed"], progress=False)
    assert fresh == committed
    assert open_dataset(sample_dir).verify() == []


def test_a_different_seed_gives_different_data(tmp_path):
    a = generate(tmp_path / "a", pupils=5000, seed=1, progress=False)
    b = generate(tmp_path / "b", pupils=5000, seed=2, progress=False)
    assert a["files"]["PupilOnRoll.parquet"]["sha256"] != b["files"]["PupilOnRoll.parquet"]["sha256"]


def test_every_catalog_column_is_in_the_data_with_its_type(duck):
    catalog = load_catalog()
    types = {"string": "VARCHAR", "int64": "BIGINT", "bool": "BOOLEAN", "date": "DATE"}
    for table in catalog.tables.values():
        described = dict(
            duck.execute(f"DESCRIBE {table.name}").fetchall()
            and [(r[0], r[1]) for r in duck.execute(f"DESCRIBE {table.name}").fetchall()]
        )
        assert list(described) == list(table.columns), table.name
        for col in table.columns.values():
            assert described[col.name] == types[col.type], (table.name, col.name)


def test_category_values_are_in_their_domain_or_an_injected_problem(duck, sample_dir):
    catalog = load_catalog(data_dir=sample_dir)
    for table in catalog.tables.values():
        for col in table.columns.values():
            if not col.groupable or col.domain_source == "none":
                continue
            values = [r[0] for r in duck.execute(f"SELECT DISTINCT {col.name} FROM {table.name}").fetchall()]
            allowed_invalid = set(ref.INVALID_CODES.get(col.name, ()))
            bad = {v for v in values if not col.in_domain(v) and v not in allowed_invalid}
            assert bad == set(), f"{table.name}.{col.name}: {sorted(map(str, bad))}"


def test_measures_are_within_their_bounds(duck):
    lo, hi = duck.execute(
        "SELECT min(least(sessions_possible, sessions_attended)), max(greatest(sessions_possible, sessions_attended)) FROM PupilOnRoll"
    ).fetchone()
    assert 0 <= lo and hi <= 200
    assert (
        duck.execute("SELECT count(*) FROM PupilOnRoll WHERE sessions_attended > sessions_possible").fetchone()[0] == 0
    )


def test_la_sizes_are_realistic_and_skewed(duck):
    sizes = dict(
        duck.execute(
            "SELECT la_code, count(DISTINCT pupil_id) FROM PupilOnRoll WHERE term='2016-autumn' GROUP BY 1"
        ).fetchall()
    )
    assert len(sizes) == 152
    assert sizes["886"] > 20 * sizes["857"]  # Kent against Rutland
    assert sizes["201"] < 10 and sizes["420"] < 10  # City of London, Isles of Scilly: tiny


def test_schools_nest_in_local_authorities(duck):
    assert (
        duck.execute(
            "SELECT count(*) FROM (SELECT school_urn FROM PupilOnRoll GROUP BY 1 HAVING count(DISTINCT la_code) > 1)"
        ).fetchone()[0]
        == 0
    )
    assert (
        duck.execute(
            "SELECT count(*) FROM PupilOnRoll p LEFT JOIN schools s ON p.school_urn = s.urn WHERE s.urn IS NULL OR s.la_code::VARCHAR <> p.la_code"
        ).fetchone()[0]
        == 0
    )


def test_upns_are_well_formed_with_valid_check_letters(duck):
    upns = [r[0] for r in duck.execute("SELECT DISTINCT upn FROM PupilOnRoll").fetchall()]
    assert all(re.fullmatch(r"[A-HJ-NP-RT-Z][0-9]{12}", u) for u in upns)
    assert all(upn_check_letter(u[1:]) == u[0] for u in upns)
    # the LA in the UPN is the school's LA
    assert duck.execute("SELECT count(*) FROM PupilOnRoll WHERE substr(upn, 2, 3) <> la_code").fetchone()[0] == 0


def test_a_upn_belongs_to_one_pupil(duck):
    assert (
        duck.execute(
            "SELECT count(*) FROM (SELECT upn FROM PupilOnRoll GROUP BY 1 HAVING count(DISTINCT pupil_id) > 1)"
        ).fetchone()[0]
        == 0
    )


def test_check_letter_known_value():
    # 2*2 + 0*3 + 1*4 + 0*5 + 0*6 + 0*7 + 1*8 + 1*9 + 6*10 + 0*11 + 0*12 + 1*13 = 98;
    # 98 mod 23 = 6, and the seventh letter of ABCDEFGHJKLMNPQRTUVWXYZ is G.
    assert upn_check_letter("201000116001") == "G"
    with pytest.raises(ValueError):
        upn_check_letter("20100011600A")


def test_nc_year_matches_age_except_injected_problems(duck, sample_dir):
    rates = json.loads((sample_dir / "manifest.json").read_text())["quality_rates"]
    n, bad = duck.execute("""
        SELECT count(*), count(*) FILTER (WHERE age <> (CASE nc_year WHEN 'R' THEN 0 ELSE nc_year::INT END) + 4)
        FROM (SELECT DISTINCT pupil_id, nc_year, age FROM PupilOnRoll)
    """).fetchone()
    assert bad > 0 and _near(bad, n, rates["age_inconsistent"])
    # date of birth agrees with the recorded age at 31 August 2016
    assert (
        duck.execute("""
        SELECT count(*) FROM PupilOnRoll
        WHERE date_diff('year', date_of_birth, DATE '2016-08-31') - (CASE WHEN strftime(date_of_birth, '%m-%d') > '08-31' THEN 1 ELSE 0 END) <> age
    """).fetchone()[0]
        == 0
    )


def test_dual_registrations_share_pupil_and_upn(duck, sample_dir):
    rates = json.loads((sample_dir / "manifest.json").read_text())["quality_rates"]
    n, dual = duck.execute("""
        SELECT count(*), count(*) FILTER (WHERE rows > 1) FROM
        (SELECT pupil_id, count(*) rows, count(DISTINCT school_urn) schools FROM PupilOnRoll WHERE term='2016-autumn' GROUP BY 1)
    """).fetchone()
    assert dual > 0 and _near(dual, n, rates["dual_registration"])


def test_proficiency_is_for_other_languages_with_injected_violations(duck, sample_dir):
    rates = json.loads((sample_dir / "manifest.json").read_text())["quality_rates"]
    n_eng, with_prof = duck.execute("""
        SELECT count(*), count(proficiency_in_english) FROM PupilOnRoll_Unrestricted
        WHERE first_language = 'ENG' AND term = '2016-autumn'
    """).fetchone()
    assert with_prof > 0 and _near(with_prof, n_eng, rates["proficiency_for_english"])
    n_oth, oth_prof = duck.execute("""
        SELECT count(*), count(proficiency_in_english) FROM PupilOnRoll_Unrestricted
        WHERE first_language = 'OTH'
    """).fetchone()
    assert oth_prof == n_oth


def test_invalid_codes_at_their_rate(duck, sample_dir):
    rates = json.loads((sample_dir / "manifest.json").read_text())["quality_rates"]
    n, bad = duck.execute(
        "SELECT count(*), count(*) FILTER (WHERE nationality IN ('UK', 'ENG', 'XXX')) FROM Nationality"
    ).fetchone()
    assert bad > 0 and _near(bad, n, rates["invalid_code"])


def test_refusal_and_not_obtained_vary_by_la_and_school(duck, sample_dir):
    rates = json.loads((sample_dir / "manifest.json").read_text())["quality_rates"]
    by_la = duck.execute("""
        SELECT p.la_code, avg((n.nationality = 'NYO')::INT) nyo, avg((n.nationality = 'REF')::INT) ref
        FROM Nationality n JOIN PupilOnRoll p USING (pupil_id, term)
        WHERE term = '2016-autumn' GROUP BY 1 HAVING count(*) > 200
    """).fetchall()
    nyo = [r[1] for r in by_la]
    refused = [r[2] for r in by_la]
    assert max(nyo) - min(nyo) > 0.1 and max(refused) > 2 * min(refused)
    schools, all_nyo = duck.execute("""
        SELECT count(*), count(*) FILTER (WHERE share = 1) FROM (
            SELECT p.school_urn, avg((n.nationality = 'NYO')::INT) share
            FROM Nationality n JOIN PupilOnRoll p USING (pupil_id, term)
            WHERE term = '2017-summer' GROUP BY 1 HAVING count(*) >= 20)
    """).fetchone()
    assert all_nyo > 0 and _near(all_nyo, schools, rates["school_all_not_obtained"])
    # collection improves over the year
    shares = duck.execute("""
        SELECT term, avg((nationality = 'NYO')::INT) FROM Nationality GROUP BY 1 ORDER BY 1
    """).fetchall()
    assert shares[0][1] > shares[2][1]  # 2016-autumn above 2017-summer


def test_pupils_missing_next_term_without_leaving_record(duck, sample_dir):
    rates = json.loads((sample_dir / "manifest.json").read_text())["quality_rates"]
    n, missing = duck.execute("""
        WITH a AS (SELECT DISTINCT pupil_id FROM PupilOnRoll WHERE term = '2016-autumn'),
             s AS (SELECT DISTINCT pupil_id FROM PupilOnRoll WHERE term = '2017-spring'),
             l AS (SELECT DISTINCT pupil_id FROM PupilNoLongerOnRoll WHERE term = '2017-spring')
        SELECT (SELECT count(*) FROM a),
               (SELECT count(*) FROM a WHERE pupil_id NOT IN (SELECT * FROM s) AND pupil_id NOT IN (SELECT * FROM l))
    """).fetchone()
    assert missing > 0 and _near(missing, n, rates["missing_next_term"] / 2)


def test_leavers_left_between_censuses(duck):
    rows = duck.execute("""
        SELECT term, min(leaving_date), max(leaving_date), count(*) FROM PupilNoLongerOnRoll GROUP BY 1 ORDER BY 1
    """).fetchall()
    assert [r[0] for r in rows] == ["2016-autumn", "2017-spring", "2017-summer"]
    assert str(rows[0][1]) >= "2016-09-01" and str(rows[0][2]) <= "2016-10-06"
    assert str(rows[2][1]) >= "2017-01-19" and str(rows[2][2]) <= "2017-05-18"
    # a leaver is not on roll in the term they left
    assert (
        duck.execute("""
        SELECT count(*) FROM PupilNoLongerOnRoll l JOIN PupilOnRoll p USING (pupil_id, term)
    """).fetchone()[0]
        == 0
    )


def test_unrestricted_tables_are_the_same_rows_with_nationality(duck):
    assert (
        duck.execute("SELECT count(*) FROM PupilOnRoll").fetchone()
        == duck.execute("SELECT count(*) FROM PupilOnRoll_Unrestricted").fetchone()
    )
    mismatched = duck.execute("""
        SELECT count(*) FROM PupilOnRoll_Unrestricted u JOIN Nationality n USING (pupil_id, term)
        WHERE u.nationality IS DISTINCT FROM n.nationality
    """).fetchone()[0]
    assert mismatched == 0


def test_rates_are_recorded_and_applied(tmp_path):
    m = generate(tmp_path / "c", pupils=5000, rates=QualityRates(dual_registration=0.0), progress=False)
    assert m["quality_rates"]["dual_registration"] == 0.0
    import duckdb

    dup = duckdb.execute(f"""SELECT count(*) FROM (SELECT pupil_id FROM '{tmp_path}/c/PupilOnRoll.parquet'
                          GROUP BY pupil_id, term HAVING count(*) > 1)""").fetchone()[0]
    assert dup == 0


def test_bad_arguments_are_clear_and_write_nothing(tmp_path):
    with pytest.raises(UserError, match="unknown scale 'galactic'"):
        generate(tmp_path / "x", scale="galactic")
    with pytest.raises(UserError, match="at least 1000"):
        generate(tmp_path / "x", pupils=10)
    assert list(tmp_path.iterdir()) == []


def test_open_dataset_errors(tmp_path, sample_dir):
    with pytest.raises(DataError, match="generate one with `safestats synth`"):
        open_dataset(tmp_path)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    assert open_dataset(copy).snapshot_id == open_dataset(sample_dir).snapshot_id
    with (copy / "Nationality.parquet").open("ab") as f:
        f.write(b"tamper")
    assert open_dataset(copy).verify() == ["Nationality.parquet: SHA-256 differs from the manifest"]


def test_the_catalogs_population_declarations_hold(duck, catalog):
    """sdc links tables by population (catalog `population`, `complete` joins): the views have
    the same rows as their base tables, Nationality one row per pupil and term on roll, and the
    join keeps every PupilOnRoll row."""
    for name, table in catalog.tables.items():
        if table.population == name:
            continue
        base = catalog.tables[table.population]
        if table.rows == "same":
            shared = ", ".join(c for c in base.columns if c in table.columns)
            diff = duck.execute(
                f"SELECT count(*) FROM ((SELECT {shared} FROM {name} EXCEPT ALL SELECT {shared} FROM "
                f"{base.name}) UNION ALL (SELECT {shared} FROM {base.name} EXCEPT ALL SELECT {shared} "
                f"FROM {name}))"
            ).fetchone()[0]
            assert diff == 0, name
        else:
            assert (
                duck.execute(f"SELECT count(*), count(DISTINCT (pupil_id, term)) FROM {name}").fetchone()
                == duck.execute(
                    f"SELECT count(DISTINCT (pupil_id, term)), count(DISTINCT (pupil_id, term)) FROM {base.name}"
                ).fetchone()
            )
    for join in catalog.joins:
        if join.complete:
            on = " AND ".join(f"l.{c} = r.{c}" for c in join.using)
            assert (
                duck.execute(f"SELECT count(*) FROM {join.left} l JOIN {join.right} r ON {on}").fetchone()
                == duck.execute(f"SELECT count(*) FROM {join.left}").fetchone()
            )
    same = duck.execute("""SELECT count(*) FROM PupilOnRoll_Unrestricted u JOIN Nationality n USING (pupil_id, term)
        WHERE u.nationality IS DISTINCT FROM n.nationality OR u.country_of_birth IS DISTINCT FROM n.country_of_birth
           OR u.proficiency_in_english IS DISTINCT FROM n.proficiency_in_english""").fetchone()[0]
    assert same == 0
