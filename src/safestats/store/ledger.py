"""The privacy budget ledger: per (user, dataset, period), in exact arithmetic, reserved atomically.

Amounts are :class:`fractions.Fraction` stored as text (``"1/3"``), so three spends of one third
fill a budget of one exactly. A spend is first *reserved*, inside one serialised transaction
that checks what is left; it is then *committed* when the release is recorded, or *cancelled*
if nothing was computed. Concurrent requests therefore can never overspend.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import sqlalchemy as sa

from safestats.errors import BudgetExceeded, UserError
from safestats.store.db import reading, transaction
from safestats.store.schema import allowance_table, spend_table

__all__ = ["BudgetExceeded", "Ledger", "current_period", "unexplained_budgets", "unexplained_spends"]

# The statements of every dp request, built once with bound parameters: constructing them per
# call (coercions, cache keys) cost more than running them on SQLite.
_KEY = (
    (allowance_table.c.user == sa.bindparam("u"))
    & (allowance_table.c.dataset == sa.bindparam("d"))
    & (allowance_table.c.period == sa.bindparam("p"))
)
_ALLOWANCE = sa.select(
    allowance_table.c.total,
    allowance_table.c.unit,
    allowance_table.c.spent,
    allowance_table.c.delta_spent,
    allowance_table.c.counted_to,
).where(_KEY)
_ALLOWANCE_LOCKED = _ALLOWANCE.with_for_update()
# the spends the running total has not counted yet (normally none)
_SPENDS_AFTER = sa.select(spend_table.c.amount, spend_table.c.delta).where(
    (spend_table.c.user == sa.bindparam("u"))
    & (spend_table.c.dataset == sa.bindparam("d"))
    & (spend_table.c.period == sa.bindparam("p"))
    & (spend_table.c.unit == sa.bindparam("un"))
    & (spend_table.c.id > sa.bindparam("after"))
    & (spend_table.c.status != "cancelled")
)
_RESERVE = spend_table.insert()
_KEEP_TOTAL = (
    allowance_table.update()
    .where(_KEY)
    .values(spent=sa.bindparam("spent"), delta_spent=sa.bindparam("delta_spent"), counted_to=sa.bindparam("to"))
)


def current_period(granularity: str, now: dt.datetime | None = None) -> str:
    """The budget period containing ``now``: ``2017-Q1``, ``2017-03``, ``2017`` or ``all``."""
    now = now or dt.datetime.now(dt.UTC)
    if granularity == "quarter":
        return f"{now.year}-Q{(now.month - 1) // 3 + 1}"
    if granularity == "month":
        return f"{now.year}-{now.month:02d}"
    if granularity == "year":
        return str(now.year)
    if granularity == "all":
        return "all"
    raise ValueError(f"unknown budget period {granularity!r}")


@dataclass(frozen=True)
class Balance:
    user: str
    dataset: str
    period: str
    unit: str
    total: Fraction
    spent: Fraction
    delta_total: Fraction = Fraction(0)
    delta_spent: Fraction = Fraction(0)

    @property
    def left(self) -> Fraction:
        return self.total - self.spent

    @property
    def delta_left(self) -> Fraction:
        return self.delta_total - self.delta_spent


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class Ledger:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine  # the schema comes from safestats.store.migrations
        # (user, dataset, period) whose allowance row is known to be there, not looked up again
        # on SQLite, where BEGIN IMMEDIATE serialises reservations whatever rows there are (rows
        # are updated in place, never removed, anyway); elsewhere the row is what a reservation locks,
        # so it is checked every time
        self._allowances: set[tuple[str, str, str]] = set()
        self._remember = engine.dialect.name == "sqlite"

    def set_budget(
        self, user: str, dataset: str, period: str, unit: str, total: Fraction, *, set_by: str = "data owner"
    ) -> None:
        """Set (or replace) the total budget of ``user`` for ``dataset`` in ``period``."""
        if total < 0:
            raise UserError("a budget cannot be negative")
        self._ensure_allowance(user, dataset, period, unit, total, set_by=set_by)
        with self.engine.begin() as conn:
            # updated in place, never deleted and written again: a reservation waiting on the row's
            # lock then reads the new total (on PostgreSQL a row deleted under it would vanish).
            # Nothing counted: the next balance sums the spends in the (possibly new) unit.
            conn.execute(
                allowance_table.update()
                .where(_KEY)
                .values(
                    unit=unit,
                    total=str(total),
                    set_by=set_by,
                    time_utc=_now(),
                    spent="0",
                    delta_spent="0",
                    counted_to=0,
                ),
                {"u": user, "d": dataset, "p": period},
            )

    def balance(
        self, user: str, dataset: str, period: str, unit: str, default: Fraction, delta_total: Fraction = Fraction(0)
    ) -> Balance:
        with reading(self.engine) as conn:
            return self._balance(conn, user, dataset, period, unit, default, delta_total=delta_total)

    def _balance(
        self,
        conn: sa.Connection,
        user: str,
        dataset: str,
        period: str,
        unit: str,
        default: Fraction,
        *,
        lock: bool = False,
        delta_total: Fraction = Fraction(0),
    ) -> Balance:
        """The balance from the allowance row's running total and the spends after its mark."""
        key = {"u": user, "d": dataset, "p": period}
        row = conn.execute(_ALLOWANCE_LOCKED if lock else _ALLOWANCE, key).first()
        if row is not None and row.unit != unit:
            raise UserError(f"{user}'s budget for {period} is in {row.unit}, but the query spends {unit}")
        total = Fraction(row.total) if row is not None else default
        spent = Fraction(row.spent) if row is not None and row.spent else Fraction(0)
        delta_spent = Fraction(row.delta_spent) if row is not None and row.delta_spent else Fraction(0)
        after = row.counted_to if row is not None and row.counted_to is not None else 0
        for amount, delta in conn.execute(_SPENDS_AFTER, {**key, "un": unit, "after": after}):
            spent += Fraction(amount)
            if delta:
                delta_spent += Fraction(delta)
        return Balance(user, dataset, period, unit, total, spent, delta_total, delta_spent)

    def reserve(
        self,
        user: str,
        dataset: str,
        period: str,
        unit: str,
        amount: Fraction,
        *,
        default: Fraction,
        query_hash: str = "",
        delta: Fraction = Fraction(0),
        delta_total: Fraction = Fraction(0),
    ) -> tuple[int, Balance]:
        """Reserve ``amount`` (and ``delta``, against ``delta_total``) atomically; raise
        :class:`BudgetExceeded` if either does not fit."""
        if amount <= 0 or delta < 0:
            raise UserError("a spend must be positive")
        self._ensure_allowance(user, dataset, period, unit, default)
        with self.engine.begin() as conn:  # BEGIN IMMEDIATE on SQLite; the allowance row locked elsewhere
            bal = self._balance(conn, user, dataset, period, unit, default, lock=True, delta_total=delta_total)
            if amount > bal.left:
                raise BudgetExceeded(
                    f"this query needs {unit} = {_show(amount)} but {user} has {_show(bal.left)} left of "
                    f"{_show(bal.total)} for {dataset} in {period}; nothing was run"
                )
            if delta > bal.delta_left:
                raise BudgetExceeded(
                    f"this query needs delta = {delta} but {user} has {bal.delta_left} of delta left of "
                    f"{bal.delta_total} for {dataset} in {period}; nothing was run"
                )
            inserted = conn.execute(
                _RESERVE,
                {
                    "user": user,
                    "dataset": dataset,
                    "period": period,
                    "unit": unit,
                    "amount": str(amount),
                    "delta": str(delta) if delta else None,
                    "status": "reserved",
                    "query_hash": query_hash,
                    "time_utc": _now(),
                },
            ).inserted_primary_key
            assert inserted is not None
            rid = inserted[0]
            # the running total, in the same transaction: it and the spend commit together
            conn.execute(
                _KEEP_TOTAL,
                {
                    "u": user,
                    "d": dataset,
                    "p": period,
                    "spent": str(bal.spent + amount),
                    "delta_spent": str(bal.delta_spent + delta),
                    "to": rid,
                },
            )
        return int(rid), Balance(
            user, dataset, period, unit, bal.total, bal.spent + amount, delta_total, bal.delta_spent + delta
        )

    def _ensure_allowance(
        self, user: str, dataset: str, period: str, unit: str, default: Fraction, *, set_by: str = "policy default"
    ) -> None:
        """Write the policy's default allowance as a row, so every reservation locks one row."""
        if (user, dataset, period) in self._allowances:
            return
        key = (
            (allowance_table.c.user == user)
            & (allowance_table.c.dataset == dataset)
            & (allowance_table.c.period == period)
        )
        with reading(self.engine) as conn:
            if conn.execute(sa.select(allowance_table.c.user).where(key)).first() is not None:
                if self._remember:
                    self._allowances.add((user, dataset, period))
                return
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    allowance_table.insert().values(
                        user=user,
                        dataset=dataset,
                        period=period,
                        unit=unit,
                        total=str(default),
                        set_by=set_by,
                        time_utc=_now(),
                        spent="0",
                        delta_spent="0",
                        counted_to=0,
                    )
                )
        except sa.exc.IntegrityError:
            pass  # another request wrote it first
        if self._remember:
            self._allowances.add((user, dataset, period))

    def commit(self, reservation: int, audit_seq: int | None, *, conn: sa.Connection | None = None) -> None:
        with transaction(self.engine, conn) as conn:
            conn.execute(
                spend_table.update()
                .where(spend_table.c.id == reservation)
                .values(status="committed", audit_seq=audit_seq)
            )

    def cancel(self, reservation: int) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(spend_table)
                .where((spend_table.c.id == reservation) & (spend_table.c.status == "reserved"))
                .with_for_update()
            ).first()
            if row is None:
                return
            conn.execute(spend_table.update().where(spend_table.c.id == reservation).values(status="cancelled"))
            key = {"u": row.user, "d": row.dataset, "p": row.period}
            allowance = conn.execute(_ALLOWANCE_LOCKED, key).first()
            if (
                allowance is None
                or allowance.unit != row.unit
                or allowance.counted_to is None
                or allowance.counted_to < reservation
            ):
                return  # the running total never counted it
            conn.execute(
                _KEEP_TOTAL,
                {
                    **key,
                    "spent": str(Fraction(allowance.spent or 0) - Fraction(row.amount)),
                    "delta_spent": str(Fraction(allowance.delta_spent or 0) - Fraction(row.delta or 0)),
                    "to": allowance.counted_to,
                },
            )

    def spend(self, reservation: int) -> dict[str, object]:
        with reading(self.engine) as conn:
            row = conn.execute(sa.select(spend_table).where(spend_table.c.id == reservation)).mappings().first()
        if row is None:
            raise UserError(f"no budget reservation {reservation}")
        return dict(row)

    def spends(self, user: str | None = None, *, status: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(spend_table).order_by(spend_table.c.id)
        if user:
            query = query.where(spend_table.c.user == user)
        if status:
            query = query.where(spend_table.c.status == status)
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


def unexplained_spends(ledger: Ledger, records: Iterable[Mapping[str, object]]) -> list[str]:
    """Where the ledger and the audit log disagree: every dp release the log records (a spend
    that was not a cached repeat) must have its committed spend of the same amount, and every
    committed spend tied to a record must be that record's. A refund made in the database
    (``UPDATE budget_spend SET status = 'cancelled'``) or a spend edited shows here."""
    with reading(ledger.engine) as conn:
        rows = conn.execute(sa.select(spend_table)).mappings().all()
    by_seq = {int(r["audit_seq"]): r for r in rows if r["audit_seq"] is not None}
    problems = []
    released = set()
    settled: dict[int, int] = {}
    for rec in records:
        privacy = rec.get("privacy")
        if rec.get("operation") == "budget settle" and isinstance(privacy, Mapping):
            settled[int(str(rec["seq"]))] = int(str(privacy.get("reservation")))
            continue
        if rec.get("outcome") != "released" or not isinstance(privacy, Mapping) or privacy.get("cached"):
            continue
        spent = privacy.get("spent")
        if spent in (None, "0"):
            continue
        seq = int(str(rec["seq"]))
        released.add(seq)
        row = by_seq.get(seq)
        if row is None or row["status"] != "committed" or Fraction(str(row["amount"])) != Fraction(str(spent)):
            found = "missing" if row is None else f"{row['status']} {row['amount']}"
            problems.append(f"audit record {seq} released a {spent} spend; the ledger has {found}")
    for seq, row in sorted(by_seq.items()):
        if seq in settled and settled[seq] == int(row["id"]) and row["status"] == "committed":
            continue  # charged with a record of its own (noise drawn, release not recorded)
        if seq not in released and row["status"] == "committed":
            problems.append(f"the ledger's spend {row['id']} names audit record {seq}, which released no spend")
    for row in rows:
        if row["status"] == "committed" and row["audit_seq"] is None:
            problems.append(f"the ledger's spend {row['id']} is charged with no audit record explaining it")
    return problems


def unexplained_budgets(
    ledger: Ledger, records: Iterable[Mapping[str, object]], default_for: Callable[[str], Fraction | None]
) -> list[str]:
    """Where the budgets in the ledger disagree with the log: a budget the data owner set must
    equal its newest ``budget set`` record; one never set must be the policy's default
    (``default_for(user)``). A budget raised in the database (``UPDATE budget_allowance``) shows."""
    latest: dict[tuple[str, str, str], str] = {}
    for rec in records:
        privacy = rec.get("privacy")
        if rec.get("operation") == "budget set" and isinstance(privacy, Mapping):
            latest[(str(privacy.get("for_user")), str(privacy.get("period")), str(privacy.get("unit")))] = str(
                privacy.get("budget")
            )
    with reading(ledger.engine) as conn:
        rows = conn.execute(sa.select(allowance_table)).mappings().all()
        spends = conn.execute(sa.select(spend_table).where(spend_table.c.status != "cancelled")).mappings().all()
    problems = []
    by_key: dict[tuple[str, ...], list[Any]] = {}
    for s in spends:
        by_key.setdefault((str(s["user"]), str(s["dataset"]), str(s["period"]), str(s["unit"])), []).append(s)
    for row in rows:  # the running total must be what its spends add up to
        if row["counted_to"] is None:
            continue
        account = (str(row["user"]), str(row["dataset"]), str(row["period"]), str(row["unit"]))
        counted = [s for s in by_key.get(account, []) if int(s["id"]) <= int(row["counted_to"])]
        spent = sum((Fraction(str(s["amount"])) for s in counted), Fraction(0))
        delta = sum((Fraction(str(s["delta"])) for s in counted if s["delta"]), Fraction(0))
        if Fraction(str(row["spent"] or 0)) != spent or Fraction(str(row["delta_spent"] or 0)) != delta:
            problems.append(
                f"{row['user']}'s running total for {row['period']} is {row['spent']} {row['unit']} and "
                f"{row['delta_spent']} delta, but its spends add up to {spent} and {delta}"
            )
    for row in rows:
        key = (str(row["user"]), str(row["period"]), str(row["unit"]))
        total = Fraction(str(row["total"]))
        if key in latest:
            if total != Fraction(latest[key]):
                problems.append(
                    f"{row['user']}'s {row['unit']} budget for {row['period']} is {row['total']} in the "
                    f"ledger but {latest[key]} in the audit log"
                )
        else:
            default = default_for(str(row["user"]))
            if default is None or total != default:
                problems.append(
                    f"{row['user']}'s {row['unit']} budget for {row['period']} is {row['total']}, which "
                    "no audit record set and the policy's default is not"
                )
    return problems


def _show(x: Fraction) -> str:
    """A fraction as a person reads it: '1/3 (0.3333)' or '2'."""
    if x.denominator == 1:
        return str(x.numerator)
    return f"{x} ({float(x):.4g})"
