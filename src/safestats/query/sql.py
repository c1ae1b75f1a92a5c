"""Aggregate SQL, parsed with sqlglot into the same query model as the Python API.

Allowed, and nothing else::

    SELECT <group columns>, <aggregates>
    FROM <table> [AS a] [JOIN Nationality [AS n] USING (pupil_id, term) | ON a.x = n.x AND ...]
    [WHERE <condition> AND <condition> ...]
    [GROUP BY <group columns>]

Aggregates: COUNT(*), COUNT(DISTINCT pupil_id), SUM(m), AVG(m), MEDIAN(m),
QUANTILE_CONT(m, q) (also QUANTILE / PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY m)), each
optionally ``AS name``. Conditions: ``col = v``, ``col <> v``, ``col IN (...)``,
``col NOT IN (...)``, ``col BETWEEN a AND b``, ``col < v`` (and <=, >, >=), ``col IS NULL``,
``col IS NOT NULL``; values are literals.
"""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp

from safestats.catalog import Catalog
from safestats.errors import QueryError, did_you_mean
from safestats.query.model import Aggregate, Filter, Query

__all__ = ["ALLOWED", "parse_sql"]

ALLOWED = (
    "only aggregate queries are allowed: SELECT group columns and aggregates (COUNT(*), "
    "COUNT(DISTINCT pupil_id), SUM, AVG, MEDIAN, QUANTILE_CONT) FROM one table [JOIN along a "
    "declared key] [WHERE simple conditions joined by AND] [GROUP BY the group columns]"
)


def _refuse(what: str) -> QueryError:
    return QueryError(f"{what}; {ALLOWED}")


#: The longest SQL text accepted, and the deepest nesting of parentheses: past these the parser
#: would recurse without bound (a 4xx, never a crash).
MAX_SQL_CHARS, MAX_SQL_DEPTH = 20_000, 50


def parse_sql(text: str, *, catalog: Catalog) -> Query:
    """Parse ``text`` into a :class:`Query`, refusing anything that is not an allowed aggregate."""
    if not isinstance(text, str) or not text.strip():
        raise _refuse("empty SQL")
    if len(text) > MAX_SQL_CHARS:
        raise QueryError(f"the SQL is {len(text):,} characters long, more than the {MAX_SQL_CHARS:,} allowed")
    depth = deepest = 0
    for ch in text:
        depth += 1 if ch == "(" else -1 if ch == ")" else 0
        deepest = max(deepest, depth)
    if deepest > MAX_SQL_DEPTH:
        raise QueryError(f"the SQL nests parentheses {deepest} deep, more than the {MAX_SQL_DEPTH} allowed")
    try:
        return _parse_sql(text, catalog=catalog)
    except RecursionError:
        raise QueryError("the SQL is nested too deeply to check") from None


def _parse_sql(text: str, *, catalog: Catalog) -> Query:
    try:
        statements = sqlglot.parse(text, read="duckdb")
    except sqlglot.errors.SqlglotError as e:  # ParseError, TokenError, ...
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise QueryError(f"could not parse the SQL: {first}") from None
    statements = [s for s in statements if s is not None]
    if len(statements) != 1:
        raise _refuse("send exactly one statement")
    select = statements[0]
    if not isinstance(select, exp.Select):
        raise _refuse(f"{getattr(select, 'key', 'these').upper()} statements are not allowed")
    for banned, what in (
        ("with_", "WITH (common table expressions)"),
        ("having", "HAVING"),
        ("order", "ORDER BY"),
        ("limit", "LIMIT"),
        ("offset", "OFFSET"),
        ("distinct", "SELECT DISTINCT"),
        ("qualify", "QUALIFY"),
    ):
        key = banned.rstrip("_") if banned != "with_" else "with"
        if select.args.get(key):
            raise _refuse(f"{what} is not allowed")
    for node in select.walk():
        if isinstance(node, exp.Subquery | exp.Union | exp.Window | exp.Star) and not (
            isinstance(node, exp.Star) and isinstance(node.parent, exp.Count)
        ):
            raise _refuse("subqueries, set operations, window functions and * are not allowed")

    aliases, table, join, using = _from(select, catalog)
    group_by = _group_by(select, aliases)
    aggregates, selected_groups = [], []
    for item in select.expressions:
        name = item.alias if isinstance(item, exp.Alias) else ""
        node = item.this if isinstance(item, exp.Alias) else item
        if isinstance(node, exp.Column):
            col = _column(node, aliases)
            if col not in group_by:
                raise _refuse(f"column {col} is selected but not grouped: rows are never returned")
            if name and name != col:
                raise _refuse(f"group columns cannot be renamed ({col} AS {name})")
            selected_groups.append(col)
        else:
            aggregates.append(_aggregate(node, name, aliases, catalog))
    if set(selected_groups) != set(group_by):
        missing = sorted(set(group_by) - set(selected_groups))
        raise _refuse(f"select every GROUP BY column (missing: {', '.join(missing)})")
    filters = _where(select.args.get("where"), aliases)
    try:
        return Query(
            table=table,
            join=join,
            filters=tuple(filters),
            group_by=tuple(selected_groups),
            aggregates=tuple(aggregates),
            dataset=catalog.dataset,
        )
    except QueryError as e:
        raise _refuse(str(e)) from None


def _from(select: exp.Select, catalog: Catalog) -> tuple[dict[str, str], str, str | None, tuple[str, ...]]:
    source = select.args.get("from") or select.args.get("from_")
    if source is None:
        raise _refuse("a FROM clause naming a catalog table is needed")
    first = source.this
    if not isinstance(first, exp.Table):
        raise _refuse("FROM must name a catalog table")
    aliases: dict[str, str] = {}
    table = _table_name(first, catalog, aliases)
    joins = select.args.get("joins") or []
    if len(joins) > 1:
        raise _refuse("at most one JOIN is allowed")
    join = None
    using: tuple[str, ...] = ()
    if joins:
        j = joins[0]
        side, kind = (j.args.get("side") or "").upper(), (j.args.get("kind") or "").upper()
        if side or kind not in ("", "INNER"):
            raise _refuse("only inner joins are allowed")
        if not isinstance(j.this, exp.Table):
            raise _refuse("JOIN must name a catalog table")
        join = _table_name(j.this, catalog, aliases)
        declared = catalog.join_between(table, join)
        if declared is None:
            raise QueryError(f"{table} and {join} cannot be joined; only declared joins are allowed")
        if j.args.get("using"):
            using = tuple(sorted(_ident(u) for u in j.args["using"]))
        elif j.args.get("on") is not None:
            using = tuple(sorted(_on_columns(j.args["on"], aliases)))
        if using != tuple(sorted(declared.using)):
            raise QueryError(f"{table} joins {join} only using ({', '.join(declared.using)}), the declared key")
    return aliases, table, join, using


def _table_name(node: exp.Table, catalog: Catalog, aliases: dict[str, str]) -> str:
    if node.args.get("db") or node.args.get("catalog"):
        raise _refuse("tables are named without a schema")
    name = node.name
    match = {t.lower(): t for t in catalog.tables}.get(name.lower())
    if match is None:
        raise QueryError(
            f"no table {name!r}{did_you_mean(name, catalog.tables)}; tables are: {', '.join(catalog.tables)}"
        )
    aliases[match.lower()] = match
    if node.alias:
        aliases[node.alias.lower()] = match
    return match


def _ident(node: Any) -> str:
    return str(node.name if hasattr(node, "name") else node).lower()


def _on_columns(on: exp.Expression, aliases: dict[str, str]) -> list[str]:
    conds = list(on.flatten()) if isinstance(on, exp.And) else [on]
    cols = []
    for c in conds:
        if not (isinstance(c, exp.EQ) and isinstance(c.this, exp.Column) and isinstance(c.expression, exp.Column)):
            raise _refuse("JOIN ... ON may only equate the declared key columns")
        a, b = _column(c.this, aliases), _column(c.expression, aliases)
        if a != b:
            raise _refuse("JOIN ... ON may only equate the declared key columns")
        cols.append(a)
    return cols


def _column(node: exp.Column, aliases: dict[str, str]) -> str:
    if node.table and node.table.lower() not in aliases:
        raise QueryError(f"unknown table or alias {node.table!r} in {node.sql()}")
    return node.name.lower()


def _group_by(select: exp.Select, aliases: dict[str, str]) -> list[str]:
    group = select.args.get("group")
    if group is None:
        return []
    out = []
    for g in group.expressions:
        if not isinstance(g, exp.Column):
            raise _refuse(f"GROUP BY takes column names, not {g.sql()}")
        out.append(_column(g, aliases))
    return out


_SIMPLE = {exp.Sum: "sum", exp.Avg: "mean", exp.Median: "median"}


def _aggregate(node: exp.Expression, name: str, aliases: dict[str, str], catalog: Catalog) -> Aggregate:
    if isinstance(node, exp.Count):
        arg = node.this
        if isinstance(arg, exp.Star):
            return Aggregate("count", name=name)
        if isinstance(arg, exp.Distinct):
            cols = arg.expressions
            if len(cols) == 1 and isinstance(cols[0], exp.Column) and _column(cols[0], aliases) == catalog.privacy_unit:
                return Aggregate("count_pupils", name=name)
            raise _refuse("COUNT(DISTINCT ...) counts pupils only: COUNT(DISTINCT pupil_id)")
        raise _refuse("COUNT takes * or DISTINCT pupil_id")
    for cls, kind in _SIMPLE.items():
        if isinstance(node, cls):
            col = _measure(node.this, aliases)
            if kind == "median":
                return Aggregate("quantile", col, 0.5, name=name)
            return Aggregate(kind, col, name=name)
    if isinstance(node, exp.Quantile):
        return Aggregate("quantile", _measure(node.this, aliases), _number(node.args.get("quantile")), name=name)
    if isinstance(node, exp.PercentileCont) and node.expression is not None:  # QUANTILE_CONT(m, q)
        return Aggregate("quantile", _measure(node.this, aliases), _number(node.expression), name=name)
    if isinstance(node, exp.WithinGroup) and isinstance(node.this, exp.PercentileCont):
        order = node.expression.expressions if node.expression is not None else []
        if len(order) != 1 or order[0].args.get("desc"):
            raise _refuse("PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY column) takes one column, ascending")
        return Aggregate("quantile", _measure(order[0].this, aliases), _number(node.this.this), name=name)
    if isinstance(node, exp.Anonymous) and node.name.lower() in ("quantile_cont", "quantile"):
        args = node.expressions
        if len(args) != 2:
            raise _refuse("QUANTILE_CONT takes (column, q)")
        return Aggregate("quantile", _measure(args[0], aliases), _number(args[1]), name=name)
    fn = node.sql() if not isinstance(node, exp.Func) else node.sql_name()
    raise _refuse(f"{fn} is not an allowed aggregate or group column")


def _measure(node: Any, aliases: dict[str, str]) -> str:
    if not isinstance(node, exp.Column):
        raise _refuse("aggregates take a column name, not an expression")
    return _column(node, aliases)


def _number(node: Any) -> float:
    if isinstance(node, exp.Literal) and not node.is_string:
        return float(node.this)
    raise _refuse("the quantile must be a number between 0 and 1")


def _literal(node: Any) -> Any:
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        return -_literal(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        text = node.this
        return int(text) if text.lstrip("-").isdigit() else float(text)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal):  # DATE '2017-01-01'
        return node.this.this
    raise _refuse(f"conditions compare a column with literal values, not {node.sql()}")


_COMPARE: dict[type[exp.Expression], str] = {
    exp.EQ: "==",
    exp.NEQ: "!=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}


def _where(where: exp.Where | None, aliases: dict[str, str]) -> list[Filter]:
    if where is None:
        return []
    cond = where.this
    conds = list(cond.flatten()) if isinstance(cond, exp.And) else [cond]
    filters = []
    for c in conds:
        if isinstance(c, exp.Paren):
            c = c.this
        if not isinstance(c, exp.Expression):
            raise _refuse("a WHERE clause holds conditions on columns")
        filters.append(_condition(c, aliases))
    return filters


def _condition(c: exp.Expression, aliases: dict[str, str]) -> Filter:
    negate = False
    if isinstance(c, exp.Not):
        negate, c = True, c.this
    if isinstance(c, exp.Or):
        raise _refuse("OR is not allowed; use IN (...) for alternatives")
    if type(c) in _COMPARE and not negate:
        if not isinstance(c.this, exp.Column):
            raise _refuse(f"a condition starts with a column name: {c.sql()}")
        return Filter(_column(c.this, aliases), _COMPARE[type(c)], _literal(c.expression))
    if isinstance(c, exp.In) and isinstance(c.this, exp.Column):
        if c.args.get("query"):
            raise _refuse("IN takes a list of values, not a subquery")
        values = tuple(_literal(v) for v in c.expressions)
        return Filter(_column(c.this, aliases), "not in" if negate else "in", values)
    if isinstance(c, exp.Between) and isinstance(c.this, exp.Column) and not negate:
        return Filter(_column(c.this, aliases), "between", (_literal(c.args["low"]), _literal(c.args["high"])))
    if isinstance(c, exp.Is) and isinstance(c.this, exp.Column) and isinstance(c.expression, exp.Null):
        return Filter(_column(c.this, aliases), "!=" if negate else "==", None)
    raise _refuse(f"the condition {c.sql()} is not allowed")
