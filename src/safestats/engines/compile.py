"""Compile a plan to an Ibis expression. Engine-neutral: no backend-specific SQL here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import ibis
import ibis.expr.types as ir

from safestats.engines.base import BOUND_ORDER, CELL_KEY, PUPILS, RECORD_KEY_MODULUS, Memo
from safestats.query.columns import top_column
from safestats.query.model import INVALID, Aggregate, Filter
from safestats.query.validate import ATOM, Key, Plan, margin_plans

__all__ = [
    "compile_counted",
    "compile_decomposed",
    "compile_dropped",
    "compile_plan",
    "compile_scope",
    "compile_tops",
    "compile_with_margins",
    "execute_plan",
    "execute_scope",
    "expressions_key",
    "multi_key",
    "multi_rows",
    "plan_expressions",
    "relation",
    "rank_rows",
    "rows_key",
    "single_term",
]


def relation(plan: Plan, tables: Mapping[str, ir.Table]) -> ir.Table:
    """The table a plan reads, joined when it asks for a join."""
    q = plan.query
    t = tables[q.table]
    if q.join is not None:
        t = t.join(tables[q.join], list(plan.join_using))
    return t


def multi_key(plan: Plan) -> str:
    """Where an engine offers, among its tables, the plan's relation's :func:`multi_rows`."""
    return f"{plan.query.table}|{plan.query.join or ''}|multi"


def rows_key(plan: Plan) -> str:
    """Where an engine offers the rows of the pupils in :func:`multi_rows` (with their ``_n``)."""
    return f"{plan.query.table}|{plan.query.join or ''}|rows"


def multi_rows(t: ir.Table, unit: str) -> ir.Table:
    """Per pupil and term, the number of rows, for the pupils with more than one row in a term
    (dual registrations: about 1% of the rows). An engine may build it once per census; with it
    the contribution bound of a one-term query windows only those pupils' rows."""
    n = t.group_by([unit, "term"]).aggregate(_n=t.count())
    return n.filter(n._n > 1)


def single_term(plan: Plan) -> Any:
    """The one term a plan's filters pin (``term == X`` or ``term in (X,)``), else None."""
    for f in plan.query.filters:
        if f.column != "term" or f.value is None:
            continue
        if f.op == "==":
            return f.value
        if f.op == "in" and isinstance(f.value, tuple) and len(f.value) == 1 and f.value[0] is not None:
            return f.value[0]
    return None


def _needed(plan: Plan) -> set[str]:
    """The columns a plan's aggregates read: the unit, the keys (a binned key's measure), the
    clipped measures."""
    needed = {plan.unit, *(k.bin[0] if k.bin else k.name for k in plan.keys), *plan.bounds}
    return needed | {a.column for a in plan.query.aggregates if a.column}


def _rows(plan: Plan, tables: Mapping[str, ir.Table]) -> ir.Table:
    """The rows a plan aggregates: joined, filtered, narrowed to what it needs, bounded."""
    t = _filtered(relation(plan, tables), plan)
    needed = _needed(plan)
    if plan.max_rows is None:
        return t.select(*sorted(needed))  # only what the aggregates need travels further
    order = {c for c in BOUND_ORDER if c in t.columns}
    term = single_term(plan)
    multi = tables.get(multi_key(plan)) if term is not None and "term" in t.columns else None
    if multi is None:
        return _bound_rows(t.select(*sorted(needed | order)), plan)
    return _bound_rows_within_term(t, plan, multi, term, sorted(needed), sorted(needed | order))


def compile_scope(plan: Plan, tables: Mapping[str, ir.Table]) -> list[ir.Value]:
    """The number of distinct pupils in the plan's scope: the rows its filters select, before any
    contribution bound (the records a release used, for the data owner's reports; never released).

    Where the filters pin one term and the engine offers the rows of the pupils with several rows
    in a term (:func:`rows_key`), as ``[rows, their rows, their pupils]``: the scope is
    ``rows − (their rows − their pupils)`` — exact, and a count instead of a distinct count over
    every row. Otherwise ``[distinct pupils]``."""
    t = _filtered(relation(plan, tables), plan)
    several = tables.get(rows_key(plan)) if single_term(plan) is not None and "term" in t.columns else None
    if several is None:
        return [t[plan.unit].nunique()]
    several = _filtered(several, plan)
    return [t.count(), several.count(), several[plan.unit].nunique()]


def _measure(t: ir.Table, a: Aggregate, plan: Plan) -> ir.Column | None:
    """The aggregate's measure clipped to its catalog bounds (None for a count)."""
    if a.column is None:
        return None
    low, high = plan.bounds[a.column]
    return t[a.column].clip(lower=low, upper=high)


#: One Ibis expression per reduction of query/aggregates.py (what a kind computes per cell).
REDUCTIONS: dict[str, Any] = {
    "rows": lambda t, m, a, plan: t.count(),
    "pupils": lambda t, m, a, plan: t[plan.unit].nunique(),
    "sum": lambda t, m, a, plan: m.sum().fill_null(0),  # the sum of nothing is 0
    "mean": lambda t, m, a, plan: m.mean(),
    "quantile": lambda t, m, a, plan: m.quantile(a.q),
}
#: The bound's fast path (compile_decomposed) adds and subtracts per-cell parts: a reduction's
#: parts (a mean as its sum and count), and how the combined parts give its value.
ADDITIVE_PARTS: dict[str, Any] = {
    "rows": lambda t, m, a, plan: {a.name: t.count()},
    "pupils": lambda t, m, a, plan: {a.name: t[plan.unit].nunique()},
    "sum": lambda t, m, a, plan: {a.name: m.sum().fill_null(0)},
    "mean": lambda t, m, a, plan: {f"_s_{a.name}": m.sum().fill_null(0), f"_c_{a.name}": m.count()},
}


def compile_plan(plan: Plan, tables: Mapping[str, ir.Table]) -> ir.Table:
    """The Ibis expression computing the exact aggregates of ``plan`` (see engines/base.py)."""
    q = plan.query
    t = _rows(plan, tables)
    if plan.atoms is not None:
        t = _atomised(t, plan)
    metrics: dict[str, ir.Value] = {
        a.name: REDUCTIONS[a.spec.reduction](t, _measure(t, a, plan), a, plan) for a in q.aggregates
    }
    if plan.pupils_per_cell:
        metrics[PUPILS] = t[plan.unit].nunique()
    if plan.record_key is not None:
        metrics[CELL_KEY] = (_record_key(t[plan.unit], plan.record_key).sum() % RECORD_KEY_MODULUS).cast("int64")
    return _per_cell(t, plan, metrics)


def _atomised(t: ir.Table, plan: Plan) -> ir.Table:
    """The rows with their atom (``_atom``) of the plan's AtomMap; rows in no atom dropped.
    Each key is mapped to its class once (a column), then the classes to the grid cell."""
    m = plan.atoms
    assert m is not None
    t = t.mutate(**{f"_k{i}": _key(t, k, plan) for i, k in enumerate(plan.keys)})
    classes = {}
    for i, pairs in enumerate(m.classes):
        value = t[f"_k{i}"]
        plain = {v: c for v, c in pairs if v is not None}
        empty = [c for v, c in pairs if v is None]
        cls = value.substitute(plain, else_=-1) if plain else ibis.literal(-1, "int64")
        classes[f"_c{i}"] = value.isnull().ifelse(empty[0] if empty else -1, cls).cast("int64")
    t = t.mutate(**classes)
    grid: ir.IntegerValue = ibis.literal(0, "int64")
    outside: ir.BooleanValue = ibis.literal(False)
    for i, stride in enumerate(m.strides):
        outside = outside | (t[f"_c{i}"] < 0)
        grid = grid + t[f"_c{i}"] * stride
    t = t.mutate(_g=outside.ifelse(-1, grid))
    if not m.grid:  # the class-grid cells themselves (the non-empty ones come back)
        t = t.filter(t._g >= 0)
        return t.mutate(**{ATOM: t._g})
    atoms = ibis.memtable({"_ga": list(m.grid), ATOM: list(m.atom)})
    return t.join(atoms, t._g == atoms._ga)


def compile_tops(plan: Plan, tables: Mapping[str, ir.Table], measure: str) -> ir.Table:
    """Per cell, the ``plan.top_n`` largest per-pupil totals of ``measure`` (clipped), 0 where
    the cell has fewer contributors, and the cell's total (``_top0_<m>``): what the dominance
    rules need. Ties break on the unit."""
    t = _rows(plan, tables)
    low, high = plan.bounds[measure]
    if plan.atoms is not None:
        t = _atomised(t, plan)
        names = [ATOM]
        t = t.mutate(_m=t[measure].clip(lower=low, upper=high))
    else:
        keys = {k.name: _key(t, k, plan) for k in plan.keys}
        names = list(keys)
        t = t.mutate(**keys, _m=t[measure].clip(lower=low, upper=high))
    c = t.group_by([*names, plan.unit]).aggregate(_c=t._m.sum())
    window = ibis.window(group_by=[c[n] for n in names] or None, order_by=[ibis.desc(c._c), c[plan.unit]])
    whole = ibis.window(group_by=[c[n] for n in names] or None)
    c = c.mutate(_r=ibis.row_number().over(window), _t=c._c.sum().over(whole))
    c = c.filter(c._r < plan.top_n)
    tops = {top_column(measure, 0): c._t.max()}
    tops |= {top_column(measure, i + 1): c._c.max(where=c._r == i).fill_null(0) for i in range(plan.top_n)}
    return c.group_by(names).aggregate(**tops) if names else c.aggregate(**tops)


def _record_key(unit: ir.IntegerValue, params: tuple[int, int, int, int]) -> ir.IntegerValue:
    """engines.base.record_key in Ibis: int64 arithmetic only."""
    a, b, c, d = params
    m = RECORD_KEY_MODULUS
    x = (unit.cast("int64") * a + b) % m
    return ((x * x % m) * c + d) % m


def _bound_rows(t: ir.Table, plan: Plan) -> ir.Table:
    """Keep at most ``plan.max_rows`` rows per pupil (the contribution bound DP relies on)."""
    order = [t[c] for c in BOUND_ORDER if c in t.columns]
    window = ibis.window(group_by=t[plan.unit], order_by=order)
    t = t.mutate(_row=ibis.row_number().over(window))  # 0-based in ibis
    return t.filter(t._row < plan.max_rows).drop("_row")


def _bound_rows_within_term(
    t: ir.Table, plan: Plan, multi: ir.Table, term: Any, needed: list[str], ordered: list[str]
) -> ir.Table:
    """The same rows as :func:`_bound_rows` when every row is of one term: a pupil with at most
    ``max_rows`` rows in the term keeps all its (filtered) rows, so only the others need the
    window (and the columns it orders by). Exact: the filtered rows of a pupil are a subset of
    its rows in the term."""
    risky = multi.filter((multi.term == term) & (multi._n > plan.max_rows)).select(plan.unit)
    safe = t.select(*needed).anti_join(risky, plan.unit)
    few = _bound_rows(t.select(*ordered).semi_join(risky, plan.unit), plan)
    return safe.union(few.select(*needed), distinct=False)


def _key(t: ir.Table, key: Key, plan: Plan) -> ir.Value:
    if key.bin is not None:  # a binned measure: the lower bound of its bin
        column, low, width = key.bin
        clipped = t[column].clip(lower=low, upper=plan.bounds[column][1])
        return (((clipped - low) // width) * width + low).cast("int64")
    col, codes = t[key.name], key.codes
    if codes is None or not plan.remap_in_engine:
        return col
    return (col.isnull() | col.isin(list(codes))).ifelse(col, ibis.literal(INVALID))


def _matches(
    col: ir.Column, values: tuple[Any, ...], codes: tuple[Any, ...] | None, *, negated: bool
) -> ir.BooleanValue:
    """Membership. Negated, it must never be NULL (so ``not in`` keeps empty values); kept as it
    is, NULL filters a row out just as FALSE does, so a plain ``col = v`` serves — which lets the
    engine skip row groups by their statistics (a term filter reads one term's row groups)."""
    plain = [v for v in values if v is not None and v != INVALID]
    parts: list[ir.BooleanValue] = []
    if plain and negated:
        parts.append(col.isin(plain).fill_null(False))
    elif plain:
        parts.append(col == plain[0] if len(plain) == 1 else col.isin(plain))
    if None in values:
        parts.append(col.isnull())
    if INVALID in values and codes is not None:
        parts.append(col.notnull() & ~col.isin(list(codes)).fill_null(False))
    out = parts[0]
    for p in parts[1:]:
        out = out | p
    return out


def _predicate(t: ir.Table, f: Filter, plan: Plan) -> ir.BooleanValue:
    col = t[f.column]
    if f.op in ("==", "!=", "in", "not in"):
        values = f.value if isinstance(f.value, tuple) else (f.value,)
        negated = f.op in ("!=", "not in")
        m = _matches(col, values, plan.codes.get(f.column), negated=negated)
        return ~m if negated else m
    is_date = plan.columns[f.column].type == "date"

    def lit(v: Any) -> Any:
        return ibis.date(dt.date.fromisoformat(v)) if is_date else v

    if f.op == "between":
        low, high = f.value
        return col.between(lit(low), lit(high))
    v = lit(f.value)
    return {"<": col < v, "<=": col <= v, ">": col > v, ">=": col >= v}[f.op]


def _bounded_rows_table(plan: Plan, tables: Mapping[str, ir.Table]) -> ir.Table | None:
    """The engine's rows of the pupils with several rows in a term (``rows_key(plan)``), where a
    one-term fast path of the contribution bound (:func:`compile_decomposed`,
    :func:`compile_dropped`) can apply to ``plan``: a bounded plan pinning one term, of additive
    aggregates, with no atoms, largest contributors or record keys. Else None."""
    rows = tables.get(rows_key(plan))
    if (
        rows is None
        or plan.max_rows is None
        or single_term(plan) is None
        or plan.atoms is not None
        or plan.top_measures  # the largest contributors need each pupil's total
        or plan.record_key is not None
        or any(a.spec.reduction not in ADDITIVE_PARTS for a in plan.query.aggregates)
    ):
        return None
    return rows


def compile_decomposed(plan: Plan, tables: Mapping[str, ir.Table]) -> tuple[ir.Table, ir.Table, ir.Table] | None:
    """The bounded aggregates of a one-term plan as three cheap ones, or None where they do not
    apply: per cell, (all filtered rows) − (filtered rows of the pupils with more than
    ``max_rows`` rows in the term) + (those rows, bounded). Exact for counts, distinct pupils
    (the two sets of pupils are disjoint), sums and the sums and counts behind a mean; the first
    reads no pupil id, the others read the few rows the engine keeps in ``rows_key(plan)``."""
    rows = _bounded_rows_table(plan, tables)
    if rows is None:
        return None
    everything = _filtered(relation(plan, tables), plan)
    risky = _filtered(rows, plan)
    risky = risky.filter(risky._n > plan.max_rows)
    needed = _needed(plan)
    ordered = sorted(needed | {c for c in BOUND_ORDER if c in risky.columns})
    bounded = _bound_rows(risky.select(*ordered), plan)
    return _additive(everything, plan), _additive(risky, plan), _additive(bounded, plan)


def compile_dropped(plan: Plan, tables: Mapping[str, ir.Table]) -> tuple[ir.Table, ir.Table] | None:
    """The bounded aggregates of a plan whose every filter is on the term, one term pinned, as
    two cheap ones, or None where they do not apply: per cell, (all the term's rows) − (the rows
    the bound drops: those ranked ``max_rows`` or later among their pupil's rows in the term, by
    ``BOUND_ORDER``, which the engine ranked once in ``rows_key(plan)``'s ``_r``). Exact: a filter
    on the term keeps all of a pupil's rows in it or none, so the rows the bound keeps are the
    first ones of the whole term; where any other filter could drop a pupil's first row (and make
    its second the first) :func:`compile_decomposed` windows the filtered rows instead. Distinct
    pupils are counted as rows, which a bound of one row makes exact; with a larger bound a
    pupil may keep rows in several cells, so a plan counting pupils then goes the other way. No
    pupil id and no window at query time."""
    q = plan.query
    rows = _bounded_rows_table(plan, tables)
    counts_pupils = plan.pupils_per_cell or any(a.spec.reduction == "pupils" for a in q.aggregates)
    if rows is None or any(f.column != "term" for f in q.filters) or (counts_pupils and plan.max_rows != 1):
        return None
    dropped = _filtered(rows, plan)
    dropped = dropped.filter(dropped._r >= plan.max_rows)
    everything = _filtered(relation(plan, tables), plan)
    return _additive(everything, plan, distinct=False), _additive(dropped, plan, distinct=False)


def rank_rows(rows: ir.Table, unit: str) -> ir.Table:
    """``rows`` (of pupils with several rows in a term) with each row's rank ``_r`` (0-based)
    among its pupil's rows in its term, by ``BOUND_ORDER``: the order the contribution bound
    keeps rows in (:func:`_bound_rows`), so the rows a bound of ``k`` drops from a whole term are
    those with ``_r >= k`` (:func:`compile_dropped`)."""
    order = [rows[c] for c in BOUND_ORDER if c in rows.columns]
    window = ibis.window(group_by=[rows[unit], rows.term], order_by=order)
    return rows.mutate(_r=ibis.row_number().over(window))


def compile_counted(plan: Plan, tables: Mapping[str, ir.Table]) -> tuple[ir.Table, ir.Table] | None:
    """The exact aggregates of a one-term plan with no contribution bound (sdc, cell key) that
    counts distinct pupils, as two cheap aggregates (see :func:`combined`) instead of a distinct
    count over every row,
    or None where they do not apply: per cell, distinct pupils = rows − (rows of the pupils with
    several rows in the term − those pupils). Exact: a pupil with one row in the term is one row
    of one cell, and the others are counted distinctly among their own rows (the ~1% in
    ``rows_key(plan)``). The first part reads no pupil id; row counts, sums and means come from
    it unchanged."""
    q = plan.query
    rows = tables.get(rows_key(plan))
    pupils = [a for a in q.aggregates if a.spec.reduction == "pupils"]
    if (
        rows is None
        or plan.max_rows is not None
        or single_term(plan) is None
        or plan.top_measures  # the largest contributors need each pupil's total
        or plan.record_key is not None
        or not (pupils or plan.pupils_per_cell)
        or any(a.spec.reduction not in ADDITIVE_PARTS for a in q.aggregates)
    ):
        return None
    everything, several = _filtered(relation(plan, tables), plan), _filtered(rows, plan)
    if plan.atoms is not None:  # the differencing check's atoms: each part's rows mapped to theirs
        everything, several = _atomised(everything, plan), _atomised(several, plan)
    return _additive(everything, plan, distinct=False), _repeats(several, plan, plan)


def _repeats(several: ir.Table, plan: Plan, cells: Plan) -> ir.Table:
    """Per cell of ``cells`` (the plan or one of its margins), the repeats of the pupils with
    several rows in the term (their rows less those pupils), for each aggregate of ``plan`` that
    counts distinct pupils: what :func:`combined` takes off the rows."""
    names = [a.name for a in plan.query.aggregates if a.spec.reduction == "pupils"]
    names += [PUPILS] if plan.pupils_per_cell else []
    return _per_cell(several, cells, {n: several.count() - several[plan.unit].nunique() for n in names})


def compile_with_margins(plan: Plan, tables: Mapping[str, ir.Table]) -> tuple[ir.Table, list[ir.Table]] | None:
    """The exact aggregates of a one-term table and of all its margins (``margin_plans`` order)
    in one expression that reads the term once, or None where :func:`compile_counted` does not
    apply. A margin's rows, sums and pupils counted as rows are the sums of its cells' (each row
    is in one cell), less the margin's repeats counted on the few rows of pupils with several
    rows in the term (``rows_key(plan)``) — the same parts :func:`compile_counted` gives the
    margin's own plan, so the same aggregates. Returns the union of the parts (``_set``: the
    part's index; the keys a part sums over are null) and each part's expression (its columns
    and types are what the engine returns for it)."""
    counted = compile_counted(plan, tables)
    if counted is None or plan.atoms is not None or not plan.keys:
        return None
    everything, repeats = counted
    several = _filtered(tables[rows_key(plan)], plan)
    key_types = {k.name: everything[k.name].type() for k in plan.keys}
    metrics = [c for c in everything.columns if c not in key_types]
    parts, plans = [combined(everything, [repeats], [], plan)], [plan, *margin_plans(plan)]
    for sub in plans[1:]:
        kept = [k.name for k in sub.keys]
        sums = {c: everything[c].sum().fill_null(0).cast(everything[c].type()) for c in metrics}
        cells = everything.group_by(kept).aggregate(**sums) if kept else everything.aggregate(**sums)
        parts.append(combined(cells, [_repeats(several, plan, sub)], [], sub))
    union = None
    for i, (part, p) in enumerate(zip(parts, plans, strict=True)):
        named = {k.name for k in p.keys}
        cols = {n: part[n] if n in named else ibis.null().cast(t) for n, t in key_types.items()}
        cols |= {c: part[c] for c in part.columns if c not in key_types}
        one = part.select(**cols, _set=ibis.literal(i, type="int16"))
        union = one if union is None else union.union(one, distinct=False)
    assert union is not None
    return union, parts


def _additive(t: ir.Table, plan: Plan, *, distinct: bool = True) -> ir.Table:
    """Per cell, the additive parts of the plan's aggregates (a mean as its sum and count). With
    ``distinct=False`` distinct pupils are counted as rows, for :func:`compile_counted` to take
    the repeats off."""
    metrics: dict[str, ir.Value] = {"_rows": t.count()}
    for a in plan.query.aggregates:
        if not distinct and a.spec.reduction == "pupils":
            metrics[a.name] = t.count()
        else:
            metrics.update(ADDITIVE_PARTS[a.spec.reduction](t, _measure(t, a, plan), a, plan))
    if plan.pupils_per_cell:
        metrics[PUPILS] = t[plan.unit].nunique() if distinct else t.count()
    return _per_cell(t, plan, metrics)


def _filtered(t: ir.Table, plan: Plan) -> ir.Table:
    """``t`` with the plan's filters applied."""
    predicates = [_predicate(t, f, plan) for f in plan.query.filters]
    return t.filter(*predicates) if predicates else t


def _per_cell(t: ir.Table, plan: Plan, metrics: Mapping[str, ir.Value]) -> ir.Table:
    """``metrics`` per cell of the plan's output: per atom, per cell of its keys, or in all."""
    if plan.atoms is not None:
        return t.group_by(ATOM).aggregate(**metrics)
    if not plan.keys:
        return t.aggregate(**metrics)
    return t.group_by(**{k.name: _key(t, k, plan) for k in plan.keys}).aggregate(**metrics)


def combined(everything: ir.Table, minus: list[ir.Table], plus: list[ir.Table], plan: Plan) -> ir.Table:
    """One expression for ``everything − Σ minus + Σ plus`` per cell of ``everything`` (the others
    have no cell it lacks, and may hold only some of its columns), in the columns and order of
    :func:`compile_plan`; cells the bound emptied are dropped. The parts are joined in the engine
    on their cell columns (an empty key matches an empty key), so one query returns the table."""
    keys = _cell_columns(plan)
    value: dict[str, ir.Value] = {c: everything[c] for c in everything.columns if c not in keys}
    joined = everything
    for i, (part, sign) in enumerate([(t, -1) for t in minus] + [(t, 1) for t in plus]):
        part = part.rename({f"_p{i}{c}": c for c in part.columns})
        on = [joined[k].identical_to(part[f"_p{i}{k}"]) for k in keys]
        joined = joined.left_join(part, on) if on else joined.cross_join(part)
        for c in part.columns:
            name = c[len(f"_p{i}") :]
            if name in value:
                value[name] = value[name] + sign * joined[c].fill_null(0)
    value = {c: v.name(c) for c, v in value.items()}
    out: dict[str, ir.Value] = {k: joined[k] for k in keys}
    for a in plan.query.aggregates:
        if a.spec.reduction == "mean":  # its parts: see ADDITIVE_PARTS
            total, n = value[f"_s_{a.name}"], value[f"_c_{a.name}"]
            out[a.name] = (total.cast("float64") / n.nullif(0).cast("float64")).name(a.name)
        else:
            out[a.name] = value[a.name].cast(everything[a.name].type()).name(a.name)
    if plan.pupils_per_cell:
        out[PUPILS] = value[PUPILS].cast("int64").name(PUPILS)
    result = joined.select(**out, _rows=value["_rows"])
    if keys:
        result = result.filter(result._rows > 0)
    return result.drop("_rows")


def _cell_columns(plan: Plan) -> list[str]:
    """The columns naming a cell of the plan's output: its atom, or its keys."""
    return [ATOM] if plan.atoms is not None else [k.name for k in plan.keys]


def execute_scope(con: Any, tables: Mapping[str, ir.Table], lock: Any, plan: Plan) -> int:
    """Run :func:`compile_scope` on an Ibis backend."""
    exprs = compile_scope(plan, tables)
    with lock:
        values = [int(con.execute(e) or 0) for e in exprs]
    return values[0] if len(values) == 1 else values[0] - (values[1] - values[2])


def plan_expressions(plan: Plan, tables: Mapping[str, ir.Table]) -> tuple[ir.Table, list[ir.Table]]:
    """The expressions that compute ``plan`` on an Ibis backend: the aggregates and, where the
    aggregates are not one of the one-term fast paths, the largest contributors each
    dominance-checked measure needs (to merge per cell)."""
    dropped = compile_dropped(plan, tables)
    if dropped is not None:
        everything, less = dropped
        return combined(everything, [less], [], plan), []
    decomposed = compile_decomposed(plan, tables)
    if decomposed is not None:
        everything, risky, bounded = decomposed
        return combined(everything, [risky], [bounded], plan), []
    counted = compile_counted(plan, tables)
    if counted is not None:
        everything, repeats = counted
        return combined(everything, [repeats], [], plan), []
    return compile_plan(plan, tables), [compile_tops(plan, tables, m) for m in plan.top_measures]


def expressions_key(plan: Plan, tables: Mapping[str, ir.Table]) -> tuple[str, tuple[str, ...]] | None:
    """What the expressions of ``plan`` depend on, to keep them by (engines hold them in a
    :class:`~safestats.engines.base.Memo`: building one is most of a small query's time, ~30 ms,
    and the engine's SQL cache is keyed on the expression): the whole plan but its privacy
    parameters (ε, ρ, δ: the protect step's, never the engine's), and the engine tables there
    are, so anything else that changes the SQL changes the key. None for plans of atoms (one-off,
    and large to key): built each time."""
    if plan.atoms is not None:
        return None
    q = replace(plan.query, epsilon=None, rho=None, delta=None)
    return repr(replace(plan, query=q)), tuple(sorted(tables))


def execute_plan(con: Any, tables: Mapping[str, ir.Table], lock: Any, plan: Plan, built: Memo | None = None) -> Any:
    """Run a plan on an Ibis backend: the aggregates, then the largest contributors each
    dominance-checked measure needs, merged per cell (the engine contract, engines/base.py).
    With ``built``, expressions are kept by :func:`expressions_key`."""
    from safestats.engines.base import merge_tops

    key = expressions_key(plan, tables) if built is not None else None
    if built is not None and key is not None:
        expr, tops = built.get(key, lambda: plan_expressions(plan, tables))
    else:
        expr, tops = plan_expressions(plan, tables)
    with lock:
        out = con.execute(expr)
        parts = [con.execute(t) for t in tops]
    return merge_tops(out, parts, plan)
