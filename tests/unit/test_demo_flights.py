"""The flights demo job's own helpers: its partition check and the daily-totals cache."""

from __future__ import annotations

import sqlite3
from datetime import date
from types import SimpleNamespace

from backfill.context import RunCache
from backfill.demo.flights import _day_totals, _same_day
from backfill.partitions import daily

DAY = next(iter(daily("2013-01-02", "2013-01-02")))


def test_same_day_counts_the_records_of_another_day():
    """The check passes a day's own records and names how many belong to another day."""
    own = {"year": 2013, "month": 1, "day": 2}
    other = {"year": 2013, "month": 2, "day": 1}
    assert _same_day([own, own], DAY) is None
    assert _same_day([], DAY) is None
    assert _same_day([own, other, other], DAY) == "2 record(s) of another day"


def test_day_totals_are_read_once_per_run():
    """A day's per-origin totals come from the flights table once, then from the run cache."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE flights (year, month, day, origin, dep_delay)")
    conn.executemany(
        "INSERT INTO flights VALUES (2013, 1, 2, ?, ?)", [("JFK", 5), ("JFK", None), ("EWR", 1)]
    )
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    ctx = SimpleNamespace(cache=RunCache())
    first = _day_totals(ctx, conn, date(2013, 1, 2))
    again = _day_totals(ctx, conn, date(2013, 1, 2))
    assert sorted(first) == [("EWR", 1, 1, 1), ("JFK", 2, 5, 1)]
    assert again == first
    assert len(statements) == 1
