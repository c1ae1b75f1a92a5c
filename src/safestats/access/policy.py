"""The access policy: who may read which tables and columns, and how their results are protected.

Deny by default. A user's groups each grant tables (all their columns, or a list); a query
may touch only columns granted to at least one of the user's groups. The only operation is
select; identifiers stay unusable whatever a grant says (see :mod:`safestats.query.validate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from safestats.catalog import Catalog
from safestats.config import read_yaml
from safestats.errors import AccessDenied, ConfigError, QueryError, UnknownUser
from safestats.query.model import Query, exact_fraction
from safestats.resources import RESOURCES

__all__ = ["Disclosure", "Identity", "Policy", "ensure_allowed", "load_policy"]

DEFAULT_POLICY = RESOURCES / "policy.yaml"
MODES = ("sdc", "dp")
NOISES = ("laplace", "gaussian")


@dataclass(frozen=True)
class Disclosure:
    """How a group's results are protected.

    ``sdc``: exact values, cells under ``threshold`` pupils suppressed.
    ``dp``: OpenDP noise (``laplace``: pure ε-DP; ``gaussian``: ρ-zCDP), each query spending
    ``per_query`` (ε or ρ) from a ``budget`` per ``period``; noisy counts under ``threshold``
    are suppressed and counts rounded to ``rounding``.
    """

    mode: str = "sdc"
    threshold: int = 10
    noise: str = "laplace"
    per_query: Fraction = Fraction(1, 2)
    budget: Fraction = Fraction(4)
    period: str = "quarter"
    rounding: int = 1

    @property
    def unit(self) -> str:
        return "epsilon" if self.noise == "laplace" else "rho"

    def describe(self) -> dict[str, Any]:
        if self.mode == "sdc":
            return {"mode": "sdc", "threshold": self.threshold, "rounding": self.rounding}
        return {"mode": "dp", "threshold": self.threshold, "noise": self.noise, "unit": self.unit,
                "per_query": str(self.per_query), "budget": str(self.budget), "period": self.period,
                "rounding": self.rounding}  # fmt: skip

    @classmethod
    def strictest(cls, rules: list[Disclosure]) -> Disclosure:
        """DP wins over SDC (the first DP group's settings); else the highest SDC threshold."""
        if not rules:
            return cls()
        dp_rules = [r for r in rules if r.mode == "dp"]
        if dp_rules:
            return dp_rules[0]
        return cls(mode="sdc", threshold=max(r.threshold for r in rules), rounding=max(r.rounding for r in rules))


@dataclass(frozen=True)
class Group:
    name: str
    description: str
    grants: Mapping[str, frozenset[str] | None]  # table -> columns (None: all columns)
    disclosure: Disclosure


@dataclass(frozen=True)
class Identity:
    """Who is asking: resolved from the policy, never from the client's say-so."""

    user: str
    groups: tuple[str, ...]
    organisation: str
    interaction: str
    service: bool = False
    client: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    groups: Mapping[str, Group]
    users: Mapping[str, Mapping[str, Any]]
    organisations: Mapping[str, str]
    path: Path

    def identity(self, user: str, *, interaction: str = "manual", client: Mapping[str, Any] | None = None,
                 managed: Mapping[str, Any] | None = None) -> Identity:  # fmt: skip
        """The identity of ``user`` (from the policy file, or ``managed``: a user the data owner
        added to the service's database). A service identity's interaction type is fixed."""
        entry = self.users.get(user) or managed
        if entry is None:
            raise UnknownUser(f"user {user!r} is not in the access policy ({self.path})")
        unknown = [g for g in entry["groups"] if g not in self.groups]
        if unknown:
            raise UnknownUser(f"user {user!r} belongs to groups the policy does not define: {unknown}")
        forced = entry.get("interaction")
        return Identity(
            user=user,
            groups=tuple(entry["groups"]),
            organisation=str(entry["organisation"]),
            interaction=str(forced or interaction),
            service=bool(entry.get("service", False)),
            client=dict(client or {}),
        )

    def disclosure_for(self, identity: Identity) -> Disclosure:
        return Disclosure.strictest([self.groups[g].disclosure for g in identity.groups])

    def readable(self, identity: Identity, catalog: Catalog) -> dict[str, frozenset[str]]:
        """Tables and columns the identity's groups may read."""
        out: dict[str, set[str]] = {}
        for g in identity.groups:
            for table, cols in self.groups[g].grants.items():
                all_cols = set(catalog.table(table).columns)
                out.setdefault(table, set()).update(all_cols if cols is None else cols)
        return {t: frozenset(c) for t, c in out.items()}

    def members(self, group: str) -> list[str]:
        return sorted(u for u, e in self.users.items() if group in e["groups"])


def ensure_allowed(identity: Identity, query: Query, *, policy: Policy, catalog: Catalog) -> None:
    """Raise :class:`AccessDenied` unless every table and column of ``query`` is granted."""
    readable = policy.readable(identity, catalog)
    groups = ", ".join(identity.groups)
    for table in query.tables:
        if table not in readable:
            raise AccessDenied(
                f"your groups ({groups}) may not read table {table}; ask the data owner for a grant"
            )
    used = {c for cols in query.columns_used().values() for c in cols}
    tables_cols = set().union(*(readable[t] for t in query.tables))
    denied = sorted(used - tables_cols)
    if denied:
        raise AccessDenied(
            f"your groups ({groups}) may not read column(s) {', '.join(denied)} of "
            f"{' / '.join(query.tables)}"
        )


def _disclosure(d: Mapping[str, Any], fail: Any) -> Disclosure:
    mode = d.get("mode", "dp")
    if mode not in MODES:
        raise fail(f"disclosure mode {mode!r} is not one of {', '.join(MODES)}")
    threshold = d.get("threshold", 10)
    if not isinstance(threshold, int) or threshold < 0:
        raise fail("disclosure threshold must be a whole number >= 0")
    rounding = d.get("rounding", 1)
    if not isinstance(rounding, int) or rounding < 1:
        raise fail("rounding must be a whole number >= 1 (1: no rounding)")
    if mode == "sdc":
        if threshold < 1:
            raise fail("disclosure threshold must be a whole number >= 1")
        return Disclosure(mode="sdc", threshold=threshold, rounding=rounding)
    noise = d.get("noise", "laplace")
    if noise not in NOISES:
        raise fail(f"noise {noise!r} is not one of {', '.join(NOISES)}")
    unit = "epsilon" if noise == "laplace" else "rho"
    try:
        per_query = exact_fraction(d.get(unit, "1/2"), unit)
        budget = exact_fraction(d.get("budget", "4"), "budget")
    except QueryError as e:
        raise fail(str(e)) from None
    period = d.get("period", "quarter")
    if period not in ("month", "quarter", "year", "all"):
        raise fail(f"budget period {period!r} is not one of month, quarter, year, all")
    return Disclosure(mode="dp", threshold=threshold, noise=noise, per_query=per_query, budget=budget,
                      period=period, rounding=rounding)  # fmt: skip


def load_policy(path: Path | str | None = None, *, catalog: Catalog) -> Policy:
    """Load and check the policy against the catalog; errors name the file and entry."""
    path = Path(path) if path else DEFAULT_POLICY
    raw = read_yaml(path, "policy")

    def fail(where: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: {where}: {message}")

    if not isinstance(raw, dict) or "groups" not in raw or "users" not in raw:
        raise fail("top level", "expected a mapping with groups and users")
    organisations = {str(k): str(v) for k, v in (raw.get("organisations") or {}).items()}
    groups = {}
    for name, spec in raw["groups"].items():
        grants: dict[str, frozenset[str] | None] = {}
        for table, cols in (spec.get("grants") or {}).items():
            if table not in catalog.tables:
                raise fail(f"group {name}", f"grants unknown table {table!r}")
            if cols == "all":
                grants[table] = None
            elif isinstance(cols, list):
                unknown = set(cols) - set(catalog.table(table).columns)
                if unknown:
                    raise fail(f"group {name}, table {table}", f"unknown columns {sorted(unknown)}")
                grants[table] = frozenset(cols)
            else:
                raise fail(f"group {name}, table {table}", "grant 'all' or a list of columns")
        groups[name] = Group(name, str(spec.get("description", "")).strip(), grants,
                             _disclosure(spec.get("disclosure") or {}, lambda m, n=name: fail(f"group {n}", m)))
    users: dict[str, dict[str, Any]] = {}
    for name, spec in raw["users"].items():
        if not isinstance(spec, dict) or not spec.get("groups"):
            raise fail(f"user {name}", "needs a list of groups")
        for g in spec["groups"]:
            if g not in groups:
                raise fail(f"user {name}", f"unknown group {g!r}")
        org = spec.get("organisation")
        if org not in organisations:
            raise fail(f"user {name}", f"unknown organisation {org!r}")
        users[str(name)] = dict(spec)
    return Policy(groups=groups, users=users, organisations=organisations, path=path)
