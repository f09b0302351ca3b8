"""Reading the PostgreSQL ledger read-only: no table created, nothing migrated or written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backfill.errors import LedgerError
from backfill.ledger import NoState, open_ledger, open_reader
from backfill.ledger.postgres import PostgresLedger
from backfill.partitions import daily
from pg_support import fresh_schema

JOB = """
from backfill import Job, daily

job = Job("pg_read", partitions=daily("2013-01-01", "2013-01-10"))


@job.stage
async def fetch(ctx, partition):
    return [{"day": partition.key}]
"""


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


def test_a_database_without_the_ledger_is_no_state_and_stays_empty(pg_url: str) -> None:
    """A reader on a database without backfill tables says nothing has run, adds none."""
    with pytest.raises(NoState, match="nothing has run yet"):
        open_reader(pg_url)
    assert tables(pg_url) == []


def test_a_reader_reads_the_ledger_and_the_server_refuses_its_writes(pg_url: str) -> None:
    """Every transaction of a reader is read-only: a write fails and changes nothing."""
    writer = open_ledger(pg_url)
    writer.plan("j", "s", daily("2013-01-01", "2013-01-03").partitions())
    writer.close()
    reader = open_reader(pg_url)
    try:
        assert reader.counts("j", ["s"])["s"].pending == 3
        with pytest.raises(LedgerError, match="read-only transaction"):
            reader.plan("j", "t", daily("2013-01-01", "2013-01-03").partitions())
    finally:
        reader.close()
    check = open_reader(pg_url)
    try:
        assert check.counts("j", ["t"])["t"].total == 0
    finally:
        check.close()


def test_an_older_ledger_is_not_migrated_by_a_reader(pg_url: str) -> None:
    """A ledger of an older schema version is refused by a reader and left as it was."""
    PostgresLedger(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE backfill_meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError, match="run `backfill run` once to upgrade it"):
        open_reader(pg_url)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT value FROM backfill_meta WHERE key = 'schema_version'")
        assert row.fetchone() == ("2",)


def test_read_commands_create_no_table(pg_url: str, tmp_path: Path) -> None:
    """plan, status, coverage and runs on an empty database create no table."""
    (tmp_path / "job.py").write_text(JOB)
    for command in ("plan", "status", "coverage", "runs"):
        result = subprocess.run(
            [sys.executable, "-m", "backfill", command, "job.py", "--state", pg_url],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        assert "nothing has run yet" in result.stderr
    assert tables(pg_url) == []
