"""Protective marking: every output is labelled at the highest level of what it touched."""

from __future__ import annotations

from safestats.catalog import Catalog
from safestats.query.validate import Plan

__all__ = ["label_for"]


def label_for(plan: Plan, catalog: Catalog) -> tuple[str, str]:
    """(classification, legacy impact level) of a result: the highest of its tables and fields."""
    levels = {catalog.table(t).classification for t in plan.query.tables}
    used = {c for cols in plan.query.columns_used().values() for c in cols}
    levels |= {plan.columns[c].classification for c in used}
    top = catalog.highest(levels)
    return top, catalog.impact_levels.get(top, "")
