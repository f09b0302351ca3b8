"""The calendar of partitions: grains and orders, dates as users write them, the window
of a grain that holds a day, the key of a window, and the :class:`Partition` value."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from backfill._quickinit import quick_init
from backfill.errors import ConfigError
from backfill.partitions import zones

__all__ = [
    "NO_PARAMS",
    "REFERENCE_KEY",
    "Grain",
    "Order",
    "Partition",
    "parse_date",
    "parse_grain",
    "parse_order",
    "window_label",
    "window_of",
]

DAY = timedelta(days=1)


class _NoParams(Mapping[str, Any]):
    """The params of a partition the calendar declares (only discovered ones carry any):
    one shared empty mapping, which pickles by name (partitions go to worker processes)."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"

    def __reduce__(self) -> str:
        return "NO_PARAMS"

    # Immutable, so hashable: a dataclass default as it is, with no factory to call for
    # each of a plan's partitions.
    def __hash__(self) -> int:
        return 0


NO_PARAMS: Mapping[str, Any] = _NoParams()
# The key of the single partition of an unpartitioned (reference) stage.
REFERENCE_KEY = "all"


class Grain(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"
    # The single partition of an unpartitioned (reference) stage.
    ALL = "all"


class Order(StrEnum):
    OLDEST = "oldest"
    NEWEST = "newest"


def parse_grain(value: str | Grain) -> Grain:
    try:
        grain = Grain(str(value).lower())
        if grain is Grain.ALL:
            raise ValueError(value)
        return grain
    except ValueError:
        choices = ", ".join(g.value for g in Grain if g is not Grain.ALL)
        raise ConfigError(f"unknown grain {value!r}; use one of {choices}") from None


def parse_order(value: str | Order) -> Order:
    try:
        return Order(str(value).lower())
    except ValueError:
        raise ConfigError(f"unknown order {value!r}; use 'oldest' or 'newest'") from None


def parse_date(value: str | date, *, what: str = "date", tz: str | None = None) -> date:
    """Parse ``YYYY-MM-DD``, ``today`` or ``yesterday`` (in ``tz``, UTC when None) into a
    date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = value.strip().lower()
    if text in ("today", "yesterday"):
        today = zones.today(tz)
        return today if text == "today" else today - DAY
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a valid date; write it as YYYY-MM-DD") from None


def window_of(day: date, grain: Grain) -> tuple[date, date]:
    """The calendar window of ``grain`` that contains ``day`` (inclusive bounds)."""
    if grain is Grain.DAY or grain is Grain.HOUR:
        return day, day
    if grain is Grain.WEEK:
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=6)
    if grain is Grain.MONTH:
        start = day.replace(day=1)
        nxt = (start + timedelta(days=32)).replace(day=1)
        return start, nxt - DAY
    start = day.replace(month=1, day=1)
    return start, day.replace(month=12, day=31)


def window_label(start: date, end: date, grain: Grain) -> str:
    """The key of a window without dimensions: ``2013-W01``, or its days when the range cuts it."""
    if grain is Grain.ALL:
        return REFERENCE_KEY
    full_start, full_end = window_of(start, grain)
    if (full_start, full_end) != (start, end):
        return f"{start.isoformat()}..{end.isoformat()}"
    if grain is Grain.DAY or grain is Grain.HOUR:
        return start.isoformat()
    if grain is Grain.WEEK:
        iso = start.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    if grain is Grain.MONTH:
        return f"{start.year:04d}-{start.month:02d}"
    return f"{start.year:04d}"


# Made per partition: quick_init sets its slots (see backfill._quickinit).
@quick_init
@dataclass(frozen=True, slots=True)
class Partition:
    """One unit of work: a window ``[start, end]`` (inclusive days) plus dimension values.

    ``tz`` is the zone the days are in (UTC when None); an hourly partition's days are
    the day its hour falls on there, and its key names the UTC hour.
    """

    key: str
    start: date
    end: date
    grain: Grain
    dims: tuple[tuple[str, str], ...] = ()
    tz: str | None = None
    # What the partition that discovered this one found out about it (see
    # backfill.partitions.discovered); empty for partitions of the calendar.
    params: Mapping[str, Any] = field(default=NO_PARAMS, compare=False, hash=False, repr=False)

    @property
    def begins(self) -> datetime:
        """Where the window begins, as an aware UTC time (midnight of ``start`` in ``tz``,
        or the hour of an hourly partition)."""
        if self.grain is Grain.HOUR:
            hour = zones.parse_hour_key(self.key.split("/", 1)[0])
            if hour is not None:
                return hour
        return zones.day_bounds(self.start, self.tz)[0]

    @property
    def ends(self) -> datetime:
        """Where the window ends (exclusive), as an aware UTC time: a day in a zone whose
        clocks change that day lasts 23 or 25 hours."""
        if self.grain is Grain.HOUR:
            return self.begins + zones.HOUR
        return zones.day_bounds(self.end, self.tz)[1]

    @property
    def date(self) -> date:
        """The first day of the window (the day itself for a daily partition)."""
        return self.start

    @property
    def days(self) -> int:
        """How many days the window holds."""
        return (self.end - self.start).days + 1

    @property
    def whole(self) -> bool:
        """Whether the window is a whole calendar day, week, month or year; False for
        one cut by the range's start or end (its key then names its days)."""
        if self.grain is Grain.ALL or self.grain is Grain.HOUR:
            return True
        return window_of(self.start, self.grain) == (self.start, self.end)

    def __getitem__(self, name: str) -> str:
        for dim, value in self.dims:
            if dim == name:
                return value
        raise KeyError(name)

    def get(self, name: str, default: str | None = None) -> str | None:
        for dim, value in self.dims:
            if dim == name:
                return value
        return default

    @property
    def dim_map(self) -> dict[str, str]:
        return dict(self.dims)
