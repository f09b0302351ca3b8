"""SQL stages on real DuckDB and PostgreSQL: a partition's rows replaced inside the
warehouse in one transaction, dependencies with a lookback, checks on the target that
roll a partition back, an INSERT of the user's own by a date column."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from backfill import Job, checks, daily, needs
from backfill.errors import ConfigError
from backfill.ledger import Status, open_ledger
from backfill.testing import run_job
from pg_support import fresh_schema

DAYS = 12


def _seed(url: str) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS events"))
        conn.execute(sa.text("CREATE TABLE events (day DATE, carrier VARCHAR, delay INTEGER)"))
        rows = [
            {"day": dt.date(2013, 1, 1) + dt.timedelta(days=d), "carrier": c, "delay": d * n}
            for d in range(DAYS)
            for c in ("AA", "UA")
            for n in range(1, 4)
        ]
        conn.execute(sa.text("INSERT INTO events VALUES (:day, :carrier, :delay)"), rows)
    engine.dispose()


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(sql))]
    engine.dispose()
    return rows


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "duckdb":
        url = f"duckdb:///{tmp_path / 'w.duckdb'}"
        _seed(url)
        yield url
        return
    with fresh_schema() as url:
        _seed(url)
        yield url


def _job(url: str, **stage: Any) -> Job:
    job = Job("sqlstage", partitions=daily("2013-01-01", f"2013-01-{DAYS:02d}"))
    job.warehouse("warehouse", url, concurrency=3)
    job.sql_stage(
        "delays",
        sql="SELECT CAST(:day AS DATE) AS day, carrier, sum(delay) AS delay, count(*) AS n "
        "FROM events WHERE day = :day GROUP BY carrier",
        target="daily_delays",
        **stage,
    )
    job.sql_stage(
        "rolling",
        sql="SELECT CAST(:day AS DATE) AS day, carrier, sum(delay) AS delay_3d "
        "FROM daily_delays WHERE day > CAST(:day AS DATE) - 3 AND day <= :day GROUP BY carrier",
        target="rolling",
        needs=[needs("delays", lookback=2)],
    )
    return job


def test_sql_stages_replace_each_partition_and_equal_one_direct_query(warehouse: str) -> None:
    """Two SQL stages (one with a 2-day lookback) fill their tables exactly, a second run
    after a reset changes nothing, and the rolling table equals one direct aggregate."""
    ledger = open_ledger(":memory:")
    result = run_job(_job(warehouse), ledger)
    assert result.exit_code == 0, result.message
    assert result.records == 2 * DAYS * 2
    direct = _query(
        warehouse,
        "SELECT a.day, a.carrier, sum(b.delay) FROM "
        "(SELECT DISTINCT day, carrier FROM events) a JOIN events b "
        "ON b.carrier = a.carrier AND b.day > a.day - 3 AND b.day <= a.day "
        "GROUP BY a.day, a.carrier ORDER BY 1, 2",
    )
    table = _query(warehouse, "SELECT day, carrier, delay_3d FROM rolling ORDER BY 1, 2")
    assert [(d, c, int(v)) for d, c, v in table] == [(d, c, int(v)) for d, c, v in direct]
    # Redo every partition: each replaces its own rows, nothing doubles.
    ledger.reset("sqlstage", ["delays", "rolling"])
    assert run_job(_job(warehouse), ledger).exit_code == 0
    assert _query(warehouse, "SELECT count(*), count(DISTINCT day) FROM daily_delays") == [
        (2 * DAYS, DAYS)
    ]
    assert _query(warehouse, "SELECT count(*) FROM rolling") == [(2 * DAYS,)]


def test_a_failing_check_rolls_its_partition_back(warehouse: str) -> None:
    """A check on the target fails its partition with its category and leaves none of
    its rows; the other partitions are written."""
    job = Job("checked", partitions=daily("2013-01-01", "2013-01-04"))
    job.warehouse("warehouse", warehouse)
    job.sql_stage(
        "big",
        sql="SELECT CAST(:day AS DATE) AS day, carrier, delay FROM events "
        "WHERE day = :day AND delay >= 3",
        target="big_delays",
        checks=[checks.min_rows(1), checks.max_null_rate("carrier", 0.0)],
    )
    ledger = open_ledger(":memory:")
    result = run_job(job, ledger)
    assert result.exit_code == 1
    failed = ledger.entries("checked", "big", status=Status.FAILED)
    # Day 1 has delays 0; day 2 has delays 1..3, so one row of each carrier passes.
    assert [e.key for e in failed] == ["2013-01-01"]
    assert failed[0].error_category == "INSUFFICIENT_DATA"
    assert "0 row(s), at least 1 expected" in (failed[0].error_message or "")
    days = _query(warehouse, "SELECT DISTINCT day FROM big_delays ORDER BY 1")
    assert [d for (d,) in days] == [dt.date(2013, 1, d) for d in (2, 3, 4)]


def test_an_insert_of_ones_own_replaces_by_a_date_column(warehouse: str) -> None:
    """An INSERT INTO the user's table deletes the partition's rows by partition_column
    first: run twice, every row is there once."""
    for sql in ("DROP TABLE IF EXISTS mine", "CREATE TABLE mine (day DATE, total INTEGER)"):
        engine = sa.create_engine(warehouse.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            conn.execute(sa.text(sql))
        engine.dispose()
    job = Job("mine", partitions=daily("2013-01-01", "2013-01-05"))
    job.warehouse("warehouse", warehouse)
    job.sql_stage(
        "totals",
        sql="INSERT INTO mine SELECT day, sum(delay) FROM events WHERE day = :day GROUP BY day",
        target="mine",
        partition_column="day",
    )
    ledger = open_ledger(":memory:")
    assert run_job(job, ledger).exit_code == 0
    ledger.reset("mine", ["totals"])
    assert run_job(job, ledger).exit_code == 0
    assert _query(warehouse, "SELECT count(*), count(DISTINCT day) FROM mine") == [(5, 5)]


def test_sql_stage_declarations_are_checked() -> None:
    """A statement other than SELECT/INSERT, an INSERT without a date column, and a
    missing warehouse are one sentence each."""
    job = Job("bad", partitions=daily("2013-01-01", "2013-01-02"))
    with pytest.raises(ConfigError, match=r"declare one with job\.warehouse"):
        job.sql_stage("a", sql="SELECT 1", target="t")
    job.warehouse("warehouse", "duckdb:///:memory:")
    with pytest.raises(ConfigError, match="must be a SELECT"):
        job.sql_stage("b", sql="DELETE FROM t", target="t")
    with pytest.raises(ConfigError, match="partition_column"):
        job.sql_stage("c", sql="INSERT INTO t SELECT 1", target="t")


def test_a_lost_lease_writes_nothing_of_its_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQL stage proves its lease just before its transaction: an attempt whose lease is
    found lost runs no statement, and the partition is run again by its next claim."""
    from backfill.engine.lease import LeaseKeeper
    from backfill.leases import LeaseLost
    from backfill.sources.sql import SqlClient

    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    _seed(url)
    lost: list[str] = []
    transactions: list[str] = []
    prove = LeaseKeeper.prove

    async def losing(self: LeaseKeeper, claim: Any) -> None:
        if claim.key == "2013-01-02" and not lost:
            lost.append(claim.key)
            raise LeaseLost(claim.key)
        await prove(self, claim)

    transaction = SqlClient.transaction

    async def counted(self: SqlClient, statements: Any, **kwargs: Any) -> list[int]:
        transactions.append(str(statements[0][1]["key"]))
        return await transaction(self, statements, **kwargs)

    monkeypatch.setattr(LeaseKeeper, "prove", losing)
    monkeypatch.setattr(SqlClient, "transaction", counted)
    job = Job("lost", partitions=daily("2013-01-01", "2013-01-03"), lease_seconds=1.0)
    job.warehouse("warehouse", url)
    job.sql_stage(
        "delays",
        sql="SELECT CAST(:day AS DATE) AS day, sum(delay) AS delay FROM events WHERE day = :day",
        target="t",
    )
    ledger = open_ledger(":memory:")
    first = run_job(job, ledger)
    # The partition is left to whoever holds it now (here: the next run).
    assert first.exit_code == 1, first.message
    assert lost == ["2013-01-02"]
    assert sorted(transactions) == ["2013-01-01", "2013-01-03"]
    assert _query(url, "SELECT count(*) FROM t") == [(2,)]
    time.sleep(1.1)  # its lease runs out
    assert run_job(job, ledger).exit_code == 0
    assert sorted(transactions) == ["2013-01-01", "2013-01-02", "2013-01-03"]
    assert _query(url, "SELECT count(*) FROM t") == [(3,)]
