"""ctx.sql on real DuckDB, SQLite and PostgreSQL: bound parameters, records and batches,
the resource's concurrency, timeouts cancelled on the server, errors in one line."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
from datetime import date
from pathlib import Path

import psycopg
import pytest

from backfill import Job, daily
from backfill.errors import ConfigError, FatalError, PermanentError
from backfill.ledger import Status, open_ledger
from backfill.partitions import Grain, Partition
from backfill.sources.sql import SqlClient, partition_params, query_params
from backfill.testing import run_job
from pg_support import fresh_schema

DAY = Partition("2024-01-02", date(2024, 1, 2), date(2024, 1, 2), Grain.DAY, (("tour", "atp"),))


def _duckdb(tmp_path: Path) -> str:
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    import duckdb

    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        "CREATE TABLE t AS SELECT DATE '2024-01-01' + i::INT AS day, i AS n FROM range(10) r(i)"
    )
    con.close()
    return url


def test_query_params_skip_casts_quotes_and_comments() -> None:
    """Only real :names are parameters, as SQLAlchemy reads them: not a name cast with ::
    (write CAST(:a AS INT)), quoted text or comments."""
    sql = "SELECT :a::int, '10:30', \"x:y\" -- :c\n /* :d */ FROM t WHERE d = :day AND e = :a"
    assert query_params(sql) == ["day", "a"]


def test_partition_params_bind_the_window_and_dimensions() -> None:
    """:day, :start, :end (the day after the last) and each dimension are bound."""
    params = partition_params(DAY)
    assert params["day"] == date(2024, 1, 2)
    assert params["start"] == date(2024, 1, 2)
    assert params["end"] == date(2024, 1, 3)
    assert params["tour"] == "atp"
    assert params["begins"] == dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    assert params["ends"] == dt.datetime(2024, 1, 3, tzinfo=dt.UTC)


def test_duckdb_records_and_stream_with_bound_partition(tmp_path: Path) -> None:
    """Records and batches come back with the partition's parameters bound, and the
    client's figures count the queries and rows."""
    client = SqlClient(_duckdb(tmp_path), timeout=30)

    async def go() -> tuple[list[dict[str, object]], list[int]]:
        sql = client.bound(DAY)
        rows = await sql.records("SELECT n FROM t WHERE day >= :start AND day < :end")
        sizes = [len(b) async for b in sql.stream("SELECT n FROM t WHERE day >= :day", batch=3)]
        await client.aclose()
        return rows, sizes

    rows, sizes = asyncio.run(go())
    assert rows == [{"n": 1}]
    assert sizes == [3, 3, 3]
    assert client.stats.queries == 2 and client.stats.rows == 10


def test_missing_parameter_is_named(tmp_path: Path) -> None:
    """A :name nothing binds is a ConfigError that names it and what is bound."""
    client = SqlClient(_duckdb(tmp_path))

    async def go() -> None:
        try:
            await client.bound(DAY).records("SELECT * FROM t WHERE n = :threshold")
        finally:
            await client.aclose()

    with pytest.raises(ConfigError, match=r":threshold, which nothing binds.*:day"):
        asyncio.run(go())


def test_syntax_error_is_the_databases_one_line(tmp_path: Path) -> None:
    """The database's own message, one line, fails the partition (permanent)."""
    client = SqlClient(_duckdb(tmp_path))

    async def go() -> None:
        try:
            await client.records("SELEC 1")
        finally:
            await client.aclose()

    with pytest.raises(PermanentError) as caught:
        asyncio.run(go())
    assert caught.value.category == "sql"
    assert "syntax error" in caught.value.message and "\n" not in caught.value.message


def test_unknown_dialect_is_one_sentence() -> None:
    """An unknown dialect is a ConfigError naming it, at declaration."""
    job = Job("w", partitions=daily("2024-01-01", "2024-01-02"))
    with pytest.raises(ConfigError, match="unknown SQL dialect 'nosuchdb'"):
        job.warehouse("warehouse", "nosuchdb://x/y")


def test_duckdb_timeout_interrupts_and_the_connection_stays_healthy(tmp_path: Path) -> None:
    """A DuckDB query past its timeout is interrupted, fails as timeout with its duration,
    and the same pooled connection answers the next query at once."""
    client = SqlClient(_duckdb(tmp_path), pool_size=1)

    async def go() -> tuple[PermanentError, float, list[dict[str, object]]]:
        started = time.monotonic()
        try:
            await client.records("SELECT count(*) FROM range(100000000000) a", timeout=0.5)
        except PermanentError as exc:
            error = exc
        took = time.monotonic() - started
        after = await client.records("SELECT 42 AS x", timeout=30)
        await client.aclose()
        return error, took, after

    error, took, after = asyncio.run(go())
    assert error.category == "timeout"
    assert "timeout of 0.5 s" in error.message and "cancelled on the server after" in error.message
    assert took < 15  # bounds a hang only: the interrupt came back
    assert after == [{"x": 42}]
    assert client.stats.timeouts == 1


def test_sqlite_records_and_timeout(tmp_path: Path) -> None:
    """SQLite answers through the same client, and a long query is interrupted."""
    client = SqlClient(f"sqlite:///{tmp_path / 's.db'}", pool_size=1)
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"

    async def go() -> tuple[str, list[dict[str, object]]]:
        try:
            await client.records(slow, timeout=0.3)
        except PermanentError as exc:
            category = exc.category
        ok = await client.bound(DAY).records("SELECT :day AS d, :tour AS t")
        await client.aclose()
        return category, ok

    category, ok = asyncio.run(go())
    assert category == "timeout"
    assert ok == [{"d": "2024-01-02", "t": "atp"}]


def _active(url: str, marker: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND state = 'active'"
            " AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_postgres_timeout_is_gone_from_the_server_within_a_second() -> None:
    """A PostgreSQL query past its timeout leaves pg_stat_activity within a second of it,
    fails as timeout, and its pooled connection answers the next query."""
    with fresh_schema() as url:
        client = SqlClient(url, pool_size=1)
        seen: list[tuple[float, int]] = []
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                seen.append((time.monotonic() - started, _active(url, "pg_sleep(30) -- t1")))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()

        async def go() -> tuple[str, list[dict[str, object]]]:
            try:
                await client.records("SELECT pg_sleep(30) -- t1", timeout=1.0)
            except PermanentError as exc:
                category = exc.category
            ok = await client.records("SELECT 7 AS x")
            return category, ok

        try:
            category, ok = asyncio.run(go())
            # Keep sampling for a while after the timeout and its second.
            time.sleep(max(0.0, started + 3.0 - time.monotonic()))
        finally:
            stop.set()
            sampler.join()
            asyncio.run(client.aclose())
        assert category == "timeout"
        assert ok == [{"x": 7}]
        assert any(n == 1 for _, n in seen), "the query was seen running"
        # After its timeout (1 s) plus one second, never again on the server.
        assert all(n == 0 for at, n in seen if at > 2.0)
        assert seen[-1][0] > 2.0


def test_postgres_unreachable_warehouse_is_fatal_in_one_line() -> None:
    """A warehouse nobody answers at stops the run with one line naming it (no password)."""
    client = SqlClient("postgresql://me:hunter2@127.0.0.1:1/db")

    async def go() -> None:
        try:
            await client.records("SELECT 1")
        finally:
            await client.aclose()

    with pytest.raises(FatalError) as caught:
        asyncio.run(go())
    assert "cannot reach warehouse" in caught.value.message
    assert "hunter2" not in caught.value.message and "\n" not in caught.value.message


def test_postgres_concurrency_holds_on_the_server() -> None:
    """With concurrency 3, pg_stat_activity never shows more than 3 of the job's queries,
    and it does show 3 (the limit is used)."""
    with fresh_schema() as url:
        job = Job("conc", partitions=daily("2024-01-01", "2024-01-12"))
        job.warehouse("warehouse", url, concurrency=3)

        @job.stage(resource="warehouse", concurrency=12)
        async def q(ctx, partition):  # type: ignore[no-untyped-def]
            return await ctx.sql.records("SELECT pg_sleep(0.4), :day AS d -- conc-marker")

        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(_active(url, "conc-marker"))
                time.sleep(0.03)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = run_job(job)
        finally:
            stop.set()
            sampler.join()
        assert result.exit_code == 0, result.message
        assert max(samples) == 3
        figures = result.warehouses["warehouse"]
        assert figures["queries"] == 12 and figures["rows"] == 12
        assert figures["most_at_once"] == 3


def test_stage_timeout_failed_partition_does_not_hold_the_next(tmp_path: Path) -> None:
    """Slow days fail as timeout and the others finish: the timed-out queries give their
    slot back (concurrency 1, so a held slot would time the rest out)."""
    url = _duckdb(tmp_path)
    job = Job("slow", partitions=daily("2024-01-01", "2024-01-06"))
    # Generous for the fast days on a loaded machine; the slow ones sleep far past it.
    job.warehouse("warehouse", url, concurrency=1, timeout=3)

    @job.stage(resource="warehouse", concurrency=6)
    async def q(ctx, partition):  # type: ignore[no-untyped-def]
        pause = 600 if partition.start.day in (2, 4) else 0
        return await ctx.sql.records(f"SELECT pg_sleep({pause}) AS z, :day AS d")

    ledger = open_ledger(":memory:")
    result = run_job(job, ledger)
    assert result.exit_code == 1
    entries = {e.key: e for e in ledger.entries("slow", "q")}
    failed = {k for k, e in entries.items() if e.status is Status.FAILED}
    assert failed == {"2024-01-02", "2024-01-04"}
    assert all(entries[k].error_category == "timeout" for k in failed)
    assert sum(e.status is Status.DONE for e in entries.values()) == 4


def test_postgres_stream_in_batches_under_a_timeout() -> None:
    """A PostgreSQL stream under a timeout reads every batch (its server-side cursor stays
    open), and the stage's own timeout cancelling a query stops it on the server."""
    with fresh_schema() as url:
        client = SqlClient(url, pool_size=2, timeout=30)

        async def go() -> tuple[list[int], str]:
            sizes = [
                len(batch)
                async for batch in client.stream(
                    "SELECT g FROM generate_series(1, 25) AS g", batch=10
                )
            ]
            task = asyncio.create_task(client.records("SELECT pg_sleep(30) -- t2"))
            await asyncio.sleep(0.5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.3)
            ok = await client.records("SELECT 'fine' AS x")
            await client.aclose()
            return sizes, str(ok[0]["x"])

        sizes, ok = asyncio.run(go())
        assert sizes == [10, 10, 5]
        assert ok == "fine"
        assert _active(url, "pg_sleep(30) -- t2") == 0


def test_postgres_warehouse_without_psycopg_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PostgreSQL warehouse without psycopg installed is one sentence naming the extra."""
    import sys

    from backfill.sources.sql import check_warehouse_url

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError, match=r"pip install 'backfill\[postgres\]'"):
        check_warehouse_url("postgresql://me:secret@db/dw")


class _BigQueryCursor:
    """What google-cloud-bigquery's DB-API cursor keeps of a finished query: its job."""

    def __init__(self, scanned: int) -> None:
        self._query_job = type("QueryJob", (), {"total_bytes_processed": scanned})()


def test_scanned_bytes_are_read_where_the_driver_keeps_them() -> None:
    """BigQuery's cursor holds its query job and the bytes it processed; a cursor that
    says nothing (psycopg's, DuckDB's) gives None, not 0."""
    from backfill.sources.sql import reported_bytes

    assert reported_bytes(_BigQueryCursor(10_485_760)) == 10_485_760
    assert reported_bytes(object()) is None


def test_a_bytes_budget_stops_the_run_once_scanned_and_the_rest_waits(tmp_path: Path) -> None:
    """Each query scans 10 MB (as the job's reader says): with a budget of 35 MB, the
    fourth query is the last to start; the run stops as for a fatal error, naming the
    budget and what was scanned, leaves the other days pending (none failed), and the
    run's figures count the bytes. A larger budget then finishes the rest."""
    url = _duckdb(tmp_path)
    ledger = open_ledger(f"sqlite:///{tmp_path / 'state.db'}")

    def make(budget: str) -> Job:
        job = Job("budget", partitions=daily("2024-01-01", "2024-01-10"))
        job.warehouse(
            "warehouse", url, concurrency=1, bytes_budget=budget, scanned=lambda cursor: 10**7
        )

        @job.stage(resource="warehouse", concurrency=1)
        async def q(ctx, partition):  # type: ignore[no-untyped-def]
            return await ctx.sql.records("SELECT n FROM t WHERE day = :day")

        return job

    first = run_job(make("35MB"), ledger)
    assert first.exit_code != 0
    assert "bytes_budget of 35 MB" in (first.message or "")
    assert "scanned 40 MB" in (first.message or "")
    counts = ledger.counts("budget", ["q"])["q"]
    assert (counts.done, counts.failed, counts.pending) == (4, 0, 6)
    assert first.warehouses["warehouse"]["bytes_scanned"] == 4 * 10**7
    second = run_job(make("1GB"), ledger)
    assert second.exit_code == 0, second.message
    assert ledger.counts("budget", ["q"])["q"].done == 10
    assert second.warehouses["warehouse"]["bytes_scanned"] == 6 * 10**7


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ("lots", "bytes_budget 'lots' must be a number of bytes or a size such as '500GB'"),
        ("12 parsecs", "must be a number of bytes"),
        (0, "must be more than 0 bytes"),
        ("0GB", "must be more than 0 bytes"),
    ],
)
def test_a_bad_bytes_budget_is_one_sentence_and_declares_nothing(
    budget: object, message: str
) -> None:
    job = Job("j", partitions=daily("2024-01-01", "2024-01-02"))
    with pytest.raises(ConfigError, match=message) as info:
        job.warehouse("warehouse", "duckdb:///:memory:", bytes_budget=budget)  # type: ignore[arg-type]
    assert "'warehouse'" in str(info.value) and "\n" not in str(info.value)
    assert "warehouse" not in job.resources


def test_sizes_read_in_decimal_and_binary_units() -> None:
    from backfill.sources.sql import format_bytes, parse_bytes

    assert parse_bytes("500GB", "b") == 500 * 10**9
    assert parse_bytes("2 TiB", "b") == 2 * 1024**4
    assert parse_bytes("1.5mb", "b") == 1_500_000
    assert parse_bytes(4096, "b") == 4096
    assert format_bytes(1.5e9) == "1.5 GB" and format_bytes(40) == "40 B"
