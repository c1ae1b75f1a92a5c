"""The access policy: who may read which tables and columns, and how their results are protected.

Deny by default. A user's groups each grant tables (all their columns, or a list); a query
may touch only columns granted to at least one of the user's groups. The only operation is
select; identifiers stay unusable whatever a grant says (see :mod:`safestats.query.validate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safestats.catalog import Catalog
from safestats.errors import AccessDenied, ConfigError, UnknownUser
from safestats.query.model import Query
from safestats.resources import RESOURCES

__all__ = ["Disclosure", "Identity", "Policy", "ensure_allowed", "load_policy"]

DEFAULT_POLICY = RESOURCES / "policy.yaml"
MODES = ("sdc",)  # "dp" arrives with the differential-privacy issue


@dataclass(frozen=True)
class Disclosure:
    """How a group's results are protected."""

    mode: str = "sdc"
    threshold: int = 10

    @classmethod
    def strictest(cls, rules: list[Disclosure]) -> Disclosure:
        if not rules:
            return cls()
        return cls(mode="sdc", threshold=max(r.threshold for r in rules))


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

    def identity(self, user: str, *, interaction: str = "manual",
                 client: Mapping[str, Any] | None = None) -> Identity:  # fmt: skip
        """The identity of ``user``. A service identity's interaction type is fixed by the policy."""
        try:
            entry = self.users[user]
        except KeyError:
            raise UnknownUser(f"user {user!r} is not in the access policy ({self.path})") from None
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


def load_policy(path: Path | str | None = None, *, catalog: Catalog) -> Policy:
    """Load and check the policy against the catalog; errors name the file and entry."""
    path = Path(path) if path else DEFAULT_POLICY
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: policy file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None

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
        d = spec.get("disclosure") or {}
        mode = d.get("mode", "sdc")
        if mode not in MODES:
            raise fail(f"group {name}", f"disclosure mode {mode!r} is not one of {', '.join(MODES)}")
        threshold = d.get("threshold", 10)
        if not isinstance(threshold, int) or threshold < 1:
            raise fail(f"group {name}", "disclosure threshold must be a whole number >= 1")
        groups[name] = Group(name, str(spec.get("description", "")).strip(), grants,
                             Disclosure(mode=mode, threshold=threshold))  # fmt: skip
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
