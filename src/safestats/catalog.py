"""The catalog: what every table and column is, how it may be used, and how it is classified.

The catalog is a declarative YAML file (``resources/catalog.yaml`` by default). Loading it
validates every entry and fails with a :class:`~safestats.errors.CatalogError` that names the
file, the table and the column at fault. The loaded catalog is immutable.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safestats.errors import CatalogError, did_you_mean
from safestats.resources import CODELISTS, RESOURCES

__all__ = [
    "ROLES",
    "TYPES",
    "Catalog",
    "Column",
    "Join",
    "Table",
    "load_catalog",
]

DEFAULT_CATALOG = RESOURCES / "catalog.yaml"
ROLES = ("identifier", "key", "category", "measure", "date")
TYPES = ("string", "int64", "bool", "date")
GROUPABLE_ROLES = ("key", "category")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    role: str
    classification: str
    description: str = ""
    domain: tuple[Any, ...] | None = None
    domain_source: str = ""
    nullable: bool = False
    bounds: tuple[Any, Any] | None = None
    #: The store guarantees every value is in the domain (checked when the census is loaded),
    #: so no "(invalid)" bucket is needed for this column.
    validated: bool = False
    _domain_set: frozenset[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_domain_set", frozenset(self.domain or ()))

    @property
    def is_identifier(self) -> bool:
        return self.role == "identifier"

    @property
    def groupable(self) -> bool:
        return self.role in GROUPABLE_ROLES

    def in_domain(self, value: Any) -> bool:
        """True if ``value`` is a public value of this column (None counts when nullable)."""
        if value is None:
            return self.nullable
        return value in self._domain_set


@dataclass(frozen=True)
class Table:
    name: str
    columns: Mapping[str, Column]
    classification: str
    restricted: bool
    description: str = ""
    #: The records this table's rows are (sdc linking): its own name, or another table whose
    #: rows it shares. ``rows``: ``same`` (the same rows, maybe more columns) or ``pupil_term``
    #: (one row per pupil and term of that population).
    population: str = ""
    rows: str = "same"

    def column(self, name: str) -> Column:
        try:
            return self.columns[name]
        except KeyError:
            known = ", ".join(self.columns)
            raise CatalogError(f"table {self.name} has no column {name!r}; its columns are: {known}") from None


@dataclass(frozen=True)
class Join:
    left: str
    right: str
    using: tuple[str, ...]
    #: Every left row has exactly one right row: the join keeps the left table's rows.
    complete: bool = False


@dataclass(frozen=True)
class Catalog:
    dataset: str
    privacy_unit: str
    tables: Mapping[str, Table]
    joins: tuple[Join, ...]
    classifications: tuple[str, ...]
    impact_levels: Mapping[str, str]
    path: Path
    version: int = 1
    description: str = ""
    codelist_files: Mapping[str, Path] = field(default_factory=dict)

    def table(self, name: str) -> Table:
        try:
            return self.tables[name]
        except KeyError:
            known = ", ".join(self.tables)
            raise CatalogError(
                f"no table {name!r} in the catalog{did_you_mean(name, self.tables)}; tables are: {known}"
            ) from None

    def join_between(self, left: str, right: str) -> Join | None:
        for join in self.joins:
            if {join.left, join.right} == {left, right}:
                return join
        return None

    def population_of(self, table: str, join: str | None = None) -> tuple[str, str] | None:
        """The population a table (or a join) counts, and how (``same`` rows or one row per
        ``pupil_term``); None when a join does not keep the left table's rows."""
        t = self.table(table)
        if join is None:
            return t.population, t.rows
        found = self.join_between(table, join)
        if found is None or not found.complete or found.left != table or t.rows != "same":
            return None
        return t.population, "same"

    def population_source(self, population: str, needed: set[str]) -> tuple[str, str | None] | None:
        """A table (or complete join) with the rows of ``population`` that has every column
        in ``needed``: where the differencing check computes a population's atoms."""
        same = [t for t in self.tables.values() if t.population == population and t.rows == "same"]
        for t in sorted(same, key=lambda t: (t.name != population, len(t.columns), t.name)):
            if needed <= set(t.columns):
                return t.name, None
        for j in self.joins:
            if j.complete and j.left in {t.name for t in same}:
                if needed <= set(self.tables[j.left].columns) | set(self.tables[j.right].columns):
                    return j.left, j.right
        return None

    def rank(self, classification: str) -> int:
        return self.classifications.index(classification)

    def highest(self, levels: list[str] | tuple[str, ...] | set[str]) -> str:
        """The highest of ``levels`` (the lowest level if ``levels`` is empty)."""
        if not levels:
            return self.classifications[0]
        return max(levels, key=self.rank)


def load_catalog(path: Path | str | None = None, *, data_dir: Path | str | None = None) -> Catalog:
    """Load and validate a catalog.

    ``data_dir`` is where registers written beside the data (the list of schools) are read
    from; without it such columns have no domain.
    """
    from safestats.config import read_yaml

    path = Path(path) if path is not None else DEFAULT_CATALOG
    raw = read_yaml(path, "catalog", CatalogError)
    return _Loader(path, Path(data_dir) if data_dir else None).load(raw)


class _Loader:
    def __init__(self, path: Path, data_dir: Path | None) -> None:
        self.path = path
        self.data_dir = data_dir
        self.codelist_dir = CODELISTS if path == DEFAULT_CATALOG else path.parent / "codelists"

    def fail(self, where: str, message: str) -> CatalogError:
        return CatalogError(f"{self.path}: {where}: {message}")

    def load(self, raw: Any) -> Catalog:
        if not isinstance(raw, dict):
            raise self.fail("top level", "expected a mapping")
        for key in ("dataset", "privacy_unit", "classifications", "columns", "tables"):
            if key not in raw:
                raise self.fail("top level", f"missing required key {key!r}")
        levels = raw["classifications"]
        if not isinstance(levels, list) or not levels:
            raise self.fail("classifications", "expected a non-empty list")
        classifications = tuple(str(c["name"]) for c in levels)
        impact = {str(c["name"]): str(c.get("impact_level", "")) for c in levels}
        codelists = {str(name): self.codelist_dir / str(file) for name, file in (raw.get("codelists") or {}).items()}
        columns = {name: self._column(name, spec, classifications, codelists) for name, spec in raw["columns"].items()}
        tables = {name: self._table(name, spec, columns, classifications) for name, spec in raw["tables"].items()}
        unit = raw["privacy_unit"]
        for t in tables.values():
            if unit not in t.columns:
                raise self.fail(f"table {t.name}", f"has no privacy unit column {unit!r}")
            if not t.columns[unit].is_identifier:
                raise self.fail(f"table {t.name}, column {unit}", "privacy unit must be an identifier")
        for t in tables.values():
            base = tables.get(t.population)
            if base is None or base.population != base.name:
                raise self.fail(
                    f"table {t.name}", f"population {t.population!r} must name a table that is its own population"
                )
        joins = tuple(self._join(i, j, tables) for i, j in enumerate(raw.get("joins") or []))
        return Catalog(
            dataset=str(raw["dataset"]),
            privacy_unit=str(unit),
            tables=tables,
            joins=joins,
            classifications=classifications,
            impact_levels=impact,
            path=self.path,
            version=int(raw.get("version", 1)),
            description=str(raw.get("description", "")),
            codelist_files=codelists,
        )

    def _column(self, name: str, spec: Any, levels: tuple[str, ...], codelists: dict[str, Path]) -> Column:
        where = f"column {name}"
        if not isinstance(spec, dict):
            raise self.fail(where, "expected a mapping")
        type_ = spec.get("type")
        if type_ not in TYPES:
            raise self.fail(where, f"type {type_!r} is not one of {', '.join(TYPES)}")
        role = spec.get("role")
        if role not in ROLES:
            raise self.fail(where, f"role {role!r} is not one of {', '.join(ROLES)}")
        level = spec.get("classification")
        if level not in levels:
            raise self.fail(where, f"classification {level!r} is not one of {', '.join(levels)}")
        domain: tuple[Any, ...] | None = None
        source = ""
        if role in GROUPABLE_ROLES:
            if "domain" not in spec:
                raise self.fail(where, f"a {role} column needs a public domain")
            domain, source = self._domain(where, type_, spec["domain"], codelists)
        bounds = None
        if role in ("measure", "date"):
            b = spec.get("bounds")
            if not (isinstance(b, list) and len(b) == 2):
                raise self.fail(where, f"a {role} column needs bounds: [low, high]")
            low, high = (_coerce(where, type_, v, self) for v in b)
            if not low < high:
                raise self.fail(where, f"bounds {b} must have low < high")
            bounds = (low, high)
        return Column(
            name=name,
            type=type_,
            role=role,
            classification=level,
            description=str(spec.get("description", "")).strip(),
            domain=domain,
            domain_source=source,
            nullable=bool(spec.get("nullable", False)),
            bounds=bounds,
            validated=bool(spec.get("validated", False)),
        )

    def _domain(
        self, where: str, type_: str, spec: Any, codelists: dict[str, Path]
    ) -> tuple[tuple[Any, ...] | None, str]:
        if spec == "none":  # declared: no public domain (grouping needs partition selection)
            return None, "none"
        if isinstance(spec, str):
            if spec not in codelists:
                raise self.fail(where, f"domain names unknown code list {spec!r}")
            file = codelists[spec]
            codes = _read_codes(file, "code", self.fail, where)
            return tuple(_coerce(where, type_, c, self) for c in codes), f"codelist:{spec}"
        if isinstance(spec, dict) and "range" in spec:
            low, high = spec["range"]
            return tuple(range(int(low), int(high) + 1)), f"range:{low}-{high}"
        if isinstance(spec, dict) and "register" in spec:
            source = f"register:{spec['register']}"
            if self.data_dir is None:
                return None, source
            file = self.data_dir / str(spec["register"])
            codes = _read_codes(file, str(spec.get("column", "code")), self.fail, where)
            return tuple(_coerce(where, type_, c, self) for c in codes), source
        raise self.fail(where, "domain must name a code list, a {range: [a, b]} or a {register: file}")

    def _table(self, name: str, spec: Any, columns: dict[str, Column], levels: tuple[str, ...]) -> Table:
        where = f"table {name}"
        if not isinstance(spec, dict) or not isinstance(spec.get("columns"), list):
            raise self.fail(where, "expected a mapping with a list of columns")
        level = spec.get("classification")
        if level not in levels:
            raise self.fail(where, f"classification {level!r} is not one of {', '.join(levels)}")
        cols = {}
        for c in spec["columns"]:
            if c not in columns:
                raise self.fail(f"{where}, column {c}", "column is not declared under `columns`")
            cols[c] = columns[c]
        population = spec.get("population", {})
        if not isinstance(population, dict) or set(population) - {"of", "rows"}:
            raise self.fail(where, "population must be a mapping {of: TABLE, rows: same | pupil_term}")
        rows = str(population.get("rows", "same"))
        if rows not in ("same", "pupil_term"):
            raise self.fail(where, f"population rows {rows!r} is not one of same, pupil_term")
        return Table(
            name=name,
            columns=cols,
            classification=level,
            restricted=bool(spec.get("restricted", False)),
            description=str(spec.get("description", "")).strip(),
            population=str(population.get("of", name)),
            rows=rows,
        )

    def _join(self, i: int, spec: Any, tables: dict[str, Table]) -> Join:
        where = f"joins[{i}]"
        try:
            left, right, on = spec["left"], spec["right"], tuple(spec["using"])
        except (KeyError, TypeError):
            raise self.fail(where, "a join needs left, right and using") from None
        for t in (left, right):
            if t not in tables:
                raise self.fail(where, f"unknown table {t!r}")
            for c in on:
                if c not in tables[t].columns:
                    raise self.fail(f"{where}, table {t}, column {c}", "join column not in table")
        return Join(left=left, right=right, using=on, complete=bool(spec.get("complete", False)))


def _read_codes(file: Path, column: str, fail: Any, where: str) -> list[str]:
    try:
        with file.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise fail(where, f"code list file {file} not found") from None
    if not rows or column not in rows[0]:
        raise fail(where, f"code list file {file} has no column {column!r}")
    codes = [r[column] for r in rows]
    if len(set(codes)) != len(codes):
        raise fail(where, f"code list file {file} repeats a code")
    return codes


def _coerce(where: str, type_: str, value: Any, loader: _Loader) -> Any:
    try:
        if type_ == "int64":
            return int(value)
        if type_ == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            raise ValueError(value)
        if type_ == "date":
            if isinstance(value, dt.date):
                return value
            return dt.date.fromisoformat(str(value))
        return str(value)
    except ValueError:
        raise loader.fail(where, f"value {value!r} is not a valid {type_}") from None
