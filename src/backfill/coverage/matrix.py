"""The coverage matrix: partitions put in buckets of a day, a month or a year, each cell
showing the worst state of the partitions that start in it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, timedelta

from backfill.coverage.model import SEVERITY, Coverage, PartitionState, State

Bucket = str  # "day", "month" or "year"


def pick_bucket(coverage: Coverage) -> Bucket:
    """Days for up to about a year, months up to 30 years, years beyond."""
    span = coverage.span()
    if span is None:
        return "year"
    days = (span[1] - span[0]).days + 1
    if days <= 400:
        return "day"
    if days <= 366 * 30:
        return "month"
    return "year"


def worst(states: Iterable[State]) -> State | None:
    present = set(states)
    return next((s for s in SEVERITY if s in present), None)


def rows(coverage: Coverage, bucket: Bucket) -> list[tuple[str, str, list[State | None]]]:
    """The matrix: (stage and dims, period, one cell per column) per row.

    ``day``: a row per month, 31 columns; ``month``: a row per year, 12 columns;
    ``year``: one row, a column per year. A cell holds the worst state of the
    partitions that start in it (None: no partition starts there).
    """
    span = coverage.span()
    result: list[tuple[str, str, list[State | None]]] = []
    for stage in coverage.stages:
        items = coverage.partitions[stage.name]
        if stage.reference:
            result.append((stage.name, "all", [worst(p.state for p in items)]))
            continue
        by_dims: dict[tuple[tuple[str, str], ...], list[PartitionState]] = defaultdict(list)
        for p in items:
            by_dims[p.dims].append(p)
        for dims, parts in by_dims.items():
            name = " ".join([stage.name, *(v for _, v in dims)])
            cells: dict[tuple[str, int], list[State]] = defaultdict(list)
            for p in parts:
                period, column = _place(p.start, bucket, span)
                cells[(period, column)].append(p.state)
            for period, width in _periods(span, bucket):
                row = [
                    worst(cells[(period, c)]) if (period, c) in cells else None
                    for c in range(width)
                ]
                result.append((name, period, row))
    return result


def _place(day: date, bucket: Bucket, span: tuple[date, date] | None) -> tuple[str, int]:
    if bucket == "day":
        return f"{day.year:04d}-{day.month:02d}", day.day - 1
    if bucket == "month":
        return f"{day.year:04d}", day.month - 1
    return "years", day.year - (span[0].year if span else day.year)


def _periods(span: tuple[date, date] | None, bucket: Bucket) -> list[tuple[str, int]]:
    if span is None:
        return []
    first, last = span
    if bucket == "day":
        periods = []
        cursor = first.replace(day=1)
        while cursor <= last:
            periods.append((f"{cursor.year:04d}-{cursor.month:02d}", 31))
            cursor = (cursor + timedelta(days=32)).replace(day=1)
        return periods
    if bucket == "month":
        return [(f"{y:04d}", 12) for y in range(first.year, last.year + 1)]
    return [("years", last.year - first.year + 1)]


def column_labels(coverage: Coverage, bucket: Bucket) -> list[str]:
    """Headers of the matrix's columns."""
    if bucket == "day":
        return [f"{d}" for d in range(1, 32)]
    if bucket == "month":
        return ["J", "F", "M", "A", "M", "J", "J", "A", "S", "O", "N", "D"]
    span = coverage.span()
    return [str(y) for y in range(span[0].year, span[1].year + 1)] if span else []
