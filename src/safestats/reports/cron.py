"""Five-field cron expressions (minute hour day-of-month month day-of-week), enough for schedules.

Fields take ``*``, numbers, ranges ``a-b``, lists ``a,b`` and steps ``*/n`` or ``a-b/n``.
Day of week: 0-6, Sunday is 0 (7 is Sunday too). As in cron, when both day fields are
restricted a time matches if either does.

>>> due("0 6 * * 1", dt.datetime(2017, 1, 16, 6, 0))  # a Monday
True
"""

from __future__ import annotations

import datetime as dt

from safestats.errors import ConfigError

__all__ = ["due", "parse"]

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES = ("minute", "hour", "day of month", "month", "day of week")


def _field(text: str, low: int, high: int, name: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            start, stop = int(a), int(b)
        else:
            start = stop = int(base)
            if step_text:
                stop = high
        if not (low <= start <= stop <= high):
            raise ConfigError(f"cron {name} {part!r} is outside {low}-{high}")
        values.update(range(start, stop + 1, step))
    return frozenset(values)


def parse(expression: str) -> tuple[frozenset[int], ...]:
    """The sets of minutes, hours, days, months and weekdays an expression allows."""
    fields = expression.split()
    if len(fields) != 5:
        raise ConfigError(f"cron expression {expression!r} needs five fields: minute hour day month weekday")
    try:
        parsed = tuple(_field(f, lo, hi, n) for f, (lo, hi), n in zip(fields, _RANGES, _NAMES, strict=True))
    except ValueError:
        raise ConfigError(f"cron expression {expression!r} is not valid") from None
    weekdays = frozenset(d % 7 for d in parsed[4])
    return (*parsed[:4], weekdays)


def due(expression: str, when: dt.datetime) -> bool:
    """Whether ``expression`` fires in the minute of ``when``."""
    minutes, hours, days, months, weekdays = parse(expression)
    fields = expression.split()
    day_ok = when.day in days
    weekday_ok = (when.isoweekday() % 7) in weekdays
    if fields[2] != "*" and fields[4] != "*":
        day_match = day_ok or weekday_ok
    else:
        day_match = day_ok and weekday_ok
    return when.minute in minutes and when.hour in hours and when.month in months and day_match
