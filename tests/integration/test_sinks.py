"""Table sinks against a real SQLite file and the real PostgreSQL: every mode, re-runs,
SIGKILL and resume, concurrent runs, bad records and schema drift."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfill import Context, Job, Partition, Status, daily
from backfill.ledger.sqlite import SQLiteLedger
from backfill.runner import ExitCode
from backfill.sinks import Rows, Sink, table
from backfill.testing import run_job

POSTGRES_URL = os.environ.get(
    "BACKFILL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MODES = ["upsert", "replace-partition", "append"]


def _postgres_available() -> str | None:
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at {POSTGRES_URL} ({' '.join(str(exc).split())[:120]})"
    return None


class Destination:
    """One place to write tables to, with a way to read them back."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp_path / 'out.db'}"
            self.prefix = ""
        elif kind == "duckdb":
            self.url = f"duckdb:///{tmp_path / 'out.duckdb'}"
            self.prefix = ""
        else:
            self.url = POSTGRES_URL
            self.prefix = f"bf_{uuid.uuid4().hex[:10]}."

    def table(self, name: str, **options: Any) -> Sink:
        return table(self.url, self.prefix + name, **options)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        sql = sql.replace("{t:", "{").format_map(_Tables(self.prefix))
        if self.kind == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                return conn.execute(sql).fetchall()
        if self.kind == "duckdb":
            import duckdb

            with duckdb.connect(self.url.removeprefix("duckdb:///")) as conn:
                return conn.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(POSTGRES_URL) as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]

    def drop(self) -> None:
        if self.kind == "postgresql" and self.prefix:
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {self.prefix[:-1]} CASCADE")


class _Tables(dict[str, str]):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, key: str) -> str:
        return self.prefix + key


@pytest.fixture(params=["sqlite", "postgresql", "duckdb"])
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    if request.param == "postgresql":
        reason = _postgres_available()
        if reason is not None:
            if os.environ.get("CI"):
                pytest.fail(f"CI needs PostgreSQL: {reason}")
            pytest.skip(reason)
    destination = Destination(request.param, tmp_path)
    yield destination
    destination.drop()


def make_job(sink: Sink, days: int = 10, per_day: int = 3, version: list[int] | None = None) -> Job:
    job = Job("sinks", partitions=daily("2013-01-01", f"2013-01-{days:02d}"), sink=sink)
    ver = version if version is not None else [1]

    @job.stage(concurrency=4)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"day": partition.key, "n": n, "value": n * 1.5 + ver[0]} for n in range(per_day)]

    return job


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_writes_exact_rows_and_a_rerun_changes_nothing(
    dest: Destination, tmp_path: Path, mode: str
) -> None:
    """A clean run writes exactly the rows; re-running every partition leaves the same count
    (upsert and replace update the values; append does not double them)."""
    key = ["day", "n"] if mode != "append" else None
    sink = dest.table("t", key=key, mode=mode)
    version = [1]
    job = make_job(sink, version=version)
    ledger = SQLiteLedger(tmp_path / "state.db")
    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert dest.query("SELECT count(*), sum(value) FROM {t}") == [(30, 30 * 1 + 10 * 4.5)]
    version[0] = 2
    ledger.requeue("sinks", ["fetch"], [Status.DONE])
    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert dest.query("SELECT count(*), sum(value) FROM {t}") == [(30, 30 * 2 + 10 * 4.5)]
    assert dest.query("SELECT count(*) FROM (SELECT DISTINCT day, n FROM {t}) d") == [(30,)]
    ledger.close()


def test_replace_partition_removes_rows_the_source_no_longer_has(
    dest: Destination, tmp_path: Path
) -> None:
    """Replace-partition deletes a partition's old rows, so shrunk days shrink in the table."""
    sink = dest.table("t", key=["day", "n"], mode="replace-partition")
    ledger = SQLiteLedger(tmp_path / "state.db")
    assert run_job(make_job(sink, per_day=5), ledger).exit_code == ExitCode.OK
    ledger.requeue("sinks", ["fetch"], [Status.DONE])
    assert run_job(make_job(sink, per_day=2), ledger).exit_code == ExitCode.OK
    assert dest.query("SELECT count(*) FROM {t}") == [(20,)]
    ledger.close()


def test_replace_partition_by_a_date_column_of_the_records(
    dest: Destination, tmp_path: Path
) -> None:
    """With partition_column naming a date field, rows loaded earlier for that day are replaced."""
    sink = dest.table("t", mode="replace-partition", partition_column="day")
    job = Job("bydate", partitions=daily("2013-01-01", "2013-01-03"), sink=sink)
    count = [3]

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"day": partition.date, "n": n} for n in range(count[0])]

    ledger = SQLiteLedger(tmp_path / "state.db")
    assert run_job(job, ledger).exit_code == ExitCode.OK
    count[0] = 1
    ledger.requeue("bydate", ["fetch"], [Status.DONE])
    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert dest.query("SELECT count(*) FROM {t}") == [(3,)]
    ledger.close()


def test_a_missing_key_or_a_type_clash_fails_only_that_partition_and_writes_none_of_it(
    dest: Destination, tmp_path: Path
) -> None:
    """Bad records fail their own partition with table and field named; nothing of that
    partition is committed, and every other partition is written."""
    sink = dest.table(
        "t", key=["day", "n"], columns={"day": "text", "n": "integer", "v": "integer"}
    )
    job = Job("bad", partitions=daily("2013-01-01", "2013-01-06"), sink=sink)

    @job.stage(concurrency=6)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = [{"day": partition.key, "n": n, "v": n} for n in range(4)]
        if partition.key == "2013-01-02":
            records[2] = {"day": partition.key, "v": 1}
        if partition.key == "2013-01-04":
            records[3]["v"] = "not a number"
        return records

    ledger = SQLiteLedger(tmp_path / "state.db")
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.FAILED
    failed = {e.key: e for e in ledger.entries("bad", "fetch", status=Status.FAILED)}
    assert set(failed) == {"2013-01-02", "2013-01-04"}
    missing, clash = failed["2013-01-02"], failed["2013-01-04"]
    assert missing.error_category == "missing_key"
    assert "'n'" in (missing.error_message or "") and "t" in (missing.error_message or "")
    assert clash.error_category == "type_clash"
    assert "'v'" in (clash.error_message or "") and "table t" in (clash.error_message or "")
    assert "\n" not in (clash.error_message or "")
    days = dest.query("SELECT day, count(*) FROM {t} GROUP BY day ORDER BY day")
    assert days == [(d, 4) for d in ("2013-01-01", "2013-01-03", "2013-01-05", "2013-01-06")]
    ledger.close()


@pytest.mark.parametrize("policy", ["add", "fail"])
def test_a_new_field_adds_a_column_or_fails_per_policy(
    dest: Destination, tmp_path: Path, policy: str
) -> None:
    """Schema drift: a field that appears later adds a nullable column, or fails its partition."""
    sink = dest.table("t", key=["day"], on_new_field=policy)
    ledger = SQLiteLedger(tmp_path / "state.db")

    def drifting(last_day: int) -> Job:
        job = Job("drift", partitions=daily("2013-01-01", f"2013-01-{last_day:02d}"), sink=sink)

        @job.stage(concurrency=1)
        async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
            record: dict[str, Any] = {"day": partition.key, "a": 1}
            if partition.start.day >= 3:
                record["b"] = "new"
            return [record]

        return job

    # The table is created from the first days; the field appears afterwards.
    assert run_job(drifting(2), ledger).exit_code == ExitCode.OK
    result = run_job(drifting(4), ledger)
    if policy == "add":
        assert result.exit_code == ExitCode.OK
        assert dest.query("SELECT day, b FROM {t} ORDER BY day") == [
            ("2013-01-01", None),
            ("2013-01-02", None),
            ("2013-01-03", "new"),
            ("2013-01-04", "new"),
        ]
    else:
        assert result.exit_code == ExitCode.FAILED
        failed = ledger.entries("drift", "fetch", status=Status.FAILED)
        assert {e.key for e in failed} == {"2013-01-03", "2013-01-04"}
        assert all(e.error_category == "schema_drift" for e in failed)
        assert "'b'" in (failed[0].error_message or "")
    ledger.close()


def test_a_stage_writes_several_tables_at_once(dest: Destination, tmp_path: Path) -> None:
    """Races, runners and an upserted horses master from one stage, in one transaction."""
    races = dest.table("races", key=["race"], mode="replace-partition")
    runners = dest.table("runners", key=["race", "horse"], mode="replace-partition")
    horses = dest.table("horses", key=["horse"])
    job = Job("racing", partitions=daily("2013-01-01", "2013-01-05"), sink=[races, runners, horses])

    @job.stage
    async def cards(ctx: Context, partition: Partition) -> dict[str, list[dict[str, Any]]]:
        race = f"{partition.key}-1"
        field = [f"horse{(partition.start.day + i) % 7}" for i in range(3)]
        return {
            "races": [{"race": race, "day": partition.key}],
            "runners": [{"race": race, "horse": h} for h in field],
            "horses": [{"horse": h, "seen": partition.key} for h in field],
        }

    ledger = SQLiteLedger(tmp_path / "state.db")
    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert dest.query("SELECT count(*) FROM {races}") == [(5,)]
    assert dest.query("SELECT count(*) FROM {runners}") == [(15,)]
    assert dest.query("SELECT count(*) FROM {horses}") == [(7,)]
    ledger.close()


def _write(sink: Sink, *days: list[dict[str, Any]]) -> None:
    """Write each list of records as one partition of 2013-01, all in one transaction."""
    from backfill.sinks import Rows

    spec = daily("2013-01-01", "2013-01-31")
    conn = sink.connect()
    try:
        conn.begin()
        sink.write(
            conn,
            [Rows(spec.get(f"2013-01-{i + 1:02d}"), records) for i, records in enumerate(days)],  # type: ignore[arg-type]
        )
        conn.commit()
    finally:
        conn.close()


def test_an_upsert_updates_exactly_the_rows_that_changed(dest: Destination) -> None:
    """Rows sent again unchanged stay, changed ones (a value, a NULL either way, a sign)
    take the new values, new ones are added, and a key repeated in a batch keeps its last."""
    sink = dest.table("t", key=["k"])
    before = [
        {"k": 1, "f": 1.5, "s": "a", "i": 10},
        {"k": 2, "f": 2.5, "s": "b", "i": 20},
        {"k": 3, "f": None, "s": "c", "i": 30},
        {"k": 4, "f": 4.5, "s": None, "i": 40},
        {"k": 5, "f": 0.0, "s": "e", "i": 50},
    ]
    _write(sink, before[:3], before[3:])
    after = [
        {"k": 1, "f": 1.5, "s": "a", "i": 10},  # unchanged
        {"k": 2, "f": 2.5, "s": "B", "i": 20},  # text changed
        {"k": 3, "f": 3.5, "s": "c", "i": 30},  # NULL -> value
        {"k": 4, "f": None, "s": None, "i": 41},  # value -> NULL, integer changed
        {"k": 6, "f": 6.5, "s": "f", "i": 60},  # new
        {"k": 7, "f": 7.5, "s": "g", "i": 70},  # new, then again below
    ]
    again = [{"k": 7, "f": 7.75, "s": "G", "i": 71}, {"k": 5, "f": 0.0, "s": "e", "i": 50}]
    _write(sink, after, again)
    rows = dest.query("SELECT k, f, s, i FROM {t} ORDER BY k")
    assert rows == [
        (1, 1.5, "a", 10),
        (2, 2.5, "B", 20),
        (3, 3.5, "c", 30),
        (4, None, None, 41),
        (5, 0.0, "e", 50),
        (6, 6.5, "f", 60),
        (7, 7.75, "G", 71),
    ]
    assert all(type(r[1]) in (float, type(None)) and type(r[3]) is int for r in rows)


@pytest.mark.parametrize("mode", MODES)
def test_many_rows_of_every_type_are_written_as_they_were_given(
    dest: Destination, mode: str
) -> None:
    """Hundreds of rows per partition (many per statement, some left over), every value
    type the sinks take, NULLs among them: each row comes back with its own values."""
    import datetime as dt

    def record(day: int, n: int) -> dict[str, Any]:
        return {
            "day": day,
            "n": n,
            "i": n * 7 - 300 if n % 5 else None,
            "big": 2**62 + n,
            "f": n / 3 if n % 7 else None,
            "s": f"row {n} ü \u2603" if n % 3 else "",
            "b": n % 2 == 0,
            "raw": bytes([n % 256, 0, 255]),
            "d": dt.date(2013, 1, 1) + dt.timedelta(days=n),
            "ts": dt.datetime(2013, 1, 1, 12, 30) + dt.timedelta(minutes=n),
            "j": {"n": n, "tags": ["a", n]},
        }

    days = [[record(day, n) for n in range(count)] for day, count in ((1, 457), (2, 3), (3, 250))]
    key = None if mode == "append" else ["day", "n"]
    sink = dest.table("t", key=key, mode=mode)
    _write(sink, *days)
    _write(sink, *days)  # again: the same rows, not twice
    got = dest.query("SELECT day, n, i, big, f, s, b, raw, d, ts, j FROM {t} ORDER BY day, n")
    assert len(got) == sum(map(len, days))
    for row, want in zip(got, (r for day in days for r in day), strict=True):
        day, n, i, big, f, s, b, raw, d, ts, j = row
        assert (day, n, i, big, s, bytes(raw)) == (
            want["day"],
            want["n"],
            want["i"],
            want["big"],
            want["s"],
            want["raw"],
        )
        assert f == want["f"] and type(f) is type(want["f"])
        assert bool(b) is want["b"]
        assert str(d)[:10] == want["d"].isoformat()
        assert str(ts).replace(" ", "T")[:19] == want["ts"].isoformat()
        assert (json.loads(j) if isinstance(j, str) else j) == want["j"]


def test_a_record_with_as_many_fields_but_another_one_is_seen(dest: Destination) -> None:
    """A record as long as the others but with a field in place of one of theirs: the new
    field gets its column (and the missing one is NULL); a missing key field is named."""
    from backfill.errors import PermanentError

    sink = dest.table("t", key=["k"])
    first = [{"k": n, "a": n, "b": "x"} for n in range(300)]
    odd = [{"k": 300, "a": 1, "c": 2.5}, {"k": 301, "a": 2, "b": "y"}]
    _write(sink, first, odd)
    assert dest.query("SELECT k, a, b, c FROM {t} WHERE k >= 298 ORDER BY k") == [
        (298, 298, "x", None),
        (299, 299, "x", None),
        (300, 1, None, 2.5),
        (301, 2, "y", None),
    ]
    strict = dest.table("s", key=["k"], on_new_field="fail")
    _write(strict, first)
    with pytest.raises(PermanentError, match=r"2013-01-02.*'c'.*table s"):
        _write(strict, first, odd)
    with pytest.raises(PermanentError, match=r"2013-01-02.*key field 'k' of table t"):
        _write(sink, first, [{"a": 1, "b": "y", "c": 1.5}])


def test_a_value_no_column_can_hold_names_its_table_and_field(dest: Destination) -> None:
    """A value of a type no driver takes fails with table and field named, even deep in a
    statement of many rows."""
    from backfill.errors import PermanentError

    sink = dest.table("t", key=["k"], columns={"k": "integer", "a": "integer", "v": "integer"})
    rows = [{"k": n, "a": n, "v": n} for n in range(500)]
    _write(sink, rows[:1])
    rows[437]["v"] = {1, 2}
    with pytest.raises(PermanentError, match=r"table t.*'v'|'v'.*table t") as info:
        _write(sink, rows)
    assert "\n" not in str(info.value)


def test_sqlite_leaves_unchanged_rows_unwritten(tmp_path: Path) -> None:
    """Upserting rows that would stay the same changes no row (a NULL equal to a NULL
    included); a changed value, or a NULL becoming a value, is written."""
    from backfill.sinks import Rows

    sink = table(f"sqlite:///{tmp_path / 'out.db'}", "t", key=["k"])
    first = [{"k": 1, "f": 1.5, "s": None}, {"k": 2, "f": 2.5, "s": "b"}]
    _write(sink, first)
    day = daily("2013-01-01", "2013-01-01").get("2013-01-01")
    assert day is not None

    def changes(records: list[dict[str, Any]]) -> int:
        conn = sink.connect()
        try:
            conn.begin()
            before = conn.raw.total_changes
            sink.write(conn, [Rows(day, records)])
            conn.commit()
            return int(conn.raw.total_changes - before)
        finally:
            conn.close()

    assert changes(first) == 0
    assert changes([{"k": 1, "f": 1.5, "s": "a"}, {"k": 2, "f": 2.5, "s": "b"}]) == 1
    assert changes([{"k": 1, "f": 1.5, "s": "a"}, {"k": 2, "f": 3.5, "s": "b"}]) == 1
    raw = sqlite3.connect(tmp_path / "out.db")
    assert raw.execute("SELECT k, f, s FROM t ORDER BY k").fetchall() == [
        (1, 1.5, "a"),
        (2, 3.5, "b"),
    ]
    raw.close()


def test_postgres_leaves_unchanged_rows_unwritten_but_sees_a_changed_sign(tmp_path: Path) -> None:
    """The upsert does not rewrite a row that would stay the same (its xmin is kept), but
    -0.0 after 0.0 is a change (stored images differ, though the values compare equal)."""
    reason = _postgres_available()
    if reason is not None:
        pytest.skip(reason)
    dest = Destination("postgresql", tmp_path)
    try:
        sink = dest.table("t", key=["k"])
        _write(sink, [{"k": 1, "f": 0.0, "s": "a"}, {"k": 2, "f": 1.0, "s": "b"}])
        xmin = dict(dest.query("SELECT k, xmin::text FROM {t}"))
        _write(sink, [{"k": 1, "f": 0.0, "s": "a"}, {"k": 2, "f": -0.0, "s": "b"}])
        now = dict(dest.query("SELECT k, xmin::text FROM {t}"))
        assert now[1] == xmin[1] and now[2] != xmin[2]
        assert dest.query("SELECT k, f::text FROM {t} ORDER BY k") == [(1, "0"), (2, "-0")]
    finally:
        dest.drop()


def test_an_unreachable_destination_stops_the_run_with_one_line(tmp_path: Path) -> None:
    """A destination that cannot be reached is fatal: exit 2, a message naming the table,
    no partition marked failed, and no password in the message."""
    sink = table("postgresql://bob:s3cret@127.0.0.1:1/nowhere", "t", key=["day"])
    job = make_job(sink)
    ledger = SQLiteLedger(tmp_path / "state.db")
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.USAGE
    message = result.message or ""
    assert "table t" in message and "s3cret" not in message and "\n" not in message
    counts = ledger.counts("sinks", ["fetch"])["fetch"]
    assert (counts.done, counts.failed, counts.pending) == (0, 0, 10)
    ledger.close()


def test_ledger_and_sink_in_one_file_commit_rows_and_done_marks_together(tmp_path: Path) -> None:
    """Same database: a partition whose lease was taken over writes no rows at all
    (append would otherwise double them), because mark and rows share a transaction."""
    from backfill.ledger import Outcome
    from backfill.writer import SinkWriter

    db = tmp_path / "both.db"
    ledger = SQLiteLedger(db)
    sink = table(str(db), "t", mode="append")
    spec = daily("2013-01-01", "2013-01-02")
    ledger.plan("j", "s", spec)
    mine = ledger.claim("j", "s", "me", limit=1, lease_seconds=0.01, now=0.0, run_id="r")
    theirs = ledger.claim("j", "s", "other", limit=5, lease_seconds=60, now=1.0, run_id="r")
    theirs += ledger.claim(
        "j", "s", "other", limit=5, lease_seconds=60, now=1.0, run_id="r", suspects=True
    )
    assert {c.key for c in theirs} == {"2013-01-01", "2013-01-02"}

    import asyncio

    async def hand_over() -> Any:
        writer = SinkWriter("me", completer_for=ledger.completer, now=lambda: 2.0)
        await writer.open([sink])
        assert writer.shares_ledger([sink])
        part = spec.get(mine[0].key)
        assert part is not None
        result = await writer.write(
            [sink],
            part,
            {"t": [{"day": part.key}]},
            Outcome(mine[0].id, Status.DONE, records=1),
            first=True,
        )
        await writer.close()
        return result

    result = asyncio.run(hand_over())
    assert result.lost and not result.recorded
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall() == []
    ledger.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_stalled_workers_page_writes_are_fenced_out(tmp_path: Path, kind: str) -> None:
    """Ledger and sink in one database: a page written (ctx.write, no outcome) under a
    lease that passed to another worker while this one was stalled writes no row, and
    the new holder's page is written; the check is the sink transaction's own."""
    import asyncio

    from backfill.writer import SinkWriter

    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = str(tmp_path / "both.db")
            ledger: Any = SQLiteLedger(tmp_path / "both.db")
        else:
            from backfill.ledger.postgres import PostgresLedger
            from pg_support import fresh_schema

            url = stack.enter_context(fresh_schema())
            ledger = PostgresLedger(url)
        stack.callback(ledger.close)
        sink = table(url, "pages", mode="append")
        spec = daily("2013-01-01", "2013-01-01")
        ledger.plan("j", "s", spec)
        (stale,) = ledger.claim("j", "s", "me", limit=1, lease_seconds=1, now=0.0, run_id="r")
        assert ledger.begin("me", [(stale.id, stale.claims)]) == {stale.id}
        (fresh,) = ledger.claim(
            "j", "s", "other", limit=1, lease_seconds=60, now=5.0, run_id="r", suspects=True
        )
        part = spec.get(stale.key)
        assert part is not None

        async def page(owner: str, lease: tuple[int, int], marker: str) -> Any:
            writer = SinkWriter(owner, completer_for=ledger.completer, fence_for=ledger.fence)
            await writer.open([sink])
            try:
                return await writer.write(
                    [sink], part, {"pages": [{"n": marker}]}, None, first=False, lease=lease
                )
            finally:
                await writer.close()

        assert asyncio.run(page("me", (stale.id, stale.claims), "stale")).lost
        assert not asyncio.run(page("other", (fresh.id, fresh.claims), "fresh")).lost
        if kind == "sqlite":
            with sqlite3.connect(tmp_path / "both.db") as conn:
                rows = conn.execute("SELECT n FROM pages").fetchall()
        else:
            import psycopg

            with psycopg.connect(url) as conn:
                rows = conn.execute("SELECT n FROM pages").fetchall()
        assert rows == [("fresh",)]


def test_postgres_sinks_in_two_schemas_are_two_destinations() -> None:
    """URLs differing only in their options (a search_path) name different tables, so
    the writer never sends one sink's rows through the other's connection; a password
    is no part of the identity."""
    base = "postgresql://bob:s3cret@db.example:5432/warehouse"
    a = table(base + "?options=-csearch_path%3Da", "t", mode="append")
    b = table(base + "?options=-csearch_path%3Db", "t", mode="append")
    plain = table(base, "t", mode="append")
    assert len({a.database, b.database, plain.database}) == 3
    assert all("s3cret" not in sink.database for sink in (a, b, plain))
    assert plain.database == "postgresql://bob@db.example:5432/warehouse"


def test_postgres_ledger_and_sink_in_one_database_commit_together() -> None:
    """Same PostgreSQL database and schema: a held partition's rows and done-mark commit
    in the sink's transaction, and one whose lease passed on writes no rows at all; a
    sink in another schema of the same server is not mistaken for the ledger's."""
    import asyncio

    from backfill.ledger import Outcome
    from backfill.ledger.postgres import PostgresLedger
    from backfill.writer import SinkWriter
    from pg_support import fresh_schema

    with fresh_schema() as url:
        ledger = PostgresLedger(url)
        sink = table(url, "t", mode="append")
        assert ledger.completer(sink.identity) is not None
        assert ledger.completer(table(POSTGRES_URL, "t", mode="append").identity) is None
        spec = daily("2013-01-01", "2013-01-02")
        ledger.plan("j", "s", spec)
        (lost,) = ledger.claim("j", "s", "me", limit=1, lease_seconds=0.01, now=0.0, run_id="r")
        ledger.begin("me", [(lost.id, lost.claims)])
        (kept,) = ledger.claim("j", "s", "me", limit=1, lease_seconds=60, now=0.0, run_id="r")
        (held,) = ledger.claim(
            "j", "s", "other", limit=1, lease_seconds=60, now=1.0, run_id="r", suspects=True
        )
        assert held.key == lost.key

        async def hand_over() -> list[Any]:
            writer = SinkWriter("me", completer_for=ledger.completer, now=lambda: 2.0)
            await writer.open([sink])
            assert writer.shares_ledger([sink])
            results = []
            for claim in (lost, kept):
                part = spec.get(claim.key)
                assert part is not None
                results.append(
                    await writer.write(
                        [sink],
                        part,
                        {"t": [{"day": part.key}]},
                        Outcome(claim.id, Status.DONE, records=1),
                        first=True,
                    )
                )
            await writer.close()
            return results

        gone, written = asyncio.run(hand_over())
        assert gone.lost and not gone.recorded
        assert written.recorded and not written.lost
        import psycopg

        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT day FROM t").fetchall()
        assert rows == [(kept.key,)]
        (done,) = ledger.entries("j", "s", status=Status.DONE)
        assert (done.key, done.records) == (kept.key, 1)
        ledger.close()


def test_postgres_sink_and_ledger_reconnect_when_the_server_ends_their_connections() -> None:
    """The server ends the run's connections (AdminShutdown, as a fast restart does) before
    each write: the sink's transaction with its done-marks is retried on a new connection,
    ledger calls reconnect too, and every row and mark lands once."""
    import asyncio

    import psycopg

    from backfill.ledger import Outcome
    from backfill.ledger.postgres import PostgresLedger
    from backfill.writer import SinkWriter
    from pg_support import fresh_schema

    with fresh_schema() as base:
        # Only this test's connections carry the name: nobody else's are ended.
        name = f"bf_restart_{uuid.uuid4().hex[:8]}"
        url = f"{base}&application_name={name}"

        def end_connections() -> int:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = %s",
                    (name,),
                ).fetchone()
            return int(row[0]) if row else 0

        ledger = PostgresLedger(url)
        sink = table(url, "t", key=["day"])
        spec = daily("2013-01-01", "2013-01-03")
        ledger.plan("j", "s", spec)
        claims = ledger.claim("j", "s", "me", limit=3, lease_seconds=60, now=0.0, run_id="r")

        async def hand_over() -> list[Any]:
            writer = SinkWriter(
                "me", completer_for=ledger.completer, fence_for=ledger.fence, now=lambda: 2.0
            )
            await writer.open([sink])
            results = []
            for claim in claims:
                assert end_connections() >= 1
                part = spec.get(claim.key)
                assert part is not None
                results.append(
                    await writer.write(
                        [sink],
                        part,
                        {"t": [{"day": part.key}]},
                        Outcome(claim.id, Status.DONE, records=1),
                        first=True,
                        urgent=True,
                        lease=(claim.id, claim.claims),
                    )
                )
            await writer.close()
            return results

        results = asyncio.run(hand_over())
        assert [(r.recorded, r.lost, r.error) for r in results] == [(True, False, None)] * 3
        # The ledger's pooled connection was ended with the first write's: it reconnects.
        assert ledger.counts("j", ["s"])["s"].done == 3
        assert end_connections() >= 1
        assert ledger.counts("j", ["s"])["s"].done == 3
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT day FROM t ORDER BY day").fetchall()
        assert rows == [(c.key,) for c in sorted(claims, key=lambda c: c.key)]
        ledger.close()


# -- pages: ctx.write, checkpoints and redos --------------------------------------------


def _columns(dest: Destination, name: str) -> list[str]:
    if dest.kind == "sqlite":
        return [r[0] for r in dest.query(f"SELECT name FROM pragma_table_info('{name}')")]
    if dest.kind == "duckdb":
        return [
            r[0]
            for r in dest.query(
                "SELECT column_name FROM information_schema.columns "
                f"WHERE table_name = '{name}' ORDER BY ordinal_position"
            )
        ]
    return [
        r[0]
        for r in dest.query(
            "SELECT column_name FROM information_schema.columns "
            f"WHERE table_schema = '{dest.prefix[:-1]}' AND table_name = '{name}' "
            "ORDER BY ordinal_position"
        )
    ]


def _write_rows(sink: Sink, *batch: Rows) -> None:
    """Write these Rows in one transaction."""
    conn = sink.connect()
    try:
        conn.begin()
        sink.write(conn, batch)
        conn.commit()
    finally:
        conn.close()


def _page(
    day: str, cursor: str | None, ids: range, *, first: bool = False, redo: str | None = None
) -> Rows:
    """One partition's page of records, written under checkpoint ``cursor``."""
    part = daily("2013-01-01", "2013-01-31").get(day)
    assert part is not None
    return Rows(part, [{"day": day, "id": i} for i in ids], first, page=cursor, redo=redo)


@pytest.mark.parametrize("mode", ["append", "replace-partition"])
def test_paged_rows_carry_their_checkpoint_and_a_redo_replaces_exactly_that_page(
    dest: Destination, mode: str
) -> None:
    """Rows written under a checkpoint carry it in _page; a redo of that checkpoint deletes
    just the partition's rows tagged with it (not earlier pages, not other partitions)."""
    sink = dest.table("t", mode=mode)
    _write_rows(
        sink,
        _page("2013-01-01", None, range(0, 3), first=True),
        _page("2013-01-02", None, range(0, 3), first=True),
    )
    _write_rows(
        sink, _page("2013-01-01", "c1", range(3, 6)), _page("2013-01-02", "c1", range(3, 6))
    )
    _write_rows(sink, _page("2013-01-01", "c2", range(6, 9)))
    # Resumed from c2 (the page after it was written, c2 never replaced): redo it.
    _write_rows(sink, _page("2013-01-01", "c2", range(6, 10), redo="c2"))
    assert "_page" in _columns(dest, "t")
    rows = dest.query("SELECT day, id, _page FROM {t} ORDER BY day, id")
    want = [("2013-01-01", i, None if i < 3 else "c1" if i < 6 else "c2") for i in range(10)]
    want += [("2013-01-02", i, None if i < 3 else "c1") for i in range(6)]
    assert rows == want
    # A redo whose checkpoint tags nothing deletes nothing.
    _write_rows(sink, _page("2013-01-02", "c9", range(6, 8), redo="c9"))
    assert dest.query("SELECT count(*) FROM {t} WHERE day = '2013-01-02'") == [(8,)]


@pytest.mark.parametrize("mode", MODES)
def test_writes_without_a_checkpoint_add_no_page_column(dest: Destination, mode: str) -> None:
    """Partitions written without a checkpoint (the common case) get no _page column, and
    upsert never does (a key makes it idempotent); a redo there deletes no row."""
    key = ["day", "id"] if mode == "upsert" else None
    sink = dest.table("t", key=key, mode=mode)
    _write_rows(sink, _page("2013-01-01", None, range(3), first=True))
    _write_rows(sink, _page("2013-01-01", None, range(3, 5)))
    assert "_page" not in _columns(dest, "t")
    if mode == "upsert":
        _write_rows(sink, _page("2013-01-01", "c1", range(5, 7), redo="c1"))
        assert "_page" not in _columns(dest, "t")
        assert dest.query("SELECT count(*) FROM {t}") == [(7,)]


def test_a_redo_of_a_table_without_page_column_deletes_nothing(dest: Destination) -> None:
    """A table written before any checkpoint has no tagged rows: a redo there keeps them."""
    sink = dest.table("t", mode="append")
    _write_rows(sink, _page("2013-01-01", None, range(3), first=True))
    _write_rows(sink, _page("2013-01-01", "c1", range(3, 5), redo="c1"))
    assert dest.query("SELECT id, _page FROM {t} ORDER BY id") == [
        (0, None),
        (1, None),
        (2, None),
        (3, "c1"),
        (4, "c1"),
    ]


def test_a_redo_by_a_date_partition_column_deletes_that_days_page_only(
    dest: Destination,
) -> None:
    """Replace-partition by a date column: a redo deletes the rows of the partition's window
    tagged with the checkpoint, not the day's earlier pages nor another day's same page."""
    import datetime as dt

    sink = dest.table("t", mode="replace-partition", partition_column="day")
    spec = daily("2013-01-01", "2013-01-31")

    def page(day: int, cursor: str | None, ids: range, **kw: Any) -> Rows:
        date = dt.date(2013, 1, day)
        part = spec.get(date.isoformat())
        assert part is not None
        return Rows(part, [{"day": date, "id": i} for i in ids], page=cursor, **kw)

    _write_rows(sink, page(1, None, range(3), first=True), page(2, None, range(3), first=True))
    _write_rows(
        sink, page(1, "c1", range(3, 6), first=False), page(2, "c1", range(3, 6), first=False)
    )
    _write_rows(sink, page(1, "c1", range(3, 7), first=False, redo="c1"))
    got = dest.query("SELECT CAST(day AS TEXT), count(*) FROM {t} GROUP BY day ORDER BY day")
    assert [(str(d)[:10], n) for d, n in got] == [("2013-01-01", 7), ("2013-01-02", 6)]
    assert dest.query("SELECT count(*) FROM {t} WHERE _page = 'c1'") == [(7,)]


PAGES = 5
PER_PAGE = 4


def paged_job(sink: Sink, fail: dict[str, str], *, days: int = 3) -> Job:
    """The README's huge-partition pattern: each page written with ctx.write, then its
    checkpoint saved; ``fail`` maps a page's cursor to how to break after writing it."""
    from backfill import RetryPolicy
    from backfill.errors import FatalError, TransientError

    job = Job("paged", partitions=daily("2013-01-01", f"2013-01-{days:02d}"), sink=sink)

    @job.stage(concurrency=2, retry=RetryPolicy(attempts=3, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> None:
        page = int(ctx.checkpoint or 0)
        while page < PAGES:
            ids = range(page * PER_PAGE, (page + 1) * PER_PAGE)
            await ctx.write([{"day": partition.key, "id": i} for i in ids])
            page += 1
            how = fail.pop(f"{partition.key}/{page}", None)
            if how == "transient":
                raise TransientError("the connection dropped", category="network")
            if how == "fatal":
                raise FatalError("the source went away")
            await ctx.save_checkpoint(str(page))

    return job


def _check_pages(dest: Destination, days: int = 3) -> None:
    assert dest.query("SELECT count(*) FROM {t}") == [(days * PAGES * PER_PAGE,)]
    assert dest.query("SELECT count(*) FROM (SELECT DISTINCT day, id FROM {t}) d") == [
        (days * PAGES * PER_PAGE,)
    ]


def test_an_error_between_a_page_and_its_checkpoint_retries_without_doubling(
    dest: Destination, tmp_path: Path
) -> None:
    """A transient error after ctx.write and before save_checkpoint: the retry in the same
    run resumes from the last checkpoint and replaces the page written after it."""
    sink = dest.table("t", mode="append")
    fail = {"2013-01-01/3": "transient", "2013-01-02/1": "transient", "2013-01-03/5": "transient"}
    ledger = SQLiteLedger(tmp_path / "state.db")
    assert run_job(paged_job(sink, fail), ledger).exit_code == ExitCode.OK
    assert fail == {}
    _check_pages(dest)
    ledger.close()


def test_a_run_stopped_between_a_page_and_its_checkpoint_resumes_without_doubling(
    dest: Destination, tmp_path: Path
) -> None:
    """A run stopped after ctx.write and before save_checkpoint: the next run resumes from
    the saved checkpoint and replaces the page written after it."""
    sink = dest.table("t", mode="append")
    ledger = SQLiteLedger(tmp_path / "state.db")
    fail = {"2013-01-01/3": "fatal"}
    assert run_job(paged_job(sink, fail, days=1), ledger).exit_code == ExitCode.USAGE
    (entry,) = ledger.entries("paged", "fetch")
    assert entry.status is Status.PENDING
    assert dest.query("SELECT count(*) FROM {t}") == [(3 * PER_PAGE,)]
    assert run_job(paged_job(sink, {}, days=1), ledger).exit_code == ExitCode.OK
    _check_pages(dest, days=1)
    ledger.close()


def test_a_stopped_paged_partition_in_the_ledgers_own_file_resumes_without_doubling(
    tmp_path: Path,
) -> None:
    """The same with sink and ledger in one SQLite file: the redo replaces the page."""
    db = tmp_path / "both.db"
    ledger = SQLiteLedger(db)
    sink = table(str(db), "t", mode="append")
    fail = {"2013-01-01/2": "fatal"}
    assert run_job(paged_job(sink, fail, days=1), ledger).exit_code == ExitCode.USAGE
    fail = {"2013-01-01/4": "transient"}
    assert run_job(paged_job(sink, fail, days=1), ledger).exit_code == ExitCode.OK
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM t").fetchall() == [
            (PAGES * PER_PAGE, PAGES * PER_PAGE)
        ]
    ledger.close()


# -- processes: SIGKILL and concurrent runs --------------------------------------------

JOB_FILE = """
import asyncio, os, random
from backfill import Job, daily, table

MODE = os.environ["SINK_MODE"]
job = Job("killable", partitions=daily("2013-01-01", "2013-03-31"),
          sink=table(os.environ["SINK_URL"], os.environ["SINK_TABLE"],
                     key=None if MODE == "append" else ["day", "n"], mode=MODE))

@job.stage(concurrency=8)
async def fetch(ctx, partition):
    await asyncio.sleep(random.uniform(0.05, 0.15))
    return [{"day": partition.key, "n": n, "v": float(n)} for n in range(partition.start.day)]
"""

EXPECTED_ROWS = sum(range(1, 32)) * 2 + sum(range(1, 29))  # Jan + Mar + Feb


def _spawn(
    tmp_path: Path, dest: Destination, mode: str, command: str = "run"
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}
    env.update(
        SINK_MODE=mode, SINK_URL=dest.url, SINK_TABLE=dest.prefix + "t", PYTHONUNBUFFERED="1"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "backfill.cli", command, "job.py", "--state", "state.db"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_exact(dest: Destination, mode: str) -> None:
    assert dest.query("SELECT count(*) FROM {t}") == [(EXPECTED_ROWS,)]
    assert dest.query("SELECT count(*) FROM (SELECT DISTINCT day, n FROM {t}) d") == [
        (EXPECTED_ROWS,)
    ]


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_at_random_points_then_resume_leaves_exact_rows(
    dest: Destination, tmp_path: Path, mode: str
) -> None:
    """Killed with SIGKILL twice at random moments, then resumed: exact rows, no duplicate."""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB_FILE))
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    done_after_kills = []
    for _ in range(2):
        proc = _spawn(tmp_path, dest, mode)
        deadline = time.monotonic() + 30
        while not (tmp_path / "state.db").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.3, 0.9))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        ledger = SQLiteLedger(tmp_path / "state.db")
        done_after_kills.append(ledger.counts("killable", ["fetch"])["fetch"].done)
        ledger.close()
    assert done_after_kills[0] < 90, f"seed {seed}: the first kill came after the end"
    final = _spawn(tmp_path, dest, mode)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, f"seed {seed}: {err[-2000:]}"
    _check_exact(dest, mode)


@pytest.mark.parametrize("mode", MODES)
def test_two_concurrent_runs_of_one_job_write_each_row_once(
    dest: Destination, tmp_path: Path, mode: str
) -> None:
    """Two workers on the same state and destination split the work: exact rows (the
    one that ends while the other still holds partitions exits 1, the other 0). Two
    `run`s would not: the second stops at once with exit 75 (see test_keep_current)."""
    if dest.kind == "duckdb":
        pytest.skip("a DuckDB file takes one writing process at a time (documented)")
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB_FILE))
    procs = [_spawn(tmp_path, dest, mode, "worker") for _ in range(2)]
    codes = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 1), err[-2000:]
        codes.append(proc.returncode)
    assert 0 in codes
    _check_exact(dest, mode)


# -- untrusted records: one hostile record fails its own partition ----------------------


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"x": value}
    return value


def _healthy(day: str, n: int) -> dict[str, Any]:
    return {"day": day, "n": n, "v": n, "s": f"s{n}", "j": {"n": n}}


# Each shape: what the hostile partition's last record becomes, the category and the
# words its failure names on SQLite and on PostgreSQL (None: that database stores it).
HOSTILE: dict[str, tuple[Any, tuple[str, str] | None, tuple[str, str] | None]] = {
    "case_in_record": (lambda r: {**r, "V": 1}, ("bad_field", "'V'"), ("bad_field", "'V'")),
    "case_of_column": (
        lambda r: {**{k: x for k, x in r.items() if k != "s"}, "S": "x"},
        ("bad_field", "'S'"),
        ("bad_field", "'S'"),
    ),
    "reserved_partition": (
        lambda r: {**r, "_partition": "elsewhere"},
        ("reserved_field", "'_partition'"),
        ("reserved_field", "'_partition'"),
    ),
    "reserved_page": (
        lambda r: {**r, "_Page": "c1"},
        ("reserved_field", "'_Page'"),
        ("reserved_field", "'_Page'"),
    ),
    "empty_name": (lambda r: {**r, "": 1}, ("bad_field", "''"), ("bad_field", "''")),
    "nul_in_name": (
        lambda r: {**r, "a\x00b": 1},
        ("bad_field", "'a\\x00b'"),
        ("bad_field", "'a\\x00b'"),
    ),
    "name_not_a_string": (lambda r: {**r, 7: 1}, ("bad_field", "7"), ("bad_field", "7")),
    "surrogate_in_name": (
        lambda r: {**r, "a\udc80": 1},
        ("bad_field", "'a\\udc80'"),
        ("bad_field", "'a\\udc80'"),
    ),
    "name_over_63_bytes": (
        lambda r: {**r, "é" * 32: 1},
        None,
        ("bad_field", "'" + "é" * 32),
    ),
    "too_many_fields_sqlite": (
        lambda r: {**r, **{f"f{i}": i for i in range(1995)}},
        ("too_many_fields", "2,000"),
        ("too_many_fields", "1,600"),
    ),
    "too_many_fields_postgres": (
        lambda r: {**r, **{f"f{i}": None for i in range(1595)}},
        None,
        ("too_many_fields", "1,600"),
    ),
    "row_too_big_postgres": (
        lambda r: {**r, **{f"f{i}": i for i in range(1100)}},
        None,
        ("too_big", "table t"),
    ),
    "integer_over_64_bits": (
        lambda r: {**r, "v": 2**64},
        ("bad_value", "'v'"),
        ("bad_value", "'v'"),
    ),
    "integer_under_64_bits": (
        lambda r: {**r, "v": -(2**63) - 1},
        ("bad_value", "'v'"),
        ("bad_value", "'v'"),
    ),
    "lone_surrogate": (
        lambda r: {**r, "s": "ok \ud800"},
        ("bad_value", "'s'"),
        ("bad_value", "'s'"),
    ),
    "lone_surrogate_in_json": (
        lambda r: {**r, "j": {"n": ["\udfff"]}},
        ("bad_value", "'j'"),
        ("bad_value", "'j'"),
    ),
    "nan_in_json": (
        lambda r: {**r, "j": {"n": float("nan")}},
        ("bad_value", "'j'"),
        ("bad_value", "'j'"),
    ),
    "json_nested_too_deep": (
        lambda r: {**r, "j": _deep(5000)},
        ("bad_value", "'j'"),
        ("bad_value", "'j'"),
    ),
    "nul_in_text": (lambda r: {**r, "s": "a\x00b"}, None, ("bad_value", "'s'")),
    "bytes_in_text": (
        lambda r: {**r, "s": b"\x00\xff"},
        ("type_clash", "'s'"),
        ("type_clash", "'s'"),
    ),
}


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_a_hostile_record_fails_only_its_partition_and_a_rerun_after_the_fix_completes(
    dest: Destination, tmp_path: Path, shape: str
) -> None:
    """One record of a hostile shape (field names, too many fields, values no column holds)
    fails only its partition, naming table and field, with exit 1: the healthy partitions
    of the same batch are written, the table gains no column of it, a rerun fails it again
    without touching the rest, and a rerun once the source is fixed completes it exactly."""
    make_bad, on_sqlite, on_postgres = HOSTILE[shape]
    # DuckDB, embedded like SQLite, is held to SQLite's limits.
    expected = on_postgres if dest.kind == "postgresql" else on_sqlite
    sink = dest.table("t", mode="append")
    ledger = SQLiteLedger(tmp_path / "state.db")
    fixed = [False]

    def job(last: int) -> Job:
        job = Job("hostile", partitions=daily("2013-01-01", f"2013-01-{last:02d}"), sink=sink)

        @job.stage(concurrency=8)
        async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
            records = [_healthy(partition.key, n) for n in range(3)]
            if partition.key == "2013-01-04" and not fixed[0]:
                records[2] = make_bad(records[2])
            return records

        return job

    # The table exists (made by two healthy days) before the hostile record comes.
    assert run_job(job(2), ledger).exit_code == ExitCode.OK
    columns = _columns(dest, "t")
    result = run_job(job(7), ledger)
    per_day = dest.query("SELECT day, count(*) FROM {t} GROUP BY day ORDER BY day")
    if expected is None:
        assert result.exit_code == ExitCode.OK
        assert per_day == [(f"2013-01-{d:02d}", 3) for d in range(1, 8)]
        ledger.close()
        return
    category, named = expected
    assert result.exit_code == ExitCode.FAILED
    failed = ledger.entries("hostile", "fetch", status=Status.FAILED)
    assert [e.key for e in failed] == ["2013-01-04"]
    message = failed[0].error_message or ""
    assert failed[0].error_category == category, message
    assert named in message and "table t" in message and "2013-01-04" in message, message
    assert "\n" not in message and len(message) < 600
    healthy = [(f"2013-01-{d:02d}", 3) for d in (1, 2, 3, 5, 6, 7)]
    assert per_day == healthy
    assert _columns(dest, "t") == columns
    # Rerun unfixed: it fails again, and only it runs.
    ledger.requeue("hostile", ["fetch"], [Status.FAILED])
    assert run_job(job(7), ledger).exit_code == ExitCode.FAILED
    assert dest.query("SELECT day, count(*) FROM {t} GROUP BY day ORDER BY day") == healthy
    fixed[0] = True
    ledger.requeue("hostile", ["fetch"], [Status.FAILED])
    assert run_job(job(7), ledger).exit_code == ExitCode.OK
    assert dest.query("SELECT day, count(*) FROM {t} GROUP BY day ORDER BY day") == [
        (f"2013-01-{d:02d}", 3) for d in range(1, 8)
    ]
    assert dest.query("SELECT count(DISTINCT _partition) FROM {t}") == [(7,)]
    ledger.close()


def _dated_job(sink: Sink, last: int, bad: dict[str, Any], fixed: list[bool], **dims: Any) -> Job:
    """Daily partitions of 2013-01 whose three rows are dated by ``day``; on the 3rd, the
    last row takes ``bad``'s fields until ``fixed``."""
    job = Job("dated", partitions=daily("2013-01-01", f"2013-01-{last:02d}", **dims), sink=sink)

    @job.stage(concurrency=8)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        extra = {k: partition[k] for k, _ in partition.dims}
        records = [{"day": partition.date, "n": n, **extra} for n in range(3)]
        if partition.date.day == 3 and not fixed[0]:
            records[2].update(bad)
        return records

    return job


OUTSIDE = {
    "day_after": ({"day": dt.date(2013, 1, 4)}, "2013-01-04"),
    "day_before_as_text": ({"day": "2012-12-31"}, "2012-12-31"),
    "no_date": ({"day": None}, "None"),
    "not_a_date": ({"day": "yesterday"}, "yesterday"),
    "compact_date_text": ({"day": "20130103"}, "20130103"),
}


@pytest.mark.parametrize("shape", sorted(OUTSIDE))
def test_replace_by_a_date_column_fails_a_partition_with_a_row_outside_its_window(
    dest: Destination, tmp_path: Path, shape: str
) -> None:
    """A row dated outside its partition's window (or not dated) would survive every redo
    by that date and be written again each time: it fails its partition with the value and
    the window named, the rest are written, reruns add nothing, and the fix completes it."""
    bad, shown = OUTSIDE[shape]
    sink = dest.table("t", mode="replace-partition", partition_column="day")
    ledger = SQLiteLedger(tmp_path / "state.db")
    fixed = [False]
    assert run_job(_dated_job(sink, 2, bad, fixed), ledger).exit_code == ExitCode.OK
    for _ in range(2):
        assert run_job(_dated_job(sink, 5, bad, fixed), ledger).exit_code == ExitCode.FAILED
        failed = ledger.entries("dated", "fetch", status=Status.FAILED)
        assert [e.key for e in failed] == ["2013-01-03"]
        message = failed[0].error_message or ""
        assert failed[0].error_category == "outside_partition", message
        assert f"day={shown}" in message or f"day='{shown}'" in message, message
        assert "table t" in message, message
        if shape in ("day_after", "day_before_as_text"):
            assert "window 2013-01-03..2013-01-03" in message, message
        assert dest.query("SELECT count(*) FROM {t}") == [(12,)]
        ledger.requeue("dated", ["fetch"], [Status.FAILED])
    fixed[0] = True
    assert run_job(_dated_job(sink, 5, bad, fixed), ledger).exit_code == ExitCode.OK
    rows = dest.query("SELECT day, count(*) FROM {t} GROUP BY day ORDER BY day")
    assert [(str(d)[:10], c) for d, c in rows] == [(f"2013-01-0{d}", 3) for d in range(1, 6)]
    ledger.close()


def test_replace_by_a_date_column_fails_a_row_of_another_dimension(
    dest: Destination, tmp_path: Path
) -> None:
    """Partitions crossed with a dimension delete by it too: a row carrying another value of
    the dimension (which the redo would not delete) fails its partition."""
    sink = dest.table("t", mode="replace-partition", partition_column="day")
    ledger = SQLiteLedger(tmp_path / "state.db")
    fixed = [False]
    job = _dated_job(sink, 4, {"tour": "wta"}, fixed, tour=["atp"])
    assert run_job(job, ledger).exit_code == ExitCode.FAILED
    failed = ledger.entries("dated", "fetch", status=Status.FAILED)
    assert [e.key for e in failed] == ["2013-01-03/tour=atp"]
    assert failed[0].error_category == "outside_partition"
    assert "tour='wta'" in (failed[0].error_message or "")
    assert dest.query("SELECT count(*) FROM {t}") == [(9,)]
    ledger.close()


def test_outside_window_allow_writes_the_rows_and_leaves_them_to_the_user(
    dest: Destination, tmp_path: Path
) -> None:
    """Declared outside_window='allow': rows outside the window are written, and a redo of
    their partition does not replace them (as documented, they are the user's to dedupe)."""
    sink = dest.table("t", mode="replace-partition", partition_column="day", outside_window="allow")
    ledger = SQLiteLedger(tmp_path / "state.db")
    job = _dated_job(sink, 3, {"day": dt.date(2013, 2, 1)}, [False])
    assert run_job(job, ledger).exit_code == ExitCode.OK
    ledger.requeue("dated", ["fetch"], [Status.DONE])
    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert dest.query("SELECT count(*) FROM {t} WHERE day < '2013-02-01'") == [(8,)]
    assert dest.query("SELECT count(*) FROM {t} WHERE day >= '2013-02-01'") == [(2,)]
    ledger.close()


@pytest.mark.parametrize("mode", MODES)
def test_nan_is_stored_as_null_and_infinities_as_themselves(dest: Destination, mode: str) -> None:
    """A float NaN is stored as NULL on both databases (SQLite keeps no NaN), and ±inf as
    ±inf; in every mode."""
    key = None if mode == "append" else ["k"]
    sink = dest.table("t", key=key, mode=mode)
    nan, inf = float("nan"), float("inf")
    _write(sink, [{"k": 1, "f": 1.5}, {"k": 2, "f": nan}, {"k": 3, "f": inf}, {"k": 4, "f": -inf}])
    assert dest.query("SELECT k, f FROM {t} ORDER BY k") == [
        (1, 1.5),
        (2, None),
        (3, inf),
        (4, -inf),
    ]


_ANY_CHAR = st.characters(codec=None, exclude_categories=())
_NAMES = st.one_of(
    st.sampled_from(["day", "n", "v", "Day", "_partition", "_PAGE", "", "é" * 40]),
    st.text(_ANY_CHAR, max_size=8),
    st.integers(-3, 3),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(_ANY_CHAR, max_size=12),
    st.binary(max_size=6),
    st.dates(),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES, inner, max_size=3),
    max_leaves=8,
)


@pytest.mark.parametrize("mode", MODES)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batch=st.lists(
        st.lists(st.dictionaries(_NAMES, _VALUES, min_size=1, max_size=5), max_size=4),
        min_size=1,
        max_size=3,
    )
)
def test_whatever_records_a_source_sends_a_write_succeeds_or_fails_on_data(
    dest: Destination, mode: str, batch: list[list[dict[Any, Any]]]
) -> None:
    """Arbitrary records (any field names, huge integers, NaN, surrogates, bytes, nested
    values) either write or raise PermanentError with the table named: never another
    exception, which would stop the run; a failed batch leaves nothing behind."""
    from backfill.errors import PermanentError

    name = f"h{uuid.uuid4().hex[:8]}"
    key = ["k"] if mode != "append" else None
    # The key last: a generated field named "k" must not make two records one row.
    days = [[{**r, "k": f"{d}-{i}"} for i, r in enumerate(rows)] for d, rows in enumerate(batch)]
    sink = dest.table(name, key=key, mode=mode)
    refused: str | None = None
    try:
        _write(sink, *days)
    except PermanentError as exc:
        refused = exc.message
    if refused is not None:
        assert f"table {name}" in refused and "\n" not in refused, refused
        assert _columns(dest, name) == []
    else:
        written = dest.query(f"SELECT count(*) FROM {{{name}}}") if _columns(dest, name) else [(0,)]
        assert written == [(sum(map(len, days)),)]


def test_a_sqlite_value_longer_than_the_file_takes_fails_naming_its_field(tmp_path: Path) -> None:
    """Text or bytes over SQLite's length limit (lowered here to 1,000 bytes) fail their
    partition with the field and both sizes named, not the run."""
    from backfill.errors import PermanentError

    sink = table(f"sqlite:///{tmp_path / 'out.db'}", "t", key=["k"])
    day = daily("2013-01-01", "2013-01-01").get("2013-01-01")
    assert day is not None
    for value in ("é" * 600, b"x" * 1_001):
        conn = sink.connect()
        conn.raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000)
        conn.begin()
        with pytest.raises(
            PermanentError,
            match=r"field 'big' of table t holds a value of 1,\d+ bytes, more than the 1,000",
        ) as info:
            sink.write(conn, [Rows(day, [{"k": 1, "big": value}])])
        conn.rollback()
        conn.close()
        assert info.value.category == "bad_value"


def test_a_key_repeated_in_a_batch_keeps_its_last_record_with_nan_among_them(
    dest: Destination,
) -> None:
    """NaN stored as NULL does not change which of a repeated key's records wins: the last."""
    sink = dest.table("t", key=["k"])
    nan = float("nan")
    _write(sink, [{"k": 1, "f": nan}, {"k": 2, "f": 2.5}], [{"k": 1, "f": 1.5}, {"k": 2, "f": nan}])
    assert dest.query("SELECT k, f FROM {t} ORDER BY k") == [(1, 1.5), (2, None)]
