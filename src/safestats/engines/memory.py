"""The reference engine in plain pandas: slow, obvious, and the yardstick for the others."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pandas as pd

from safestats.dataset import Dataset
from safestats.engines.base import BOUND_ORDER, CELL_KEY, PUPILS, RECORD_KEY_MODULUS, record_key
from safestats.query.columns import top_column
from safestats.query.model import INVALID, Filter
from safestats.query.validate import ATOM, Plan

__all__ = ["MemoryEngine"]


#: One pandas function per reduction of query/aggregates.py, over a cell's rows (the measures
#: are clipped to their bounds before grouping).
REDUCTIONS: dict[str, Any] = {
    "rows": lambda g, a, plan: len(g),
    "pupils": lambda g, a, plan: g[plan.unit].nunique(),
    "sum": lambda g, a, plan: g[a.column].sum(),
    "mean": lambda g, a, plan: g[a.column].mean(),
    "quantile": lambda g, a, plan: g[a.column].quantile(a.q),
}


class MemoryEngine:
    name = "memory"

    def __init__(self, tables: Mapping[str, pd.DataFrame]) -> None:
        self.tables = dict(tables)

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> MemoryEngine:
        files = [f for f in dataset.manifest["files"] if f.endswith(".parquet")]
        keys = dataset.decryption()
        options = {} if keys is None else {"decryption_properties": keys.decryption_properties()}
        return cls({f.removesuffix(".parquet"): pd.read_parquet(dataset.path / f, **options) for f in files})

    def ping(self) -> None:
        """In memory: always ready."""

    def _selected(self, plan: Plan) -> pd.DataFrame:
        q = plan.query
        df = self.tables[q.table]
        if q.join is not None:
            df = df.merge(self.tables[q.join], on=list(plan.join_using), how="inner")
        for f in q.filters:
            df = df[_mask(df, f, plan)]
        return df

    def scope(self, plan: Plan) -> int:
        return int(self._selected(plan)[plan.unit].nunique())

    def execute(self, plan: Plan) -> pd.DataFrame:
        q = plan.query
        df = self._selected(plan)
        if plan.max_rows is not None:  # at most max_rows rows per pupil, in a stable order
            order = [plan.unit, *(c for c in BOUND_ORDER if c in df.columns)]
            df = df.sort_values(order, kind="stable")
            df = df[df.groupby(plan.unit).cumcount() < plan.max_rows]
        df = df.copy()
        for name, (low, high) in plan.bounds.items():
            df[name] = df[name].clip(lower=low, upper=high)
        key_names = [k.name for k in plan.keys]
        for k in plan.keys:
            if k.bin is not None:
                column, low, width = k.bin
                df[k.name] = ((df[column] - low) // width) * width + low
            elif k.codes is not None and plan.remap_in_engine:
                col = df[k.name].astype(object)
                ok = col.isna() | col.isin(k.codes)
                df[k.name] = col.where(ok, INVALID)
        if plan.atoms is not None:  # group by atom of the refinement instead of by the keys
            grid = pd.Series(0, index=df.index, dtype="int64")
            outside = pd.Series(False, index=df.index)
            for k, classes, stride in zip(plan.keys, plan.atoms.classes, plan.atoms.strides, strict=True):
                lookup = dict(classes)
                cls = df[k.name].astype(object).map(lambda v, lookup=lookup: lookup.get(None if pd.isna(v) else v, -1))
                outside |= cls < 0
                grid += cls.astype("int64") * stride
            atom_of = dict(zip(plan.atoms.grid, plan.atoms.atom, strict=True))
            grid = grid.where(~outside, -1)
            df[ATOM] = grid.map(lambda g: atom_of.get(int(g), -1)) if atom_of else grid
            df = df[df[ATOM] >= 0]
            key_names = [ATOM]

        def aggregate(g: pd.DataFrame) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for a in q.aggregates:
                out[a.name] = REDUCTIONS[a.spec.reduction](g, a, plan)
            if plan.pupils_per_cell:
                out[PUPILS] = g[plan.unit].nunique()
            if plan.record_key is not None:
                keys = [record_key(int(u), plan.record_key) for u in g[plan.unit]]
                out[CELL_KEY] = sum(keys) % RECORD_KEY_MODULUS
            for m in plan.top_measures:
                per_pupil = g.groupby(plan.unit)[m].sum().sort_values(ascending=False, kind="stable")
                largest = list(per_pupil.iloc[: plan.top_n]) + [0] * plan.top_n
                out[top_column(m, 0)] = per_pupil.sum()
                for i in range(plan.top_n):
                    out[top_column(m, i + 1)] = largest[i]
            return out

        if not key_names:
            return pd.DataFrame([aggregate(df)])
        rows = []
        for key, g in df.groupby(key_names, dropna=False, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            rows.append({**dict(zip(key_names, key, strict=True)), **aggregate(g)})
        extra = [
            *([PUPILS] if plan.pupils_per_cell else []),
            *([CELL_KEY] if plan.record_key is not None else []),
            *(top_column(m, i) for m in plan.top_measures for i in range(plan.top_n + 1)),
        ]
        columns = [*key_names, *(a.name for a in q.aggregates), *extra]
        return pd.DataFrame(rows, columns=columns)


def _mask(df: pd.DataFrame, f: Filter, plan: Plan) -> pd.Series:
    col = df[f.column]
    if f.op in ("==", "!=", "in", "not in"):
        values = f.value if isinstance(f.value, tuple) else (f.value,)
        codes = plan.codes.get(f.column)
        plain = [v for v in values if v is not None and v != INVALID]
        m = col.isin(plain) & col.notna()
        if None in values:
            m |= col.isna()
        if INVALID in values and codes is not None:
            m |= col.notna() & ~col.isin(codes)
        return m if f.op in ("==", "in") else ~m
    if plan.columns[f.column].type == "date":
        col = pd.to_datetime(col)

        def lit(v: Any) -> Any:
            return pd.Timestamp(dt.date.fromisoformat(v))
    else:

        def lit(v: Any) -> Any:
            return v

    if f.op == "between":
        low, high = f.value
        return (col >= lit(low)) & (col <= lit(high))
    v = lit(f.value)
    return {"<": col < v, "<=": col <= v, ">": col > v, ">=": col >= v}[f.op]
