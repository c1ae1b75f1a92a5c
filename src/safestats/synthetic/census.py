"""A seeded generator of a synthetic school census for England, academic year 2016/17.

It writes the tables of the census store as Parquet files (one file per table, term as a
column), a public register of schools (``schools.csv``) and a ``manifest.json`` with the seed,
the generator version, the injected quality-problem rates, row counts and the SHA-256 of every
file. The output depends only on the scale, the seed and the generator version.

Generation works one local authority at a time, each with its own random stream, and writes
row groups as it goes, so memory stays bounded at any scale.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from safestats.catalog import Catalog, load_catalog
from safestats.census_keys import CensusKeys
from safestats.dataset import sha256_file
from safestats.errors import UserError
from safestats.synthetic import reference as ref

__all__ = ["GENERATOR_VERSION", "SCALES", "QualityRates", "generate", "upn_check_letter"]

GENERATOR_VERSION = "2"
SCALES = {"sample": 50_000, "regional": 500_000, "national": 8_800_000}
TABLES = (
    "PupilOnRoll",
    "PupilNoLongerOnRoll",
    "Nationality",
    "PupilOnRoll_Unrestricted",
    "PupilNoLongerOnRoll_Unrestricted",
)
FLUSH_ROWS = 1_000_000
_ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(), "date": pa.date32()}
_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class QualityRates:
    """Rates of the data-quality problems the generator injects (quality reports find them)."""

    school_all_not_obtained: float = 0.03
    proficiency_for_english: float = 0.01
    invalid_code: float = 0.003
    dual_registration: float = 0.003
    age_inconsistent: float = 0.004
    missing_next_term: float = 0.005
    leave_per_term: float = 0.015
    join_per_term: float = 0.012


@dataclass
class _Plan:
    """What is decided for the whole country before any pupil is drawn."""

    pupils_per_la: list[int]
    schools: list[dict[str, Any]] = field(default_factory=list)


def upn_check_letter(body: str) -> str:
    """The check letter of a UPN from its other twelve characters (DfE modulus-23 rule).

    >>> upn_check_letter("201000116001")
    'G'
    """
    digits = np.array([[int(c) for c in body]], dtype=np.int64)
    return ref.UPN_CHECK_LETTERS[int(_check_indices(digits)[0])]


def _check_indices(digits: np.ndarray) -> np.ndarray:
    weights = np.arange(2, 14, dtype=np.int64)
    return (digits * weights).sum(axis=1) % 23


def generate(
    out_dir: Path | str,
    *,
    scale: str = "sample",
    seed: int = 2017,
    pupils: int | None = None,
    rates: QualityRates | None = None,
    catalog: Catalog | None = None,
    progress: bool | None = None,
    keys: CensusKeys | None = None,
) -> dict[str, Any]:
    """Generate the census into ``out_dir`` and return its manifest.

    With ``keys`` (a key-encryption key's, no data keys yet) every Parquet file is written
    encrypted, each under a data key of its own: no plaintext of them touches the disk.

    ``pupils`` overrides the scale's number of pupils on roll in autumn. The files are
    written into a temporary folder beside ``out_dir`` and moved into place at the end, so a
    failed run never leaves a half-written census.
    """
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    target = int(pupils) if pupils is not None else SCALES[scale]
    if target < 1000:
        raise UserError(f"pupils must be at least 1000 (got {target})")
    rates = rates or QualityRates()
    catalog = catalog or load_catalog()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    las = ref.local_authorities()
    plan = _plan(las, target, seed)
    work = Path(tempfile.mkdtemp(prefix=".synth-", dir=out_dir.parent))
    try:
        writers = {t: _TableWriter(work / f"{t}.parquet", _schema(catalog, t), keys) for t in TABLES}
        counts: dict[str, dict[str, int]] = {t: dict.fromkeys(ref.TERMS, 0) for t in TABLES}
        bar = _progress(total=sum(plan.pupils_per_la), enabled=progress)
        for i, la in enumerate(las):
            chunk = _LaGenerator(i, la, plan, seed, rates).tables()
            for name, by_term in chunk.items():
                for term, table in by_term.items():
                    writers[name].write(table)
                    counts[name][term] += table.num_rows
            bar(plan.pupils_per_la[i])
        files = {f"{t}.parquet": writers[t].close() for t in TABLES}
        _write_schools(work / "schools.csv", plan.schools)
        files["schools.csv"] = {"rows": len(plan.schools), "sha256": sha256_file(work / "schools.csv")}
        manifest = {
            "synthetic": True,  # embedded mode opens only a census that says so (never real data)
            "generator": "safestats.synthetic.census",
            "generator_version": GENERATOR_VERSION,
            "dataset": catalog.dataset,
            "scale": scale,
            "seed": seed,
            "pupils": target,
            "terms": list(ref.TERMS),
            "local_authorities": len(las),
            "schools": len(plan.schools),
            "quality_rates": asdict(rates),
            "invalid_codes": {k: list(v) for k, v in ref.INVALID_CODES.items()},
            "row_counts": counts,
            "files": files,
        }
        if keys is not None:
            manifest["encryption"] = keys.section()
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.chmod(0o755)
        work.rename(out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return manifest


def _schema(catalog: Catalog, table: str) -> pa.Schema:
    cols = catalog.table(table).columns.values()
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.type]) for c in cols])


class _TableWriter:
    def __init__(self, path: Path, schema: pa.Schema, keys: CensusKeys | None = None) -> None:
        self.path = path
        self.schema = schema
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        options = {} if keys is None else {"encryption_properties": keys.encryption_properties(path.name)}
        self.writer = pq.ParquetWriter(path, schema, compression="zstd", **options)

    def write(self, table: pa.Table) -> None:
        self.buffer.append(table.select(self.schema.names).cast(self.schema))
        self.buffered += table.num_rows
        if self.buffered >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.concat_tables(self.buffer), row_group_size=FLUSH_ROWS)
            self.rows += self.buffered
        self.buffer, self.buffered = [], 0

    def close(self) -> dict[str, Any]:
        self.flush()
        self.writer.close()
        return {"rows": self.rows, "sha256": sha256_file(self.path)}


def _progress(*, total: int, enabled: bool | None) -> Callable[[int], None]:
    """A progress bar on stderr; ``None`` shows it only on a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit=" pupils", unit_scale=True, disable=None if enabled is None else not enabled)

    def update(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return update


# --- planning: pupils per LA and the register of schools ------------------------------------

_PHASE_SIZES = {"Primary": 280, "Secondary": 950, "Special": 110, "PRU": 45}
_PHASE_PREFIX = {"Primary": 2000, "Secondary": 4000, "Special": 7000, "PRU": 1100}
_SPECIAL_SHARE = 0.013
_PRU_SHARE = 0.004


def _plan(las: tuple[ref.LocalAuthority, ...], target: int, seed: int) -> _Plan:
    weights = np.array([la.pupils for la in las], dtype=float)
    per_la = np.maximum(2, np.round(target * weights / weights.sum())).astype(int)
    plan = _Plan(pupils_per_la=[int(n) for n in per_la])
    rng = np.random.default_rng([seed, 0])
    nc_w = np.array(ref.NC_YEAR_WEIGHTS)
    primary_share = nc_w[:7].sum() / nc_w.sum()
    urn = 100_000
    for la, n in zip(las, per_la, strict=True):
        mainstream = n * (1 - _SPECIAL_SHARE - _PRU_SHARE)
        counts = {
            "Primary": max(1, round(mainstream * primary_share / _PHASE_SIZES["Primary"])),
            "Secondary": max(1, round(mainstream * (1 - primary_share) / _PHASE_SIZES["Secondary"])),
            "Special": max(1, round(n * _SPECIAL_SHARE / _PHASE_SIZES["Special"])),
            "PRU": round(n * _PRU_SHARE / _PHASE_SIZES["PRU"]),
        }
        for phase, k in counts.items():
            for j in range(k):
                urn += 1
                plan.schools.append(
                    {
                        "urn": urn,
                        "la_code": la.code,
                        "establishment_number": _PHASE_PREFIX[phase] + j,
                        "phase": phase,
                        "weight": float(rng.lognormal(0.0, 0.5)),
                        "refusal_factor": float(rng.lognormal(0.0, 0.6)),
                    }
                )
    return plan


def _write_schools(path: Path, schools: list[dict[str, Any]]) -> None:
    lines = ["urn,la_code,establishment_number,phase"]
    lines += [f"{s['urn']},{s['la_code']},{s['establishment_number']},{s['phase']}" for s in schools]
    path.write_text("\n".join(lines) + "\n")


# --- one local authority ---------------------------------------------------------------------

_LONDON_INNER = {str(c) for c in range(201, 214)}


def _diversity(la: ref.LocalAuthority) -> float:
    if la.code in _LONDON_INNER:
        return 0.6
    if la.region == "London":
        return 0.5
    if la.code.startswith("33") or la.code in {"380", "382", "856", "821", "871"}:
        return 0.4
    if la.code.startswith("3"):
        return 0.22
    return 0.1


class _LaGenerator:
    """Draws every pupil of one local authority and lays out their rows per table and term."""

    def __init__(self, index: int, la: ref.LocalAuthority, plan: _Plan, seed: int, rates: QualityRates) -> None:
        self.la = la
        self.rates = rates
        self.rng = np.random.default_rng([seed, 1, index])
        self.n_base = plan.pupils_per_la[index]
        self.id_base = (index + 1) * 10_000_000
        self.schools = [s for s in plan.schools if s["la_code"] == la.code]
        # School-level collection behaviour (some schools return everything "not obtained").
        self.all_not_obtained = np.array([self.rng.random() < rates.school_all_not_obtained for _ in self.schools])
        self.refusal_factor = np.array([s["refusal_factor"] for s in self.schools])

    # The public entry point: {table: {term: arrow table}}
    def tables(self) -> dict[str, dict[str, pa.Table]]:
        p = self._pupils()
        out: dict[str, dict[str, pa.Table]] = {t: {} for t in TABLES}
        nat_by_term: list[dict[str, np.ndarray]] = []
        for t, term in enumerate(ref.TERMS):
            nat = self._nationality_for_term(p, t)
            nat_by_term.append(nat)
            on = p["on_roll"][t]
            rows = np.flatnonzero(on)
            # Dual registrations: a second row for the same pupil at another school.
            dual_rows = rows[p["dual_school"][rows] >= 0]
            idx = np.concatenate([rows, dual_rows])
            second = np.concatenate([np.zeros(len(rows), bool), np.ones(len(dual_rows), bool)])
            por = self._pupil_columns(p, idx, t, second)
            possible, attended = self._attendance(p, idx, t, second)
            por["sessions_possible"] = possible
            por["sessions_attended"] = attended
            out["PupilOnRoll"][term] = pa.table(por)
            nat_cols = {k: v[idx] for k, v in nat.items()}
            out["PupilOnRoll_Unrestricted"][term] = pa.table({**por, **nat_cols})
            out["Nationality"][term] = pa.table(
                {"term": np.full(len(rows), term), "pupil_id": p["pupil_id"][rows]}
                | {k: v[rows] for k, v in nat.items()}
            )
            leavers = np.flatnonzero(p["leave_term"] == t)
            pn = self._pupil_columns(p, leavers, max(t - 1, 0), np.zeros(len(leavers), bool))
            pn["term"] = np.full(len(leavers), term)
            pn["leaving_date"] = pa.array(p["leaving_date"][leavers].astype(np.int32), pa.date32())
            pn["leaving_reason"] = p["leaving_reason"][leavers]
            out["PupilNoLongerOnRoll"][term] = pa.table(pn)
            if t == 0:
                last = {k: pa.nulls(len(leavers), pa.string()) for k in nat}
            else:
                last = {k: pa.array(v[leavers]) for k, v in nat_by_term[t - 1].items()}
            out["PupilNoLongerOnRoll_Unrestricted"][term] = pa.table({**pn, **last})
        return out

    def _pupils(self) -> dict[str, Any]:
        rng, r, n_base = self.rng, self.rates, self.n_base
        n_autumn_leavers = rng.binomial(n_base, r.leave_per_term)
        n_join = rng.binomial(n_base, r.join_per_term, size=2)
        n = n_base + n_autumn_leavers + int(n_join.sum())
        entry = np.concatenate(
            [np.zeros(n_base + n_autumn_leavers, int), np.ones(n_join[0], int), np.full(n_join[1], 2)]
        )
        joiner = entry > 0
        leave = np.full(n, 99)
        leave[n_base : n_base + n_autumn_leavers] = 0
        u = rng.random(n)
        stayer = leave == 99
        leave[stayer & (entry <= 0) & (u < r.leave_per_term)] = 1
        leave[stayer & (entry <= 1) & (u >= r.leave_per_term) & (u < 2 * r.leave_per_term)] = 2
        terms = np.arange(3)[:, None]
        on_roll = (entry[None, :] <= terms) & (terms < leave[None, :])
        # Coverage problem: on roll, then missing from the next census with no leaver record.
        gap = rng.random(n) < r.missing_next_term
        gap_term = rng.integers(1, 3, size=n)
        for t in (1, 2):
            on_roll[t] &= ~(gap & (gap_term == t) & on_roll[t - 1])

        nc_w = np.array(ref.NC_YEAR_WEIGHTS)
        nc = rng.choice(len(ref.NC_YEARS), size=n, p=nc_w / nc_w.sum())
        phase = np.where(nc <= 6, "Primary", "Secondary").astype(object)
        phases = {s["phase"] for s in self.schools}
        special = rng.random(n) < _SPECIAL_SHARE
        pru = (rng.random(n) < _PRU_SHARE * 3) & (nc >= 5) & (nc <= 11) & ("PRU" in phases)
        phase[special] = "Special"
        phase[pru & ~special] = "PRU"
        school = np.zeros(n, dtype=np.int64)
        for ph in ("Primary", "Secondary", "Special", "PRU"):
            m = phase == ph
            cands = [s for s in self.schools if s["phase"] == ph]
            if m.any():
                w = np.array([s["weight"] for s in cands])
                school[m] = rng.choice(len(cands), size=int(m.sum()), p=w / w.sum())
                school[m] = np.array([self.schools.index(c) for c in cands])[school[m]]
        # Dual registration: a second school in the same LA (a PRU or special where there is one).
        dual = (rng.random(n) < r.dual_registration) & (len(self.schools) > 1)
        dual_school = np.full(n, -1)
        others = rng.integers(0, len(self.schools) - 1, size=n) if len(self.schools) > 1 else dual_school
        dual_school[dual] = np.where(others[dual] >= school[dual], others[dual] + 1, others[dual])

        is_m = np.where(phase == "Special", rng.random(n) < 0.7, rng.random(n) < 0.512)
        sex = np.where(is_m, "M", "F")
        age = nc + 4
        bad_age = rng.random(n) < r.age_inconsistent
        age[bad_age] += rng.choice([-2, -1, 1, 2], size=int(bad_age.sum()))
        birth_end = np.array([(dt.date(2016 - a, 8, 31) - _EPOCH).days for a in range(30)])
        dob = birth_end[age] - rng.integers(0, 365, size=n)

        d = _diversity(self.la) * float(rng.uniform(0.8, 1.2))
        eth_p = np.array(ref.ETHNICITY_OTHER_SHARES) / sum(ref.ETHNICITY_OTHER_SHARES) * d
        eth_p[0] = 1 - d - 0.02
        eth_p[18], eth_p[19] = 0.008, 0.012
        eth = rng.choice(len(ref.ETHNICITY), size=n, p=eth_p / eth_p.sum())
        other_lang = rng.random(n) < np.array(ref.OTHER_LANGUAGE_BY_ETHNICITY)[eth]
        other_lang |= joiner & (rng.random(n) < 0.4)
        lang = np.where(other_lang, "OTH", "ENG").astype(object)
        lang[rng.random(n) < 0.004] = "UNK"

        fsm_rate = float(rng.uniform(0.07, 0.2)) * (1.4 if self.la.code.startswith(("2", "3")) else 1)
        fsm_p = np.where(np.isin(phase, ["Special", "PRU"]), fsm_rate * 2.5, fsm_rate)
        fsm0 = rng.random(n) < fsm_p
        flips = rng.random((3, n)) < 0.03
        fsm = np.logical_xor(fsm0[None, :], np.cumsum(flips, axis=0) % 2 == 1)
        sen_u = rng.random(n)
        sen = np.where(sen_u < 0.015, "E", np.where(sen_u < 0.14, "K", "N")).astype(object)
        sp = phase == "Special"
        sen[sp] = np.where(sen_u[sp] < 0.8, "E", np.where(sen_u[sp] < 0.95, "K", "N"))
        pr = phase == "PRU"
        sen[pr] = np.where(sen_u[pr] < 0.1, "E", np.where(sen_u[pr] < 0.6, "K", "N"))

        absence = rng.beta(1.2, 20, size=n) * np.where(fsm0, 1.6, 1.0)
        absence *= np.select([sen == "E", sen == "K"], [1.6, 1.4], 1.0)
        absence = np.minimum(absence * np.where(pr, 4.0, 1.0), 0.95)

        pupil_id = self.id_base + np.arange(n)
        upn = self._upns(school, nc, entry)
        leaving_date, leaving_reason = self._leaving(leave)
        return {
            "n": n,
            "entry": entry,
            "leave_term": leave,
            "on_roll": on_roll,
            "nc": nc,
            "phase": phase,
            "school": school,
            "dual_school": dual_school,
            "sex": sex,
            "age": age,
            "dob": dob,
            "eth": eth,
            "lang": lang,
            "fsm": fsm,
            "sen": sen,
            "absence": absence,
            "pupil_id": pupil_id,
            "upn": upn,
            "joiner": joiner,
            "leaving_date": leaving_date,
            "leaving_reason": leaving_reason,
            "forename": np.where(is_m, rng.choice(ref.FORENAMES_M, n), rng.choice(ref.FORENAMES_F, n)),
            "surname": rng.choice(ref.SURNAMES, n),
            "postcode": self._postcodes(n),
            **self._nationality_truth(n, lang, joiner),
        }

    def _upns(self, school: np.ndarray, nc: np.ndarray, entry: np.ndarray) -> np.ndarray:
        n = len(school)
        estab = np.array([s["establishment_number"] for s in self.schools])[school]
        year = np.where(entry > 0, 17, (2016 - nc) % 100)
        # Serial: position of the pupil among those allocated by the same school in the same year.
        key = school * 100 + year
        order = np.argsort(key, kind="stable")
        sk = key[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sk)) + 1]
        run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
        serial = np.empty(n, dtype=np.int64)
        serial[order] = (np.arange(n) - run_start) % 999 + 1
        la = int(self.la.code)
        parts = [(la, 3), (estab, 4), (year, 2), (serial, 3)]
        digits = np.zeros((n, 12), dtype=np.int64)
        pos = 0
        for value, width in parts:
            for k in range(width):
                digits[:, pos + k] = (np.asarray(value) // 10 ** (width - 1 - k)) % 10
            pos += width
        letters = np.frombuffer(ref.UPN_CHECK_LETTERS.encode(), dtype=np.uint8)[_check_indices(digits)]
        chars = np.concatenate([letters[:, None], (digits + 48).astype(np.uint8)], axis=1)
        return np.ascontiguousarray(chars).view("S13").ravel().astype("U13")

    def _postcodes(self, n: int) -> np.ndarray:
        rng = self.rng
        letters = np.array(list("ABDEFGHJLNPQRSTUWXYZ"))
        area = rng.choice(ref.POSTCODE_AREAS, n)
        district = rng.integers(1, 30, n).astype(str)
        sector = rng.integers(0, 10, n).astype(str)
        unit = np.char.add(rng.choice(letters, n), rng.choice(letters, n))
        out = np.char.add(np.char.add(area, district), " ")
        return np.char.add(np.char.add(out, sector), unit)

    def _leaving(self, leave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(leave)
        bounds = [(dt.date.fromisoformat(d) - _EPOCH).days for d in (ref.YEAR_START, *ref.CENSUS_DAYS)]
        t = np.minimum(leave, 2)
        lo, hi = np.array(bounds[:-1])[t], np.array(bounds[1:])[t]
        date = lo + (self.rng.random(n) * (hi - lo)).astype(np.int64)
        w = np.array(ref.LEAVING_REASON_WEIGHTS)
        reason = self.rng.choice(ref.LEAVING_REASONS, size=n, p=w / w.sum())
        return date, reason

    def _nationality_truth(self, n: int, lang: np.ndarray, joiner: np.ndarray) -> dict[str, Any]:
        rng = self.rng
        codes = np.array(list(ref.OTHER_NATIONALITIES))
        w = np.array(list(ref.OTHER_NATIONALITIES.values()), dtype=float)
        other = rng.choice(codes, size=n, p=w / w.sum())
        p_gbr = np.where(lang == "ENG", 0.97, np.where(joiner, 0.1, 0.45))
        nationality = np.where(rng.random(n) < p_gbr, "GBR", other)
        cob = np.where(
            nationality == "GBR",
            np.where(rng.random(n) < 0.97, "GBR", other),
            np.where(rng.random(n) < 0.7, nationality, "GBR"),
        )
        # Collection: per-LA rates, per-school refusal propensity, improving over the year.
        nyo0 = float(rng.uniform(0.05, 0.3))
        ref_rate = float(rng.uniform(0.01, 0.06))
        return {
            "nat_true": nationality,
            "cob_true": cob,
            "nyo_u": rng.random(n),
            "nyo0": nyo0,
            "ref_u": rng.random(n),
            "ref_rate": ref_rate,
            "ref_both": rng.random(n) < 0.8,
            "prof0": rng.choice(len(ref.PROFICIENCY), size=n, p=ref.PROFICIENCY_WEIGHTS),
            "prof_up": rng.random((3, n)) < 0.15,
            "eng_prof": rng.random(n) < self.rates.proficiency_for_english,
            "invalid_u": rng.random((3, 3, n)),
            "invalid_pick": rng.integers(0, 3, size=(3, 3, n)),
        }

    def _nationality_for_term(self, p: dict[str, Any], t: int) -> dict[str, np.ndarray]:
        refusal_factor = self.refusal_factor[p["school"]]
        all_nyo = self.all_not_obtained[p["school"]]
        nyo_rate = p["nyo0"] * (1.0, 0.6, 0.4)[t] * np.where(p["joiner"], 2.0, 1.0)
        nyo = (p["nyo_u"] < nyo_rate) | all_nyo
        refused = p["ref_u"] < p["ref_rate"] * refusal_factor
        refused &= ~all_nyo  # such a school returns "not obtained" for every pupil
        nat = np.where(refused, "REF", np.where(nyo, "NYO", p["nat_true"])).astype(object)
        cob_ref = refused & p["ref_both"]
        cob = np.where(cob_ref, "REF", np.where(nyo, "NYO", p["cob_true"])).astype(object)
        # Proficiency: assessed for pupils whose first language is not English, improving.
        up = np.cumsum(p["prof_up"], axis=0)[t]
        level = np.where(p["prof0"] == 5, np.where(up > 0, 1, 5), np.minimum(p["prof0"] + up, 4))
        prof = np.array(ref.PROFICIENCY, dtype=object)[level]
        prof[p["lang"] != "OTH"] = None
        eng = (p["lang"] == "ENG") & p["eng_prof"]
        prof[eng] = np.array(ref.PROFICIENCY, dtype=object)[p["prof0"][eng]]
        cols = {"nationality": nat, "country_of_birth": cob, "proficiency_in_english": prof}
        for k, (name, values) in enumerate(cols.items()):
            bad = (p["invalid_u"][t, k] < self.rates.invalid_code) & ~all_nyo
            if name == "proficiency_in_english":
                bad &= prof != None  # noqa: E711 (elementwise on an object array)
            invalid = np.array(ref.INVALID_CODES[name], dtype=object)
            values[bad] = invalid[p["invalid_pick"][t, k][bad] % len(invalid)]
        return cols

    def _pupil_columns(self, p: dict[str, Any], idx: np.ndarray, t: int, second: np.ndarray) -> dict[str, Any]:
        schools = self.schools
        school = np.where(second, p["dual_school"][idx], p["school"][idx])
        urn = np.array([s["urn"] for s in schools], dtype=np.int64)[school]
        phase = np.array([s["phase"] for s in schools], dtype=object)[school]
        return {
            "term": np.full(len(idx), ref.TERMS[t]),
            "pupil_id": p["pupil_id"][idx],
            "upn": p["upn"][idx],
            "forename": p["forename"][idx],
            "surname": p["surname"][idx],
            "date_of_birth": pa.array(p["dob"][idx].astype(np.int32), pa.date32()),
            "postcode": p["postcode"][idx],
            "postcode_district": np.char.partition(p["postcode"][idx], " ")[:, 0] if len(idx) else p["postcode"][idx],
            "la_code": np.full(len(idx), self.la.code),
            "school_urn": urn,
            "phase": phase.astype(str),
            "nc_year": np.array(ref.NC_YEARS)[p["nc"][idx]],
            "age": p["age"][idx].astype(np.int64),
            "sex": p["sex"][idx],
            "ethnicity": np.array(ref.ETHNICITY)[p["eth"][idx]],
            "fsm_eligible": p["fsm"][t][idx],
            "sen_provision": p["sen"][idx].astype(str),
            "first_language": p["lang"][idx].astype(str),
        }

    def _attendance(
        self, p: dict[str, Any], idx: np.ndarray, t: int, second: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        n = len(idx)
        full = ref.SESSIONS_IN_TERM[t]
        possible = full - rng.integers(0, 5, size=n)
        joined_now = p["entry"][idx] == t
        possible = np.where(joined_now & (t > 0), (possible * rng.uniform(0.2, 0.9, n)).astype(int), possible)
        possible = np.where(second, (possible * 0.3).astype(int), possible)
        rate = np.clip(p["absence"][idx] * rng.lognormal(0, 0.3, n), 0, 1)
        attended = possible - rng.binomial(possible, rate)
        return possible.astype(np.int64), attended.astype(np.int64)
