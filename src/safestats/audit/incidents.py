"""Incident detection over the audit log (Becta: audit logging and incident handling).

Each rule reads the records (decoded, in sequence order) and says what looks wrong, with the
records it rests on. Pure: records and thresholds in, incidents out; :mod:`safestats.store.incidents`
keeps them and the data owner acknowledges them. The rules, and their thresholds (policy
``incidents:``, defaults below):

- ``refusal_burst`` — ``refusals`` or more refused requests by one user within ``window_minutes``
  (someone probing the limits: grants, identifiers, disclosure rules);
- ``failed_logins`` — ``failed_logins`` or more failed authentications for one claimed user (or
  unknown tokens) within the window;
- ``second_factor_failures`` — ``second_factor_failures`` or more refused second-factor codes for
  one user within the window (guessing; the factor also locks itself);
- ``budget_exhausted`` — a query refused because the privacy budget is spent (once a user a day);
- ``differencing_refused`` — an sdc table refused by the differencing check (its earlier tables
  would undo it, or the check was too large or too slow; once a user a day) — not a query shape
  refused up front because it cannot be checked;
- ``out_of_hours`` — a person's request over the network outside ``working_hours`` (UTC) or at
  a weekend (once a user a day);
- ``new_address`` — a user seen over the network from an address they were never seen from
  before;
- ``scheduled_identity_interactive`` — a service identity's request that no report run made
  (its client does not name a ``quality/…`` report run);
- ``audit_verify_failed`` — the log itself does not verify.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["AT_EVERY_REQUEST", "DAILY", "RULES", "Incident", "Thresholds", "detect", "feeds"]

RULES = (
    "refusal_burst",
    "failed_logins",
    "second_factor_failures",
    "budget_exhausted",
    "differencing_refused",
    "out_of_hours",
    "new_address",
    "scheduled_identity_interactive",
    "audit_verify_failed",
)
_BUDGET = re.compile(r"has \S+ (?:of delta )?left of")
# refusals of the differencing check itself (a table the domain's earlier tables would undo, a
# check too large or too slow) — not the up-front refusals of a query shape that "cannot be
# checked for differencing", which are a usage matter, not a sign of someone differencing
_DIFFERENCING = re.compile(r"earlier tables|earlier table\(s\)|can be recovered", re.IGNORECASE)
_PEOPLE = ("manual", "ad hoc", "api")


@dataclass(frozen=True)
class Thresholds:
    window_minutes: int = 10
    refusals: int = 10
    failed_logins: int = 5
    second_factor_failures: int = 3
    working_hours: tuple[int, int] = (7, 19)  # [start, end) hours, UTC, Monday to Friday

    @classmethod
    def from_policy(cls, raw: Mapping[str, Any] | None) -> Thresholds:
        """The policy's ``incidents:`` mapping over the defaults (unknown keys refused)."""
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown incident thresholds {sorted(unknown)}; known: {sorted(known)}")
        hours = raw.pop("working_hours", None)
        out = cls(**{k: int(v) for k, v in raw.items()})  # type: ignore[arg-type]
        if hours is not None:
            start, end = hours
            out = replace(out, working_hours=(int(start), int(end)))
        return out


@dataclass(frozen=True)
class Incident:
    rule: str
    user: str
    first_seq: int
    last_seq: int
    count: int
    time_utc: str
    detail: str


def _time(record: Mapping[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(record["time_utc"]))


def _bursts(
    rule: str, records: Sequence[Mapping[str, Any]], need: int, window: dt.timedelta, what: str
) -> Iterable[Incident]:
    """``need`` or more of ``records`` of one user within ``window``: one incident per burst."""
    by_user: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_user[str(r["user"])].append(r)
    for user, mine in by_user.items():
        i = 0
        while i + need <= len(mine):
            j = i + need - 1
            if _time(mine[j]) - _time(mine[i]) <= window:
                while j + 1 < len(mine) and _time(mine[j + 1]) - _time(mine[i]) <= window:
                    j += 1
                n = j - i + 1
                yield Incident(
                    rule,
                    user,
                    mine[i]["seq"],
                    mine[j]["seq"],
                    n,
                    str(mine[j]["time_utc"]),
                    f"{n} {what} within {int(window.total_seconds() // 60)} minutes",
                )
                i = j + 1
            else:
                i += 1


def _daily(rule: str, records: Iterable[Mapping[str, Any]], detail: str) -> Iterable[Incident]:
    """One incident per user and day, over the records that match."""
    seen: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        seen[(str(r["user"]), str(r["time_utc"])[:10])].append(r)
    for (user, day), rs in seen.items():
        yield Incident(rule, user, rs[0]["seq"], rs[-1]["seq"], len(rs), str(rs[-1]["time_utc"]), f"{detail} on {day}")


#: the rules that need only the last window of records: the service runs them at every request
#: (``new_address`` needs a user's whole history, ``audit_verify_failed`` the whole log: scan only)
AT_EVERY_REQUEST = tuple(r for r in RULES if r not in ("new_address", "audit_verify_failed"))


def detect(
    records: Sequence[Mapping[str, Any]],
    thresholds: Thresholds,
    *,
    verified: Any = None,
    rules: Collection[str] = RULES,
) -> list[Incident]:
    """The incidents the ``rules`` find in ``records`` (sequence order); ``verified``: the log's
    VerifyReport, when the caller checked it."""
    found = _detect(records, thresholds, verified=verified)
    return [i for i in found if i.rule in rules]


def _refused(r: Mapping[str, Any]) -> bool:
    return r.get("outcome") == "refused"


def _person(r: Mapping[str, Any]) -> bool:
    """A request by a person over the network (not embedded, not the data owner's tools)."""
    return bool(
        r.get("interaction") in _PEOPLE
        and r.get("operation") not in ("admin", "incident")
        and not str(r.get("user") or "").startswith(("data owner", "safestats"))
        and r.get("user")
        and "observed" in (r.get("client") or {})
    )


def _out_of_hours(r: Mapping[str, Any], t: Thresholds) -> bool:
    start, end = t.working_hours
    return _person(r) and (_time(r).weekday() >= 5 or not start <= _time(r).hour < end)


def _unscheduled(r: Mapping[str, Any]) -> bool:
    client = r.get("client") or {}
    return (
        r.get("interaction") == "scheduled"
        and not str((client.get("claimed") or {}).get("notebook") or "").startswith("quality/")
        and not str(client.get("notebook") or "").startswith("quality/")
    )


#: per rule but ``audit_verify_failed``, the records it reads (the rest of the log cannot make it fire)
FEEDS: dict[str, Callable[[Mapping[str, Any], Thresholds], bool]] = {
    "refusal_burst": lambda r, t: _refused(r) and r["operation"] not in ("authenticate", "session open"),
    "failed_logins": lambda r, t: _refused(r) and r["operation"] == "authenticate",
    "second_factor_failures": lambda r, t: _refused(r) and r["operation"] == "session open",
    "budget_exhausted": lambda r, t: _refused(r) and bool(_BUDGET.search(str(r.get("reason") or ""))),
    "differencing_refused": lambda r, t: (
        _refused(r) and r["operation"] in ("query", "sql") and bool(_DIFFERENCING.search(str(r.get("reason") or "")))
    ),
    "out_of_hours": _out_of_hours,
    "new_address": lambda r, t: _person(r),
    "scheduled_identity_interactive": lambda r, t: _unscheduled(r),
}
#: the rules that raise one incident a user a day (see :func:`_daily`)
DAILY = ("budget_exhausted", "differencing_refused", "out_of_hours", "scheduled_identity_interactive")


def feeds(record: Mapping[str, Any], thresholds: Thresholds, rules: Collection[str] = RULES) -> list[str]:
    """The ``rules`` that read ``record``: a record no rule reads cannot change what they find."""
    return [rule for rule in rules if rule in FEEDS and FEEDS[rule](record, thresholds)]


def _detect(records: Sequence[Mapping[str, Any]], thresholds: Thresholds, *, verified: Any = None) -> list[Incident]:
    t = thresholds
    window = dt.timedelta(minutes=t.window_minutes)

    def fed(rule: str) -> list[Mapping[str, Any]]:
        return [r for r in records if FEEDS[rule](r, t)]

    found: list[Incident] = []
    found += _bursts("refusal_burst", fed("refusal_burst"), t.refusals, window, "refused requests")
    found += _bursts("failed_logins", fed("failed_logins"), t.failed_logins, window, "failed authentications")
    found += _bursts(
        "second_factor_failures",
        fed("second_factor_failures"),
        t.second_factor_failures,
        window,
        "refused second-factor codes",
    )
    found += _daily("budget_exhausted", fed("budget_exhausted"), "privacy budget spent: queries refused")
    found += _daily("differencing_refused", fed("differencing_refused"), "sdc tables refused by the differencing rule")
    start, end = t.working_hours
    found += _daily(
        "out_of_hours", fed("out_of_hours"), f"requests outside {start:02d}:00–{end:02d}:00 UTC on weekdays"
    )
    addresses: dict[str, set[str]] = defaultdict(set)
    for r in fed("new_address"):
        remote = str(((r.get("client") or {}).get("observed") or {}).get("remote") or "")
        user = str(r["user"])
        if not remote or user in ("anonymous", "unauthenticated"):
            continue
        if addresses[user] and remote not in addresses[user]:
            found.append(
                Incident(
                    "new_address",
                    user,
                    r["seq"],
                    r["seq"],
                    1,
                    str(r["time_utc"]),
                    f"first request from {remote} (seen before from {', '.join(sorted(addresses[user]))})",
                )
            )
        addresses[user].add(remote)
    found += _daily(
        "scheduled_identity_interactive",
        fed("scheduled_identity_interactive"),
        "service identity used outside a report run",
    )
    if verified is not None and not verified.ok:
        found.append(
            Incident(
                "audit_verify_failed",
                "",
                int(verified.first_bad or 0),
                int(verified.first_bad or 0),
                1,
                dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                str(verified),
            )
        )
    return sorted(found, key=lambda i: (i.first_seq, i.rule))
