"""Partition specs: the time windows of one grain over a date range, crossed with static
dimensions (:class:`PartitionSpec`, made by :func:`daily`, :func:`weekly`, :func:`monthly`,
:func:`yearly`), and the single partition of a reference stage (:func:`reference`)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, timedelta

from backfill.errors import ConfigError
from backfill.partitions import zones
from backfill.partitions.selection import Selection, select
from backfill.partitions.windows import (
    DAY,
    REFERENCE_KEY,
    Grain,
    Order,
    Partition,
    parse_date,
    parse_grain,
    parse_order,
    window_label,
    window_of,
)

__all__ = [
    "PartitionSpec",
    "ReferenceSpec",
    "daily",
    "hourly",
    "monthly",
    "reference",
    "weekly",
    "yearly",
]

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")

# The days one value of a dimension exists on: its first day, or (first, last), None for
# the spec's own bound.
DimRange = str | date | tuple[str | date | None, str | date | None] | None
# A dimension's values: a list, or a mapping of each value to its own range.
DimValues = Sequence[str] | Mapping[str, DimRange]


class PartitionSpec:
    """Time windows of one grain over ``[start, end]``, crossed with static dimensions.

    Windows follow the calendar (ISO weeks start on Monday) and are clipped to the range,
    so together they cover it exactly, without gaps or overlaps. Iteration is lazy:
    a spec of a million partitions costs nothing until it is walked.

    ``tz`` (an IANA name) is the zone of the days: ``today`` and ``yesterday`` are its
    dates, and a partition's ``begins``/``ends`` its midnights. The hourly grain walks the
    UTC hours of those days (23 on the day clocks go forward, 25 when they go back).
    """

    __slots__ = ("_given", "_given_dims", "dims", "end", "grain", "order", "ranges", "start", "tz")

    def __init__(
        self,
        grain: str | Grain,
        start: str | date,
        end: str | date,
        dims: Mapping[str, DimValues] | None = None,
        *,
        order: str | Order = Order.OLDEST,
        tz: str | None = None,
    ) -> None:
        self.grain = parse_grain(grain)
        if tz is not None:
            zones.zone(tz)
        self.tz = tz
        self._given = (start, end)
        self._given_dims: Mapping[str, DimValues] = dict(dims or {})
        self.start = parse_date(start, what="start", tz=tz)
        self.end = parse_date(end, what="end", tz=tz)
        if self.start > self.end:
            raise ConfigError(
                f"start {self.start} is after end {self.end}; give a start on or before the end"
            )
        self.order = parse_order(order)
        self.dims: dict[str, tuple[str, ...]] = {}
        # (dimension, value) -> the days that value exists on, where it has a range of its own.
        self.ranges: dict[tuple[str, str], tuple[date, date]] = {}
        for name, values in (dims or {}).items():
            if not _NAME.match(name):
                raise ConfigError(
                    f"dimension name {name!r} may use only letters, digits and _ . : -"
                )
            if isinstance(values, str):
                values = [values]
            if isinstance(values, Mapping):
                for value, bounds in values.items():
                    self.ranges[(name, str(value))] = self._value_range(name, str(value), bounds)
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
        if self.grain is Grain.HOUR:
            begin, _ = zones.day_bounds(self.start, tz)
            if begin.minute or begin.second:
                raise ConfigError(
                    f"hourly partitions need a zone whose days begin on a whole UTC hour; "
                    f"{tz} does not: use daily partitions there"
                )

    def _value_range(self, name: str, value: str, bounds: DimRange) -> tuple[date, date]:
        """The days ``value`` of dimension ``name`` exists on: from a start (``"1968-01-01"``)
        or a (start, end) pair, either end None for the spec's own."""
        what = f"the range of {name}={value}"
        if bounds is None or isinstance(bounds, str | date):
            low, high = bounds, None
        elif isinstance(bounds, tuple | list) and len(bounds) == 2:
            low, high = bounds
        else:
            raise ConfigError(f"{what} must be a start date or a (start, end) pair, not {bounds!r}")
        first = self.start if low is None else parse_date(low, what=f"start of {what}")
        last = self.end if high is None else parse_date(high, what=f"end of {what}")
        if first > last:
            raise ConfigError(f"{what} starts {first}, after its end {last}; swap them")
        return first, last

    def __repr__(self) -> str:
        def shown(name: str, values: tuple[str, ...]) -> str:
            if not any((name, v) in self.ranges for v in values):
                return repr(list(values))
            spans = {
                v: "..".join(str(d) for d in self.ranges.get((name, v), (self.start, self.end)))
                for v in values
            }
            return repr(spans)

        dims = "".join(f", {k}={shown(k, v)}" for k, v in self.dims.items())
        tz = f", tz={self.tz!r}" if self.tz is not None else ""
        return f"PartitionSpec({self.grain.value!r}, '{self.start}', '{self.end}'{dims}{tz})"

    def _remade(self, end: str | date, tz: str | None) -> PartitionSpec:
        return PartitionSpec(
            self.grain, self._given[0], end, self._given_dims, order=self.order, tz=tz
        )

    def in_zone(self, tz: str | None) -> PartitionSpec:
        """This spec with ``tz`` as its zone when it names none (its ``today`` and
        ``yesterday`` read again there); itself otherwise."""
        if tz is None or self.tz is not None:
            return self
        return self._remade(self._given[1], tz)

    def through(self, end: str | date) -> PartitionSpec:
        """This spec with its open end at ``end`` (``yesterday`` in its zone, or a date),
        for a keep-current run; the start, grain, dimensions and zone stay."""
        day = parse_date(end, what="--through", tz=self.tz)
        if day < self.start:
            raise ConfigError(
                f"--through {day} is before the partitions' start {self.start}; give a later day"
            )
        return self._remade(day, self.tz)

    def _exists(self, dims: Iterable[tuple[str, str]], wstart: date, wend: date) -> bool:
        """Whether every dimension value of a partition exists during its window."""
        for dim in dims:
            span = self.ranges.get(dim)
            if span is not None and (wend < span[0] or wstart > span[1]):
                return False
        return True

    def windows(self, order: Order | None = None) -> Iterator[tuple[date, date]]:
        """The clipped calendar windows, oldest or newest first."""
        if (order or self.order) is Order.OLDEST:
            cursor = self.start
            while cursor <= self.end:
                _, wend = window_of(cursor, self.grain)
                wend = min(wend, self.end)
                yield cursor, wend
                cursor = wend + DAY
        else:
            cursor = self.end
            while cursor >= self.start:
                wstart, _ = window_of(cursor, self.grain)
                wstart = max(wstart, self.start)
                yield wstart, cursor
                cursor = wstart - DAY

    def window_count(self) -> int:
        if self.grain is Grain.DAY:
            return (self.end - self.start).days + 1
        if self.grain is Grain.HOUR:
            return zones.hours_of_days(self.start, self.end, self.tz)[1]
        return sum(1 for _ in self.windows())

    def __len__(self) -> int:
        if self.ranges:
            return sum(1 for _ in self.partitions())
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
        # Each combination's dims and key suffix, made once for every window.
        combos = [
            (dims, "".join(f"/{n}={v}" for n, v in dims))
            for dims in (
                tuple(zip(names, combo, strict=True))
                for combo in itertools.product(*(self.dims[n] for n in names))
            )
        ]
        for wstart, wend in self.windows(order):
            if selection is not None and (
                (selection.start is not None and wend < selection.start)
                or (selection.end is not None and wstart > selection.end)
            ):
                continue
            if self.grain is Grain.HOUR:
                labels = self._hour_labels(wstart, order or self.order)
            else:
                labels = [window_label(wstart, wend, self.grain)]
            for label in labels:
                for dims, suffix in combos:
                    if self.ranges and not self._exists(dims, wstart, wend):
                        continue
                    part = Partition(label + suffix, wstart, wend, self.grain, dims, self.tz)
                    if selection is None or selection.matches(part):
                        yield part

    def _hour_labels(self, day: date, order: Order) -> list[str]:
        begin, count = zones.hours_of_days(day, day, self.tz)
        labels = [zones.hour_key(begin + i * zones.HOUR) for i in range(count)]
        return labels if order is Order.OLDEST else labels[::-1]

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
        if self.grain is Grain.HOUR:
            hour = zones.parse_hour_key(label)
            if hour is None:
                return None
            day = zones.local_day(hour, self.tz)
            if not self.start <= day <= self.end:
                return None
            return Partition(key, day, day, self.grain, tuple(dims), self.tz)
        window = self._parse_label(label)
        if window is None:
            return None
        start, end = window
        if start < self.start or end > self.end:
            return None
        expect_start, expect_end = window_of(start, self.grain)
        clipped = (max(expect_start, self.start), min(expect_end, self.end))
        if clipped != (start, end) or window_label(start, end, self.grain) != label:
            return None
        if self.ranges and not self._exists(dims, start, end):
            return None
        return Partition(key, start, end, self.grain, tuple(dims), self.tz)

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
                return window_of(date(int(m[1]), int(m[2]), 1), Grain.MONTH)
            m = re.fullmatch(r"(\d{4})", label)
            if not m:
                return None
            return window_of(date(int(m[1]), 1, 1), Grain.YEAR)
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
        return select(self, start=start, end=end, keys=keys, where=where)


def _spec(
    grain: Grain,
    start: str | date,
    end: str | date,
    order: str | Order,
    dims: Mapping[str, DimValues],
    tz: str | None = None,
) -> PartitionSpec:
    return PartitionSpec(grain, start, end, dims, order=order, tz=tz)


def hourly(
    start: str | date,
    end: str | date,
    *,
    order: str | Order = Order.OLDEST,
    tz: str | None = None,
    **dims: DimValues,
) -> PartitionSpec:
    """One partition per hour of the days ``start`` to ``end`` in ``tz``, keyed by the UTC
    hour (``2024-03-31T01``), e.g. ``hourly("2024-03-01", "yesterday", tz="Europe/London")``."""
    return _spec(Grain.HOUR, start, end, order, dims, tz)


def daily(
    start: str | date,
    end: str | date,
    *,
    order: str | Order = Order.OLDEST,
    tz: str | None = None,
    **dims: DimValues,
) -> PartitionSpec:
    """One partition per day, e.g. ``daily("2013-01-01", "2013-12-31", tour=["atp"])``.

    A dimension given as a mapping gives each value its own range, and no partition is
    planned for a value outside it: ``tour={"atp": "1968-01-01", "wta": "1973-01-01"}``
    (from that day), or ``{"itf": ("1990-01-01", "2019-12-31")}``; a window that overlaps
    the range is planned whole, under its usual key.
    """
    return _spec(Grain.DAY, start, end, order, dims, tz)


def weekly(
    start: str | date,
    end: str | date,
    *,
    order: str | Order = Order.OLDEST,
    tz: str | None = None,
    **dims: DimValues,
) -> PartitionSpec:
    """One partition per ISO week (Monday to Sunday), clipped to the range."""
    return _spec(Grain.WEEK, start, end, order, dims, tz)


def monthly(
    start: str | date,
    end: str | date,
    *,
    order: str | Order = Order.OLDEST,
    tz: str | None = None,
    **dims: DimValues,
) -> PartitionSpec:
    """One partition per calendar month, clipped to the range."""
    return _spec(Grain.MONTH, start, end, order, dims, tz)


def yearly(
    start: str | date,
    end: str | date,
    *,
    order: str | Order = Order.OLDEST,
    tz: str | None = None,
    **dims: DimValues,
) -> PartitionSpec:
    """One partition per calendar year, clipped to the range."""
    return _spec(Grain.YEAR, start, end, order, dims, tz)


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
        self.tz = None
        self._given = _EVER
        self._given_dims = {}
        self.ranges = {}

    def in_zone(self, tz: str | None) -> PartitionSpec:
        return self

    def through(self, end: str | date) -> PartitionSpec:
        return self

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
