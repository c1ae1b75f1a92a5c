"""Accuracy before spending: what a query would cost and how accurate it would be.

A preview runs the pipeline up to the decision to spend — parse, plan, access, the dp plan
(or the sdc checks) — and stops there: it reads no data (not even a count), reserves nothing
and draws no noise. Everything it reports follows from the query, the catalog and the policy,
all of which the analyst may already read, so it needs no protection. It is audited like any
request (operation ``preview``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from safestats.disclosure.dp import INPUTS, DpPlan, plan_dp, rounding_slack, shown_count
from safestats.errors import SafestatsError, UserError
from safestats.privacy.accountant import PRIVACY_UNIT, rho_to_epsilon
from safestats.query.model import Query
from safestats.query.validate import plan_query
from safestats.store.ledger import current_period

if TYPE_CHECKING:
    from safestats.access.policy import Disclosure, Identity
    from safestats.service.pipeline import Service

__all__ = ["preview"]


def preview(service: Service, wire: Mapping[str, Any], *, identity: Identity) -> dict[str, Any]:
    """The preview of the query ``wire`` for ``identity`` (audited; refusals raise as a run would)."""
    from safestats.access.policy import ensure_allowed
    from safestats.disclosure.sdc import check_sdc
    from safestats.service.recorder import describe_query

    started = time.perf_counter()
    record = service.recorder.draft(identity, "preview")
    try:
        query = Query.from_wire(dict(wire))
        record.update(describe_query(query, None))
        s = service.settings
        plan = plan_query(
            query,
            catalog=service.catalog,
            max_cells=s.max_cells,
            max_group_keys=s.max_group_keys,
            max_filters=s.max_filters,
        )
        ensure_allowed(identity, query, policy=service.policy, catalog=service.catalog)
        d = service.policy.disclosure_for(identity)
        record["disclosure"] = d.describe()
        out: dict[str, Any] = {
            "mode": d.mode,
            "cells": plan.cells,
            "keys": [k.name for k in plan.keys],
            "statistics": [a.name for a in query.aggregates],
        }
        if d.mode == "dp":
            out |= _dp_preview(service, identity, query, plan_dp(plan, d, max_cells=s.max_cells), d)
        else:
            if d.protection == "suppression":
                check_sdc(plan, service.catalog)
            out |= {
                "protection": d.protection,
                "threshold": d.threshold,
                "rounding": d.rounding,
                "message": "exact statistics with statistical disclosure control: no budget; cells under "
                f"{d.threshold} pupils and cells that would reveal them are withheld (c)",
            }
    except (UserError, SafestatsError) as e:
        service.recorder.write(record, started, outcome="refused", reason=str(e))
        raise
    service.recorder.write(
        record, started, outcome="answered", reason="preview: nothing read from the data, nothing spent"
    )
    return out


def _dp_preview(service: Service, identity: Identity, query: Query, dp_plan: DpPlan, d: Disclosure) -> dict[str, Any]:
    period = current_period(d.period)
    bal = service.ledger.balance(identity.user, service.catalog.dataset, period, d.unit, d.budget, d.delta_budget)
    cached = service.cache.get(identity.user, service.cache_key_for(query, dp_plan, d)) is not None
    cost, delta = (0, 0) if cached else (dp_plan.loss, dp_plan.delta)
    stats: dict[str, Any] = {}
    by_name = {m.name: m for m in dp_plan.measurements}
    round_half = rounding_slack(d)
    for a in query.aggregates:
        if dp_plan.selection is not None:
            stats[a.name] = {
                "half_width95": dp_plan.selection.accuracy + round_half,
                "shown_from": dp_plan.selection.threshold,
            }
        elif a.spec.dp_post == "count":
            noise = by_name[INPUTS[a.spec.dp_inputs[0]](a)[0]].noise
            # a count shown at exactly the threshold: its interval, from the public parameters only
            at = np.array([d.threshold])
            _, _, low, high = shown_count(at, d.threshold, noise.mechanism, noise.scale, noise.accuracy, d)
            stats[a.name] = {
                "half_width95": noise.accuracy + round_half,
                "at_threshold95": [float(low[0]), float(high[0])],
            }
        elif a.kind == "sum":
            stats[a.name] = {"half_width95": by_name[f"__sum_{a.column}"].noise.accuracy}
        elif a.kind == "mean":
            s_acc, n_acc = by_name[f"__sum_{a.column}"].noise.accuracy, by_name["__count"].noise.accuracy
            low, high = dp_plan.plan.bounds[str(a.column)]
            top = max(abs(float(low)), abs(float(high)))
            stats[a.name] = {
                "half_width95": None,
                "sum_half_width95": s_acc,
                "count_half_width95": n_acc,
                "half_width95_at_n": {str(n): (s_acc + top * n_acc) / n for n in (10, 100, 1000, 10000)},
                "formula": "(sum ± + |mean| × count ±) / n for a cell of n rows",
            }
        else:
            qt = next(x for x in dp_plan.quantiles if x.name == a.name)
            stats[a.name] = {
                "half_width95": None,
                "rank_accuracy95": qt.noise.rank_accuracy,
                "candidates": len(qt.noise.candidates),
                "formula": "the released value's rank is within this many rows of the best candidate's",
            }
    out: dict[str, Any] = {
        "unit": d.unit,
        "cost": str(cost),
        "delta": str(delta),
        "cached": cached,
        "period": period,
        "budget": str(bal.total),
        "left": str(bal.left),
        "left_after": str(bal.left - cost),
        "delta_left": str(bal.delta_left),
        "delta_left_after": str(bal.delta_left - delta),
        "would_refuse": bool(bal.left - cost < 0 or bal.delta_left - delta < 0),
        "threshold": d.threshold,
        "statistics": stats,
        "privacy_unit": PRIVACY_UNIT,
        "max_rows_per_pupil": dp_plan.k,
        "mechanisms": dp_plan.describe()["measurements"],
    }
    if d.unit == "rho":
        out["epsilon_at_delta"] = {"delta": str(d.delta_budget), "epsilon": rho_to_epsilon(cost, d.delta_budget)}
    return out
