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

from safestats.catalog import Catalog
from safestats.config import read_yaml
from safestats.disclosure.rules import SDC_RULES as _RULE_TABLE
from safestats.disclosure.rules import parse_rule_params
from safestats.disclosure.settings import Disclosure
from safestats.errors import AccessDenied, ConfigError, QueryError, UnknownUser
from safestats.exports import ExportPolicy
from safestats.query.model import Query, exact_fraction
from safestats.resources import RESOURCES

__all__ = ["Disclosure", "Identity", "Policy", "ensure_allowed", "load_policy"]

DEFAULT_POLICY = RESOURCES / "policy.yaml"
MODES = ("sdc", "dp")
NOISES = ("laplace", "gaussian")
PROTECTIONS = ("suppression", "cell_key")
SDC_RULES = tuple(_RULE_TABLE)  # every primary rule, from disclosure/rules.py


@dataclass(frozen=True)
class Group:
    name: str
    description: str
    grants: Mapping[str, frozenset[str] | None]  # table -> columns (None: all columns)
    disclosure: Disclosure
    second_factor: bool = False  # OFFICIAL-SENSITIVE data over the network needs a TOTP session
    agreement: str = ""  # the agreement (policy `agreements:` or the register) the grants rest on


@dataclass(frozen=True)
class Identity:
    """Who is asking: resolved from the policy, never from the client's say-so."""

    user: str
    groups: tuple[str, ...]
    organisation: str
    interaction: str
    service: bool = False
    client: Mapping[str, Any] = field(default_factory=dict)
    remote: bool = False  # authenticated by a credential over the network (not embedded)
    second_factor: bool = False  # ... by a session a TOTP code opened
    #: tables (→ columns, None: all) approved access requests grant the identity's groups today,
    #: and (table → why) those an expired or revoked request no longer grants
    approved: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    lapsed: Mapping[str, str] = field(default_factory=dict)


#: when the policy's ``require_purpose`` asks a request to declare its purpose
PURPOSE_RULES = ("never", "restricted", "always")
PURPOSE_CHARS = 300


def declared_purpose(client: Mapping[str, Any]) -> str | None:
    """The purpose a client declared (``connect(purpose=...)``, ``SAFESTATS_PURPOSE``), if any;
    over HTTP what the client said of itself is under ``claimed``."""
    claimed = client.get("claimed")
    said = client.get("purpose") or (claimed.get("purpose") if isinstance(claimed, Mapping) else None)
    text = " ".join(str(said or "").split())
    return text[:PURPOSE_CHARS] or None


#: what the policy's ``retention:`` may give a period to (`safestats retention apply`)
RETENTION_KINDS = ("kept_results", "reports", "output_checking", "cache")

#: the thresholds the policy's ``incidents:`` may set (audit/incidents.py: Thresholds)
INCIDENT_THRESHOLDS = ("window_minutes", "refusals", "failed_logins", "second_factor_failures", "working_hours")


@dataclass(frozen=True)
class Policy:
    groups: Mapping[str, Group]
    users: Mapping[str, Mapping[str, Any]]
    organisations: Mapping[str, str]
    path: Path
    incidents: Mapping[str, Any] = field(default_factory=dict)  # thresholds of audit/incidents.py
    handling: Mapping[str, str] = field(default_factory=dict)  # marking -> handling caveat (policy's own)
    retention: Mapping[str, int] = field(default_factory=dict)  # kind of output -> days kept
    exports: ExportPolicy = field(default_factory=ExportPolicy)  # how protected files are written
    #: agreements the policy file declares (reference -> title, parties, legal_basis, dates)
    agreements: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: an access request for restricted tables needs two different approvers
    two_person_rule: bool = True
    #: the transparency report's records used are rounded to this (a band below it)
    records_rounding: int = 1000
    #: when a request must declare its purpose (connect(purpose=...)): never, restricted (a query
    #: of a restricted table) or always
    require_purpose: str = "never"

    def caveat(self, label: str) -> str:
        """How to handle what carries ``label``: the policy's text, else marking.py's."""
        from safestats.marking import caveat

        return self.handling.get(label) or caveat(label)

    def retention_days(self, kind: str) -> int | None:
        """Days an output of ``kind`` is kept before `safestats retention apply` disposes of it
        (None: kept until the data owner removes it)."""
        return self.retention.get(kind)

    def identity(
        self,
        user: str,
        *,
        interaction: str = "manual",
        client: Mapping[str, Any] | None = None,
        managed: Mapping[str, Any] | None = None,
    ) -> Identity:
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

    def needs_second_factor(self, identity: Identity) -> bool:
        """Whether ``identity`` must hold a second-factor session for OFFICIAL-SENSITIVE data: a
        network caller in any group whose policy says so, and no such session yet."""
        return (
            identity.remote
            and not identity.second_factor
            and any(self.groups[g].second_factor for g in identity.groups if g in self.groups)
        )

    def disclosure_for(self, identity: Identity) -> Disclosure:
        return Disclosure.strictest([self.groups[g].disclosure for g in identity.groups])

    def readable(self, identity: Identity, catalog: Catalog) -> dict[str, frozenset[str]]:
        """Tables and columns the identity's groups may read."""
        out: dict[str, set[str]] = {}
        grants = [self.groups[g].grants for g in identity.groups] + [identity.approved]
        for granted in grants:
            for table, cols in granted.items():
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
        if table not in readable and table in identity.lapsed:
            raise AccessDenied(
                f"your groups ({groups}) may no longer read table {table}: {identity.lapsed[table]}; "
                "ask the data owner to renew it (safestats access request)"
            )
        if table not in readable:
            raise AccessDenied(f"your groups ({groups}) may not read table {table}; ask the data owner for a grant")
    rule = policy.require_purpose
    if rule != "never" and declared_purpose(identity.client) is None:
        if rule == "always" or any(catalog.table(t).restricted for t in query.tables):
            what = "every request" if rule == "always" else f"a query of {' / '.join(query.tables)} (restricted)"
            raise AccessDenied(
                f'the policy asks {what} to declare its purpose: ss.connect(..., purpose="...") or SAFESTATS_PURPOSE'
            )
    used = {c for cols in query.columns_used().values() for c in cols}
    tables_cols = set().union(*(readable[t] for t in query.tables))
    denied = sorted(used - tables_cols)
    if denied and any(t in identity.lapsed for t in query.tables):
        why = "; ".join(identity.lapsed[t] for t in query.tables if t in identity.lapsed)
        raise AccessDenied(f"your groups ({groups}) may no longer read column(s) {', '.join(denied)}: {why}")
    if denied:
        raise AccessDenied(
            f"your groups ({groups}) may not read column(s) {', '.join(denied)} of {' / '.join(query.tables)}"
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
        return _sdc(d, threshold, rounding, fail)
    noise = d.get("noise", "laplace")
    if noise not in NOISES:
        raise fail(f"noise {noise!r} is not one of {', '.join(NOISES)}")
    unit = "epsilon" if noise == "laplace" else "rho"
    try:
        per_query = exact_fraction(d.get(unit, "1/2"), unit)
        budget = exact_fraction(d.get("budget", "4"), "budget")
        delta_budget = exact_fraction(d.get("delta_budget", "1/1000000"), "delta_budget")
        max_delta = exact_fraction(d.get("max_delta", "1/1000000000"), "max_delta")
    except QueryError as e:
        raise fail(str(e)) from None
    period = d.get("period", "quarter")
    if period not in ("month", "quarter", "year", "all"):
        raise fail(f"budget period {period!r} is not one of month, quarter, year, all")
    if delta_budget >= 1 or max_delta > delta_budget:
        raise fail("delta_budget must be below 1 and max_delta (the most one query may spend) at most delta_budget")
    return Disclosure(
        mode="dp",
        threshold=threshold,
        noise=noise,
        per_query=per_query,
        budget=budget,
        period=period,
        rounding=rounding,
        delta_budget=delta_budget,
        max_delta=max_delta,
    )


def _sdc(d: Mapping[str, Any], threshold: int, rounding: int, fail: Any) -> Disclosure:
    protection = d.get("protection", "suppression")
    if protection not in PROTECTIONS:
        raise fail(f"protection {protection!r} is not one of {', '.join(PROTECTIONS)}")
    rules = d.get("rules", list(SDC_RULES))
    if not isinstance(rules, list) or not rules or any(r not in SDC_RULES for r in rules):
        raise fail(f"rules must be a list drawn from {', '.join(SDC_RULES)}, got {rules!r}")
    if "threshold" not in rules:
        raise fail("rules must include threshold (the minimum count of pupils per cell)")
    try:
        params = parse_rule_params(d)
    except ValueError as e:
        raise fail(str(e)) from None
    link = d.get("link_tables", True)
    if not isinstance(link, bool):
        raise fail("link_tables must be true or false")
    domain = d.get("domain", "published")
    if not isinstance(domain, str) or not domain.strip() or len(domain) > 100:
        raise fail("domain must be a name (the disclosure domain: sdc releases checked together)")
    ckey = d.get("cell_key") or {}
    if not isinstance(ckey, dict) or set(ckey) - {"max_noise", "variance", "small"}:
        raise fail("cell_key takes max_noise, variance and small")
    ckey_max, variance, small = ckey.get("max_noise", 4), ckey.get("variance", 2), ckey.get("small", 2)
    if not isinstance(ckey_max, int) or not 1 <= ckey_max <= 20:
        raise fail("cell_key max_noise must be a whole number from 1 to 20")
    if not isinstance(variance, int | float) or not 0 < variance <= ckey_max**2:
        raise fail("cell_key variance must be positive and at most max_noise squared")
    if not isinstance(small, int) or not 0 <= small < ckey_max:
        raise fail("cell_key small (counts 1..small never published) must be a whole number below max_noise")
    return Disclosure(
        mode="sdc",
        threshold=threshold,
        rounding=rounding,
        rules=tuple(rules),
        params=params,
        protection=protection,
        link_tables=link,
        domain=domain.strip(),
        ckey_max=ckey_max,
        ckey_variance=float(variance),
        ckey_small=small,
    )


AGREEMENT_FIELDS = ("title", "parties", "legal_basis", "start_date", "end_date", "document_sha256")


def _agreements(raw: Any, fail: Any) -> dict[str, dict[str, Any]]:
    """The policy's agreements: reference -> title, parties (two or more), legal_basis, start_date,
    end_date (YYYY-MM-DD) and, optionally, the signed document's sha256."""
    import datetime as dt

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise fail("expected a mapping of reference to the agreement")
    out: dict[str, dict[str, Any]] = {}
    for ref, spec in raw.items():
        if not isinstance(spec, dict) or set(spec) - set(AGREEMENT_FIELDS):
            raise fail(f"{ref}: takes {', '.join(AGREEMENT_FIELDS)}")
        missing = [k for k in AGREEMENT_FIELDS[:5] if not spec.get(k)]
        if missing:
            raise fail(f"{ref}: needs {', '.join(missing)}")
        parties = spec["parties"]
        if not isinstance(parties, list) or len(parties) < 2:
            raise fail(f"{ref}: parties is a list of at least two")
        try:
            start, end = (dt.date.fromisoformat(str(spec[k])) for k in ("start_date", "end_date"))
        except ValueError:
            raise fail(f"{ref}: start_date and end_date are dates YYYY-MM-DD") from None
        if end < start:
            raise fail(f"{ref}: ends before it starts")
        out[str(ref)] = {
            "title": " ".join(str(spec["title"]).split()),
            "parties": [str(p) for p in parties],
            "legal_basis": " ".join(str(spec["legal_basis"]).split()),
            "start_date": start.isoformat(),
            "end_date": end.isoformat(),
            "document": None,
            "document_sha256": spec.get("document_sha256"),
        }
    return out


def _flag(value: Any, fail: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(f"second_factor must be true or false, not {value!r}")
    return value


def load_policy(path: Path | str | None = None, *, catalog: Catalog) -> Policy:
    """Load and check the policy against the catalog; errors name the file and entry."""
    path = Path(path) if path else DEFAULT_POLICY
    raw = read_yaml(path, "policy")

    def fail(where: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: {where}: {message}")

    if not isinstance(raw, dict) or "groups" not in raw or "users" not in raw:
        raise fail("top level", "expected a mapping with groups and users")
    organisations = {str(k): str(v) for k, v in (raw.get("organisations") or {}).items()}
    agreements = _agreements(raw.get("agreements"), lambda m: fail("agreements", m))
    two_person = raw.get("two_person_rule", True)
    if not isinstance(two_person, bool):
        raise fail("two_person_rule", "must be true or false")
    shown = raw.get("transparency") or {}
    if not isinstance(shown, dict) or set(shown) - {"records_rounding"}:
        raise fail("transparency", "takes records_rounding (the rounding base of the records used)")
    rounding = shown.get("records_rounding", 1000)
    if isinstance(rounding, bool) or not isinstance(rounding, int) or rounding < 100:
        raise fail("transparency", f"records_rounding must be a whole number of at least 100, not {rounding!r}")
    require_purpose = raw.get("require_purpose", "never")
    if require_purpose not in PURPOSE_RULES:
        raise fail("require_purpose", f"must be one of {', '.join(PURPOSE_RULES)}, not {require_purpose!r}")
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
        agreement = spec.get("agreement", "")
        if agreement and agreement not in agreements:
            raise fail(f"group {name}", f"agreement {agreement!r} is not among the policy's agreements")
        groups[name] = Group(
            name,
            str(spec.get("description", "")).strip(),
            grants,
            _disclosure(spec.get("disclosure") or {}, lambda m, n=name: fail(f"group {n}", m)),
            _flag(spec.get("second_factor", False), lambda m, n=name: fail(f"group {n}", m)),
            str(agreement or ""),
        )
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
    incidents = dict(raw.get("incidents") or {})
    unknown = set(incidents) - set(INCIDENT_THRESHOLDS)
    if unknown:
        raise fail("incidents", f"unknown thresholds {sorted(unknown)}; known: {', '.join(INCIDENT_THRESHOLDS)}")
    handling = raw.get("handling") or {}
    if not isinstance(handling, dict) or not all(isinstance(v, str) and v.strip() for v in handling.values()):
        raise fail("handling", "expected a mapping of marking to its handling text")
    unknown = set(handling) - set(catalog.classifications)
    if unknown:
        raise fail(
            "handling", f"unknown markings {sorted(unknown)}; the catalog's: {', '.join(catalog.classifications)}"
        )
    retention = raw.get("retention") or {}
    if not isinstance(retention, dict):
        raise fail("retention", "expected a mapping of output kind to days")
    unknown = set(retention) - set(RETENTION_KINDS)
    if unknown:
        raise fail("retention", f"unknown kinds {sorted(unknown)}; known: {', '.join(RETENTION_KINDS)}")
    for kind, days in retention.items():
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise fail(f"retention, {kind}", f"days must be a whole number of at least 1, not {days!r}")
    return Policy(
        groups=groups,
        users=users,
        organisations=organisations,
        path=path,
        incidents=incidents,
        handling={str(k): " ".join(str(v).split()) for k, v in handling.items()},
        retention={str(k): int(v) for k, v in retention.items()},
        exports=ExportPolicy.parse(raw.get("exports"), str(path)),
        agreements=agreements,
        two_person_rule=two_person,
        records_rounding=rounding,
        require_purpose=require_purpose,
    )
