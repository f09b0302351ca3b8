"""Time zones of partitions: what "now", "today" and "yesterday" are in a zone, where a
zone's day begins and ends (23, 24 or 25 hours when the clocks change), and the keys of
hourly partitions.

Hourly keys name the UTC hour (``2024-03-31T01`` is 01:00-02:00 UTC): they never skip nor
repeat when a zone's clocks change, so a key means one hour for ever. The zone decides
which hours make up a day: a London day in spring holds 23 of them, in autumn 25.

``BACKFILL_NOW`` (an ISO 8601 time with its offset, e.g. ``2024-04-02T06:15:00+01:00``)
stands in for the clock when set: tests and rehearsals of a daily run use it to be "on"
another day. It is read at every call, never cached.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backfill.errors import ConfigError

__all__ = [
    "HOUR",
    "NOW_ENV",
    "day_bounds",
    "hour_key",
    "hours_of_days",
    "local_day",
    "now",
    "parse_hour_key",
    "today",
    "zone",
]

HOUR = timedelta(hours=1)
NOW_ENV = "BACKFILL_NOW"
_HOUR_KEY = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})")


def zone(name: str | None) -> tzinfo:
    """The IANA zone ``name`` (``Europe/London``), UTC for None."""
    if name is None or name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"time zone {name!r} is not known; give an IANA name such as 'Europe/London' "
            "or 'America/New_York'"
        ) from None


def now() -> datetime:
    """The current time (aware, UTC), or the time ``BACKFILL_NOW`` names."""
    fixed = os.environ.get(NOW_ENV, "").strip()
    if not fixed:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(fixed.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ConfigError(
            f"{NOW_ENV}={fixed!r} is not a time with an offset; write it like "
            "2024-04-02T06:15:00+01:00 or unset it"
        )
    return when.astimezone(UTC)


def today(tz: str | None = None) -> date:
    """Today's date in ``tz`` (UTC when None)."""
    return now().astimezone(zone(tz)).date()


def local_day(moment: datetime, tz: str | None) -> date:
    """The date ``moment`` falls on in ``tz``."""
    return moment.astimezone(zone(tz)).date()


def day_bounds(day: date, tz: str | None) -> tuple[datetime, datetime]:
    """Where ``day`` begins and where the next day begins in ``tz``, as UTC times.

    Example: ``day_bounds(date(2024, 3, 31), "Europe/London")`` spans 23 hours.
    """
    here = zone(tz)

    def midnight(d: date) -> datetime:
        # A zone may skip midnight itself (clocks moved at 00:00): the day then begins
        # at the first instant that exists, which fold=0 on a skipped time gives after
        # the round trip through UTC.
        local = datetime(d.year, d.month, d.day, tzinfo=here)
        return local.astimezone(UTC)

    return midnight(day), midnight(day + timedelta(days=1))


def hours_of_days(first: date, last: date, tz: str | None) -> tuple[datetime, int]:
    """The first UTC hour of ``first`` in ``tz`` and how many hours the days up to
    ``last`` hold."""
    begin, _ = day_bounds(first, tz)
    _, end = day_bounds(last, tz)
    return begin, int((end - begin) // HOUR)


def hour_key(moment: datetime) -> str:
    """The key of the UTC hour that holds ``moment``: ``2024-03-31T01``."""
    utc = moment.astimezone(UTC)
    return f"{utc.date().isoformat()}T{utc.hour:02d}"


def parse_hour_key(label: str) -> datetime | None:
    """The UTC start of the hour an hourly key names, or None when it names none."""
    m = _HOUR_KEY.fullmatch(label)
    if m is None:
        return None
    try:
        day = date.fromisoformat(m[1])
    except ValueError:
        return None
    hour = int(m[2])
    if hour > 23:
        return None
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
