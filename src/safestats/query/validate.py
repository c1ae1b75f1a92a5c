"""Check a query against the catalog and turn it into a plan the engine can run.

The rules (each refusal says what is allowed instead):
- one catalog table, joined only along a join the catalog declares;
- identifiers (the privacy unit, UPN, names, date of birth, postcode) are never grouped on,
  filtered on or aggregated — stricter than "no equality filters", since a narrow range on an
  identifier is an equality filter in disguise; distinct pupils are counted with
  ``count_pupils``;
- group-by only on key and category columns, whose public domain gives the cells of the
  result (filters on a group-by column narrow its cells);
- category filters use ==, !=, in, not in with values from the code list (integer categories
  such as age also take ranges); measure and date filters use ranges;
- sums, means and quantiles only of measures (clipped to their catalog bounds in the engine);
- at most ``max_cells`` cells.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safestats.catalog import Catalog, Column
from safestats.errors import DisclosureRefused, QueryError, did_you_mean
from safestats.query.model import EQUALITY_OPS, INVALID, RANGE_OPS, Query

__all__ = ["ATOM", "AtomMap", "Key", "Plan", "plan_query", "selected_keys"]

#: The key column of an atom plan (the differencing check's atoms), never returned.
ATOM = "_atom"


@dataclass(frozen=True)
class AtomMap:
    """Internal to sdc linking (never from a client): group the plan's rows by *atom* of a
    common refinement instead of by its keys. Each key's value is mapped to its class
    (``classes[i]``: value -> class; values not listed are dropped), the classes give a cell
    of the class grid (``sum(class * stride)``), and ``grid``/``atom`` map those cells to the
    atoms they belong to (atoms in exactly the same published cells are one atom); with no
    ``grid`` the atoms are the class-grid cells themselves (keyed by their index)."""

    classes: tuple[tuple[tuple[Any, int], ...], ...]  # per key of the plan, in order
    strides: tuple[int, ...]
    grid: tuple[int, ...]
    atom: tuple[int, ...]


@dataclass(frozen=True)
class Key:
    """A group-by column and the cells it contributes (its public domain, narrowed by filters)."""

    name: str
    cells: tuple[Any, ...]
    #: For string columns with a code list: the codes; other values are grouped as INVALID.
    codes: tuple[Any, ...] | None
    #: For a binned measure (histogram): (source column, low bound, bin width).
    bin: tuple[str, int, int] | None = None
    #: No public domain: the cells come from the data (partition selection in dp mode).
    from_data: bool = False


def margin_plans(plan: Plan) -> list[Plan]:
    """The plans of a table's margins, in the order they are published: the subtotals over each
    subset of its keys (largest subsets first), then the grand total."""
    from dataclasses import replace
    from itertools import combinations

    return [
        replace(plan, keys=tuple(kept))
        for r in range(len(plan.keys) - 1, -1, -1)
        for kept in combinations(plan.keys, r)
    ]


def selected_keys(keys: tuple[Key, ...]) -> list[str]:
    """Keys without a public domain: their cells come from the data."""
    return [k.name for k in keys if k.from_data]


@dataclass(frozen=True)
class Plan:
    """A validated query with what the engine and the protect step need to know."""

    query: Query
    columns: Mapping[str, Column]
    keys: tuple[Key, ...]
    bounds: Mapping[str, tuple[Any, Any]]
    join_using: tuple[str, ...]
    unit: str
    cells: int
    #: Code lists of string category columns used in filters or groups (for INVALID handling).
    codes: Mapping[str, tuple[Any, ...]]
    #: Rows per pupil the query can touch: one per census term in scope (the DP default cap).
    default_max_rows: int = 1
    #: The cap the engine enforces on rows per pupil (set in dp mode), None for no cap.
    max_rows: int | None = None
    #: Whether the engine returns ``_pupils`` per cell (sdc thresholds need it; dp does not).
    pupils_per_cell: bool = True
    #: Whether the engine groups values outside a code list as "(invalid)". When every
    #: aggregate is additive, the protect step can do it after aggregating instead (cheaper).
    remap_in_engine: bool = True
    #: sdc dominance rules: how many of the largest contributions (per pupil) to each summed or
    #: averaged measure the engine returns per cell, as ``_top1_<measure>`` … (0: none).
    top_n: int = 0
    #: sdc cell-key perturbation: (a, b, c, d) of the keyed record-key hash; the engine returns
    #: ``_ckey``, the sum of the record keys of the rows in each cell, modulo RECORD_KEY_MODULUS.
    record_key: tuple[int, int, int, int] | None = None
    #: sdc linking: aggregate per atom of a common refinement (see AtomMap), keyed ``_atom``.
    atoms: AtomMap | None = None

    @property
    def top_measures(self) -> tuple[str, ...]:
        """Measures whose largest contributions the dominance rules need (sums and means)."""
        if not self.top_n:
            return ()
        return tuple(dict.fromkeys(a.column for a in self.query.aggregates if a.spec.measure and a.column))


def plan_query(
    query: Query, *, catalog: Catalog, max_cells: int, max_group_keys: int = 8, max_filters: int = 50
) -> Plan:
    """Validate ``query`` against ``catalog`` and return its plan, or raise a QueryError."""
    if len(query.keys) > max_group_keys:
        raise DisclosureRefused(
            f"the query groups by {len(query.keys)} keys, more than the maximum of {max_group_keys}"
        )
    if len(query.filters) > max_filters:
        raise DisclosureRefused(f"the query has {len(query.filters)} filters, more than the maximum of {max_filters}")
    if query.dataset != catalog.dataset:
        raise QueryError(f"unknown dataset {query.dataset!r}; this service holds {catalog.dataset!r}")
    if query.table not in catalog.tables:
        hint = did_you_mean(query.table, catalog.tables)
        raise QueryError(f"no table {query.table!r}{hint}; tables are: {', '.join(catalog.tables)}")
    columns: dict[str, Column] = dict(catalog.tables[query.table].columns)
    join_using: tuple[str, ...] = ()
    if query.join is not None:
        if query.join not in catalog.tables:
            hint = did_you_mean(query.join, catalog.tables)
            raise QueryError(f"no table {query.join!r} to join{hint}; tables are: {', '.join(catalog.tables)}")
        join = catalog.join_between(query.table, query.join)
        if join is None:
            allowed = "; ".join(f"{j.left} with {j.right} using ({', '.join(j.using)})" for j in catalog.joins)
            raise QueryError(f"{query.table} and {query.join} cannot be joined; allowed joins: {allowed}")
        join_using = join.using
        for name, col in catalog.tables[query.join].columns.items():
            columns.setdefault(name, col)
    where = " / ".join(query.tables)

    def column(name: str) -> Column:
        if name not in columns:
            usable = [c for c, info in columns.items() if not info.is_identifier]
            raise QueryError(
                f"no column {name!r} in {where}{did_you_mean(name, usable)}; columns are: {', '.join(usable)}"
            )
        col = columns[name]
        if col.is_identifier:
            raise QueryError(
                f"{name} is an identifier: identifiers are never returned, grouped on or "
                f"filtered on (count distinct pupils with count_pupils)"
            )
        return col

    codes: dict[str, tuple[Any, ...]] = {}

    def code_list(col: Column) -> tuple[Any, ...] | None:
        if col.type == "string" and col.domain_source.startswith("codelist:") and col.domain and not col.validated:
            codes[col.name] = col.domain
            return col.domain
        return None

    allowed_cells: dict[str, set[Any]] = {}
    for f in query.filters:
        col = column(f.column)
        if col.groupable and col.type == "int64" and f.op in RANGE_OPS:
            # Ordered integer categories (age) also take ranges; the range narrows the cells.
            values = f.value if isinstance(f.value, tuple) else (f.value,)
            for v in values:
                _check_range_value(col, v)
            keep = {c for c in col.domain or () if _in_range(c, f.op, f.value)}
            prev = allowed_cells.get(f.column)
            allowed_cells[f.column] = keep if prev is None else prev & keep
        elif col.groupable:
            if f.op not in EQUALITY_OPS:
                ops = ", ".join(EQUALITY_OPS)
                raise QueryError(f"{f.column} is a category: filter it with {ops}")
            values = f.value if isinstance(f.value, tuple) else (f.value,)
            code_list(col)
            for v in values:
                _check_value(col, v)
            if f.op in ("==", "in"):
                keep = set(values)
                prev = allowed_cells.get(f.column)
                allowed_cells[f.column] = keep if prev is None else prev & keep
        elif col.role in ("measure", "date"):
            if f.op not in RANGE_OPS:
                raise QueryError(f"{f.column} is a {col.role}: filter it with a range ({', '.join(RANGE_OPS)})")
            values = f.value if isinstance(f.value, tuple) else (f.value,)
            for v in values:
                _check_range_value(col, v)
        else:  # pragma: no cover - every role is handled above
            raise QueryError(f"{f.column} cannot be filtered")

    keys = []
    for name in query.group_by:
        col = column(name)
        if not col.groupable:
            raise QueryError(
                f"{name} is a {col.role}: group by key or category columns only "
                f"({', '.join(c for c, k in columns.items() if k.groupable)})"
            )
        if col.domain is None:
            if col.domain_source != "none":
                raise QueryError(f"{name} has no public domain loaded, so it cannot be grouped on")
            if name in allowed_cells:
                raise QueryError(f"{name} has no public domain: group on it without filtering it")
            # No public domain: the cells come from the data, so only partition selection (dp)
            # or the threshold (sdc, which then omits small cells entirely) decides what shows.
            keys.append(Key(name=name, cells=(), codes=None, from_data=True))
            continue
        cl = code_list(col)
        cells: list[Any] = list(col.domain)
        if cl is not None:
            cells.append(INVALID)
        if col.nullable:
            cells.append(None)
        if name in allowed_cells:
            cells = [c for c in cells if c in allowed_cells[name]]
        keys.append(Key(name=name, cells=tuple(cells), codes=cl))

    for measure, width in query.bins:
        col = column(measure)
        if col.role != "measure" or col.bounds is None:
            raise QueryError(f"histograms bin a measure; {measure} is a {col.role}")
        low, high = int(col.bounds[0]), int(col.bounds[1])
        if (high - low + 1) / width > 1000:
            raise QueryError(f"bin width {width} gives more than 1,000 bins for {measure}; use wider bins")
        keys.append(
            Key(name=f"{measure}_bin", cells=tuple(range(low, high + 1, width)), codes=None, bin=(measure, low, width))
        )

    bounds: dict[str, tuple[Any, Any]] = {}
    for k in keys:
        if k.bin is not None:
            b = columns[k.bin[0]].bounds
            assert b is not None  # a binned column is a measure, and measures have bounds
            bounds[k.bin[0]] = b
    for agg in query.aggregates:
        if agg.column is None:
            continue
        col = column(agg.column)
        if col.role != "measure":
            measures = [c for c, k in columns.items() if k.role == "measure"]
            raise QueryError(
                f"{agg.kind} needs a measure; {agg.column} is a {col.role} (measures: {', '.join(measures)})"
            )
        assert col.bounds is not None
        bounds[col.name] = col.bounds

    n_cells = math.prod(len(k.cells) for k in keys if not k.from_data) if keys else 1
    if n_cells > max_cells:
        raise DisclosureRefused(
            f"the query would return {n_cells:,} cells, more than the maximum of {max_cells:,}; "
            "group by fewer columns or filter them"
        )
    terms = columns["term"].domain if "term" in columns and columns["term"].domain else (None,)
    in_scope = [t for t in terms if "term" not in allowed_cells or t in allowed_cells["term"]]
    return Plan(
        query=query,
        columns=columns,
        keys=tuple(keys),
        bounds=bounds,
        join_using=join_using,
        unit=catalog.privacy_unit,
        cells=n_cells,
        codes=codes,
        default_max_rows=max(1, len(in_scope)),
    )


def _in_range(value: Any, op: str, bound: Any) -> bool:
    if op == "between":
        return bool(bound[0] <= value <= bound[1])
    return bool({"<": value < bound, "<=": value <= bound, ">": value > bound, ">=": value >= bound}[op])


def _check_type(col: Column, value: Any) -> None:
    """One value, one spelling: a filter value must have the column's catalog type exactly
    (no ``5.0`` for a whole number, no ``1`` for a boolean, no number for a code), so the query
    hash, the published structure, the cache and the audit record all see the same value."""
    if col.type == "bool":
        ok, what = isinstance(value, bool), "true or false"
    elif col.type == "int64":
        ok, what = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif col.type == "string":
        ok, what = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise QueryError(f"{col.name} is {col.type}: give {what}, not {value!r} ({type(value).__name__})")


def _check_value(col: Column, value: Any) -> None:
    if value is None:
        if col.nullable:
            return
        raise QueryError(f"{col.name} is never empty; filter it on its codes")
    _check_type(col, value)
    if value == INVALID and col.type == "string" and col.domain_source.startswith("codelist:") and not col.validated:
        return
    if col.in_domain(value):
        return
    sample = ", ".join(repr(v) for v in (col.domain or ())[:8])
    more = "…" if col.domain and len(col.domain) > 8 else ""
    raise QueryError(f"{value!r} is not a value of {col.name}; values are {sample}{more}")


def _check_range_value(col: Column, value: Any) -> None:
    if col.type == "date":
        try:
            canonical = dt.date.fromisoformat(str(value)).isoformat()
        except ValueError:
            canonical = None
        if canonical != value:
            raise QueryError(f"{col.name} is a date: give dates as YYYY-MM-DD, not {value!r}") from None
    elif col.type == "int64":
        if isinstance(value, bool) or not isinstance(value, int):
            raise QueryError(
                f"{col.name} holds whole numbers: filter it with numbers written as whole numbers, not {value!r}"
            )
    elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise QueryError(f"{col.name} is a number: filter it with numbers, not {value!r}")
