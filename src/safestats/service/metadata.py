"""The metadata requests of the service: who am I, my budget, the catalog (all audited).

Composed into :class:`~safestats.service.pipeline.Service` (``service.metadata``); nothing here
reads the census.
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from safestats.access.policy import Identity
from safestats.errors import UserError
from safestats.store.ledger import current_period

if TYPE_CHECKING:
    from safestats.service.pipeline import Service

__all__ = ["MetadataRequests"]


class MetadataRequests:
    """whoami, budget, set_budget, default_budget and catalog_info of one service."""

    def __init__(self, service: Service) -> None:
        self.s = service

    def whoami(self, *, identity: Identity) -> dict[str, Any]:
        """Who the service takes the caller to be (audited)."""
        started = time.perf_counter()
        self.s.recorder.write(
            self.s.recorder.draft(identity, "whoami"), started, outcome="answered", reason="metadata only"
        )
        from safestats.service.second_factor import second_factor_status

        readable = self.s.policy.readable(identity, self.s.catalog)
        return {
            "user": identity.user,
            "groups": list(identity.groups),
            "organisation": identity.organisation,
            "interaction": identity.interaction,
            "second_factor": second_factor_status(self.s, identity),
            # what the client checks queries against while they are built (names only: no data)
            "may_read": {t: t in readable for t in self.s.catalog.tables},
            "usable": {
                t.name: {c.name: _usable(c, readable.get(t.name, frozenset())) for c in t.columns.values()}
                for t in self.s.catalog.tables.values()
            },
        }

    def budget(self, *, identity: Identity) -> dict[str, Any]:
        """The identity's privacy budget in the current period (metadata; audited)."""
        started = time.perf_counter()
        record = self.s.recorder.draft(identity, "budget")
        d = self.s.policy.disclosure_for(identity)
        if d.mode != "dp":
            info: dict[str, Any] = {
                "mode": d.mode,
                "message": "your results use statistical disclosure control; there is no privacy budget",
            }
        else:
            period = current_period(d.period)
            bal = self.s.ledger.balance(identity.user, self.s.catalog.dataset, period, d.unit, d.budget, d.delta_budget)
            info = {
                "mode": "dp",
                "unit": d.unit,
                "period": period,
                "total": str(bal.total),
                "spent": str(bal.spent),
                "left": str(bal.left),
                "per_query": str(d.per_query),
                "delta_total": str(bal.delta_total),
                "delta_spent": str(bal.delta_spent),
                "delta_left": str(bal.delta_left),
                "max_delta": str(d.max_delta),
            }
            if d.unit == "rho":  # zCDP, and the (ε, δ)-DP it implies at the policy's δ (OpenDP's conversion)
                from safestats.privacy.accountant import rho_to_epsilon

                info["epsilon_at_delta"] = {
                    "delta": str(d.delta_budget),
                    "spent": rho_to_epsilon(bal.spent, d.delta_budget),
                    "total": rho_to_epsilon(bal.total, d.delta_budget),
                }
        self.s.recorder.write(record, started, outcome="answered", reason="metadata only")
        return info

    def set_budget(
        self, user: str, amount: Fraction, *, period: str | None = None, by: str = "data owner"
    ) -> tuple[str, str]:
        """The data owner sets ``user``'s budget (audited). Returns (unit, period)."""
        d = self.s.policy.disclosure_for(self.s.identity(user))
        if d.mode != "dp":
            raise UserError(f"{user} is under statistical disclosure control ({d.mode}); there is no budget to set")
        period = period or current_period(d.period)
        self.s.recorder.admin(
            by,
            "budget set",
            f"{user}'s {d.unit} budget for {period} set",
            privacy={"for_user": user, "unit": d.unit, "period": period, "budget": str(amount)},
        )
        self.s.ledger.set_budget(user, self.s.catalog.dataset, period, d.unit, amount, set_by=by)
        return d.unit, period

    def default_budget(self, user: str) -> Fraction | None:
        """The budget the policy gives ``user`` when the data owner set none (None: not dp)."""
        try:
            d = self.s.policy.disclosure_for(self.s.identity(user))
        except UserError:
            return None
        return d.budget if d.mode == "dp" else None

    def catalog_info(self, *, identity: Identity, table: str | None = None) -> dict[str, Any]:
        """Metadata only: the tables (or one table's columns) and what the identity may read."""
        started = time.perf_counter()
        record = self.s.recorder.draft(identity, "describe" if table else "tables")
        record["tables"] = [table] if table else []
        try:
            info = self._describe(identity, table) if table else self._tables(identity)
        except UserError as e:
            self.s.recorder.write(record, started, outcome="refused", reason=str(e))
            raise
        self.s.recorder.write(record, started, outcome="answered", reason="metadata only")
        return info

    def _tables(self, identity: Identity) -> dict[str, Any]:
        readable = self.s.policy.readable(identity, self.s.catalog)
        rows = [
            {
                "table": t.name,
                "description": t.description,
                "classification": t.classification,
                "restricted": t.restricted,
                "you_may_read": t.name in readable,
            }
            for t in self.s.catalog.tables.values()
        ]
        return {"rows": rows}

    def _describe(self, identity: Identity, table: str) -> dict[str, Any]:
        t = self.s.catalog.table(table)
        readable = self.s.policy.readable(identity, self.s.catalog).get(table, frozenset())
        rows = []
        for c in t.columns.values():
            domain = c.domain or ()
            rows.append(
                {
                    "column": c.name,
                    "type": c.type,
                    "role": c.role,
                    "classification": c.classification,
                    "usable": _usable(c, readable),
                    "domain": (
                        f"{len(domain)} values: " + ", ".join(map(str, domain[:6])) + ("…" if len(domain) > 6 else "")
                    )
                    if domain
                    else "",
                    "bounds": f"{c.bounds[0]} to {c.bounds[1]}" if c.bounds else "",
                    "description": c.description,
                }
            )
        return {
            "rows": rows,
            "table": t.name,
            "classification": t.classification,
            "restricted": t.restricted,
            "description": t.description,
        }


def _usable(column: Any, readable: frozenset[str]) -> bool:
    """Whether a query may name ``column``: granted to the caller, and not an identifier."""
    return (not column.is_identifier) and column.name in readable
