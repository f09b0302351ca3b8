"""Partitions: time windows over a date range, crossed with static dimensions.

A partition is the unit of work and of record. Its key is stable and readable:

* ``2013-01-01`` (day), ``2013-W01`` (ISO week), ``2013-01`` (month), ``2013`` (year);
* a window clipped by the range's start or end names its days: ``2013-01-15..2013-01-31``;
* static dimensions follow in declaration order: ``2013-01-01/tour=atp/region=gb``.

Example::

    >>> spec = daily("2013-01-01", "2013-01-03", tour=["atp", "wta"])
    >>> [p.key for p in spec][:3]
    ['2013-01-01/tour=atp', '2013-01-01/tour=wta', '2013-01-02/tour=atp']
    >>> len(spec)
    6
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from backfill.errors import ConfigError

__all__ = [
    "REFERENCE_KEY",
    "Grain",
    "Order",
    "Partition",
    "PartitionSpec",
    "ReferenceSpec",
    "Selection",
    "daily",
    "monthly",
    "parse_date",
    "reference",
    "weekly",
    "yearly",
]

_DAY = timedelta(days=1)
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


class Grain(StrEnum):
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


def parse_date(value: str | date, *, what: str = "date") -> date:
    """Parse ``YYYY-MM-DD``, ``today`` or ``yesterday`` (UTC) into a date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = value.strip().lower()
    today = datetime.now(UTC).date()
    if text == "today":
        return today
    if text == "yesterday":
        return today - _DAY
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a valid date; write it as YYYY-MM-DD") from None


def _window_of(day: date, grain: Grain) -> tuple[date, date]:
    """The calendar window of ``grain`` that contains ``day`` (inclusive bounds)."""
    if grain is Grain.DAY:
        return day, day
    if grain is Grain.WEEK:
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=6)
    if grain is Grain.MONTH:
        start = day.replace(day=1)
        nxt = (start + timedelta(days=32)).replace(day=1)
        return start, nxt - _DAY
    start = day.replace(month=1, day=1)
    return start, day.replace(month=12, day=31)


def _label(start: date, end: date, grain: Grain) -> str:
    if grain is Grain.ALL:
        return REFERENCE_KEY
    full_start, full_end = _window_of(start, grain)
    if (full_start, full_end) != (start, end):
        return f"{start.isoformat()}..{end.isoformat()}"
    if grain is Grain.DAY:
        return start.isoformat()
    if grain is Grain.WEEK:
        iso = start.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    if grain is Grain.MONTH:
        return f"{start.year:04d}-{start.month:02d}"
    return f"{start.year:04d}"


@dataclass(frozen=True, slots=True)
class Partition:
    """One unit of work: a window ``[start, end]`` (inclusive days) plus dimension values."""

    key: str
    start: date
    end: date
    grain: Grain
    dims: tuple[tuple[str, str], ...] = ()

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
        if self.grain is Grain.ALL:
            return True
        return _window_of(self.start, self.grain) == (self.start, self.end)

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


@dataclass(frozen=True, slots=True)
class Selection:
    """A subset of a job's partitions chosen on the command line.

    Every given criterion must hold: the window overlaps ``[start, end]``, the key is one
    of ``keys`` (when any are given), and each named dimension takes one of its values.
    """

    start: date | None = None
    end: date | None = None
    keys: frozenset[str] = frozenset()
    dims: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def is_everything(self) -> bool:
        return self.start is None and self.end is None and not self.keys and not self.dims

    def matches(self, partition: Partition) -> bool:
        if self.start is not None and partition.end < self.start:
            return False
        if self.end is not None and partition.start > self.end:
            return False
        if self.keys and partition.key not in self.keys:
            return False
        values = partition.dim_map
        return all(values.get(dim) in allowed for dim, allowed in self.dims.items())

    def describe(self) -> str:
        """The selection in words, e.g. ``from 2013-01-02, tour=atp,wta`` or ``everything``."""
        parts: list[str] = []
        if self.start and self.end:
            parts.append(f"{self.start} to {self.end}")
        elif self.start:
            parts.append(f"from {self.start}")
        elif self.end:
            parts.append(f"until {self.end}")
        if self.keys:
            n = len(self.keys)
            parts.append(f"{n:,} partition key" + ("" if n == 1 else "s"))
        for dim, allowed in self.dims.items():
            parts.append(f"{dim}={','.join(sorted(allowed))}")
        return ", ".join(parts) or "everything"


class PartitionSpec:
    """Time windows of one grain over ``[start, end]``, crossed with static dimensions.

    Windows follow the calendar (ISO weeks start on Monday) and are clipped to the range,
    so together they cover it exactly, without gaps or overlaps. Iteration is lazy:
    a spec of a million partitions costs nothing until it is walked.
    """

    __slots__ = ("dims", "end", "grain", "order", "start")

    def __init__(
        self,
        grain: str | Grain,
        start: str | date,
        end: str | date,
        dims: Mapping[str, Sequence[str]] | None = None,
        *,
        order: str | Order = Order.OLDEST,
    ) -> None:
        self.grain = parse_grain(grain)
        self.start = parse_date(start, what="start")
        self.end = parse_date(end, what="end")
        if self.start > self.end:
            raise ConfigError(
                f"start {self.start} is after end {self.end}; give a start on or before the end"
            )
        self.order = parse_order(order)
        self.dims: dict[str, tuple[str, ...]] = {}
        for name, values in (dims or {}).items():
            if not _NAME.match(name):
                raise ConfigError(
                    f"dimension name {name!r} may use only letters, digits and _ . : -"
                )
            if isinstance(values, str):
                values = [values]
            vals = tuple(str(v) for v in values)
            if not vals:
                raise ConfigError(f"dimension {name!r} has no values; give at least one")
            for v in vals:
                if not _NAME.match(v):
                    raise ConfigError(
                        f"value {v!r} of dimension {name!r} may use only letters, digits "
                        "and _ . : -"
                    )
            if len(set(vals)) != len(vals):
                raise ConfigError(f"dimension {name!r} lists a value twice")
            self.dims[name] = vals

    def __repr__(self) -> str:
        dims = "".join(f", {k}={list(v)}" for k, v in self.dims.items())
        return f"PartitionSpec({self.grain.value!r}, '{self.start}', '{self.end}'{dims})"

    def windows(self, order: Order | None = None) -> Iterator[tuple[date, date]]:
        """The clipped calendar windows, oldest or newest first."""
        if (order or self.order) is Order.OLDEST:
            cursor = self.start
            while cursor <= self.end:
                _, wend = _window_of(cursor, self.grain)
                wend = min(wend, self.end)
                yield cursor, wend
                cursor = wend + _DAY
        else:
            cursor = self.end
            while cursor >= self.start:
                wstart, _ = _window_of(cursor, self.grain)
                wstart = max(wstart, self.start)
                yield wstart, cursor
                cursor = wstart - _DAY

    def window_count(self) -> int:
        if self.grain is Grain.DAY:
            return (self.end - self.start).days + 1
        return sum(1 for _ in self.windows())

    def __len__(self) -> int:
        n = self.window_count()
        for values in self.dims.values():
            n *= len(values)
        return n

    def __iter__(self) -> Iterator[Partition]:
        return self.partitions()

    def partitions(
        self, selection: Selection | None = None, order: Order | None = None
    ) -> Iterator[Partition]:
        """Every partition (or the selected ones), window by window."""
        names = list(self.dims)
        combos = list(itertools.product(*(self.dims[n] for n in names)))
        for wstart, wend in self.windows(order):
            if selection is not None and (
                (selection.start is not None and wend < selection.start)
                or (selection.end is not None and wstart > selection.end)
            ):
                continue
            label = _label(wstart, wend, self.grain)
            for combo in combos:
                dims = tuple(zip(names, combo, strict=True))
                key = label + "".join(f"/{n}={v}" for n, v in dims)
                part = Partition(key, wstart, wend, self.grain, dims)
                if selection is None or selection.matches(part):
                    yield part

    def get(self, key: str) -> Partition | None:
        """The partition with this key, or None when the spec has no such partition."""
        label, *dim_parts = key.split("/")
        dims: list[tuple[str, str]] = []
        for part in dim_parts:
            name, sep, value = part.partition("=")
            if not sep:
                return None
            dims.append((name, value))
        if [n for n, _ in dims] != list(self.dims):
            return None
        if any(v not in self.dims[n] for n, v in dims):
            return None
        window = self._parse_label(label)
        if window is None:
            return None
        start, end = window
        if start < self.start or end > self.end:
            return None
        expect_start, expect_end = _window_of(start, self.grain)
        clipped = (max(expect_start, self.start), min(expect_end, self.end))
        if clipped != (start, end) or _label(start, end, self.grain) != label:
            return None
        return Partition(key, start, end, self.grain, tuple(dims))

    def _parse_label(self, label: str) -> tuple[date, date] | None:
        try:
            if ".." in label:
                a, b = label.split("..", 1)
                return date.fromisoformat(a), date.fromisoformat(b)
            if self.grain is Grain.DAY:
                d = date.fromisoformat(label)
                return d, d
            if self.grain is Grain.WEEK:
                m = re.fullmatch(r"(\d{4})-W(\d{2})", label)
                if not m:
                    return None
                start = date.fromisocalendar(int(m[1]), int(m[2]), 1)
                return start, start + timedelta(days=6)
            if self.grain is Grain.MONTH:
                m = re.fullmatch(r"(\d{4})-(\d{2})", label)
                if not m:
                    return None
                return _window_of(date(int(m[1]), int(m[2]), 1), Grain.MONTH)
            m = re.fullmatch(r"(\d{4})", label)
            if not m:
                return None
            return _window_of(date(int(m[1]), 1, 1), Grain.YEAR)
        except ValueError:
            return None

    def example_key(self) -> str:
        first = next(self.partitions())
        return first.key

    def selection(
        self,
        *,
        start: str | date | None = None,
        end: str | date | None = None,
        keys: Iterable[str] = (),
        where: Iterable[str] = (),
    ) -> Selection:
        """Build and validate a :class:`Selection` from command-line style input.

        ``where`` items read ``dim=value`` or ``dim=v1,v2``; repeating a dimension adds values.
        """
        sel_start = parse_date(start, what="--from") if start is not None else None
        sel_end = parse_date(end, what="--to") if end is not None else None
        if sel_start and sel_end and sel_start > sel_end:
            raise ConfigError(
                f"--from {sel_start} is after --to {sel_end}; give a --from on or before --to"
            )
        key_set = frozenset(keys)
        for key in sorted(key_set):
            if self.get(key) is None:
                raise ConfigError(
                    f"unknown partition {key!r}; keys of this job look like "
                    f"{self.example_key()!r} and lie within {self.start}..{self.end}"
                )
        dims: dict[str, set[str]] = {}
        for item in where:
            name, sep, values = item.partition("=")
            name = name.strip()
            if not sep or not name or not values.strip():
                raise ConfigError(f"--where {item!r} must read DIMENSION=VALUE[,VALUE...]")
            if name not in self.dims:
                known = ", ".join(self.dims) or "none"
                raise ConfigError(f"unknown dimension {name!r} in --where; this job has: {known}")
            for value in (v.strip() for v in values.split(",")):
                if value not in self.dims[name]:
                    raise ConfigError(
                        f"dimension {name!r} has no value {value!r}; "
                        f"use one of {', '.join(self.dims[name])}"
                    )
                dims.setdefault(name, set()).add(value)
        selection = Selection(
            sel_start, sel_end, key_set, {k: frozenset(v) for k, v in dims.items()}
        )
        if not selection.is_everything and next(self.partitions(selection), None) is None:
            raise ConfigError(
                f"no partition matches the selection ({selection.describe()}); "
                f"this job covers {self.start}..{self.end}"
            )
        return selection


def _spec(
    grain: Grain,
    start: str | date,
    end: str | date,
    order: str | Order,
    dims: Mapping[str, Sequence[str]],
) -> PartitionSpec:
    return PartitionSpec(grain, start, end, dims, order=order)


def daily(
    start: str | date,
    end: str | date,
    *,
    order: str | Order = Order.OLDEST,
    **dims: Sequence[str],
) -> PartitionSpec:
    """One partition per day, e.g. ``daily("2013-01-01", "2013-12-31", tour=["atp"])``."""
    return _spec(Grain.DAY, start, end, order, dims)


def weekly(
    start: str | date,
    end: str | date,
    *,
    order: str | Order = Order.OLDEST,
    **dims: Sequence[str],
) -> PartitionSpec:
    """One partition per ISO week (Monday to Sunday), clipped to the range."""
    return _spec(Grain.WEEK, start, end, order, dims)


def monthly(
    start: str | date,
    end: str | date,
    *,
    order: str | Order = Order.OLDEST,
    **dims: Sequence[str],
) -> PartitionSpec:
    """One partition per calendar month, clipped to the range."""
    return _spec(Grain.MONTH, start, end, order, dims)


def yearly(
    start: str | date,
    end: str | date,
    *,
    order: str | Order = Order.OLDEST,
    **dims: Sequence[str],
) -> PartitionSpec:
    """One partition per calendar year, clipped to the range."""
    return _spec(Grain.YEAR, start, end, order, dims)


REFERENCE_KEY = "all"
_EVER = (date(1, 1, 1), date(9999, 12, 31))


class ReferenceSpec(PartitionSpec):
    """The single partition ``all`` of an unpartitioned stage (a "master": courses,
    bookmakers, players). Its window spans every date, so every selection includes it."""

    __slots__ = ()

    def __init__(self) -> None:
        self.grain = Grain.ALL
        self.start, self.end = _EVER
        self.order = Order.OLDEST
        self.dims = {}

    def __repr__(self) -> str:
        return "ReferenceSpec()"

    def windows(self, order: Order | None = None) -> Iterator[tuple[date, date]]:
        yield _EVER

    def window_count(self) -> int:
        return 1

    def get(self, key: str) -> Partition | None:
        return self.the_partition if key == REFERENCE_KEY else None

    @property
    def the_partition(self) -> Partition:
        return Partition(REFERENCE_KEY, *_EVER, Grain.ALL)


def reference() -> ReferenceSpec:
    """The partitions of an unpartitioned (reference) stage: just one, keyed ``all``."""
    return ReferenceSpec()
