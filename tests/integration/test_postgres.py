"""PostgreSQL: the ledger contract on a real server, plus what only a shared ledger does."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from backfill.errors import LedgerError
from backfill.ledger import Ledger, Outcome, Status, open_ledger
from backfill.ledger.postgres import SCHEMA_VERSION, PostgresLedger
from backfill.partitions import daily
from ledger_contract import LedgerContract
from pg_support import fresh_schema


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


class TestPostgresLedger(LedgerContract):
    """The whole contract, on a fresh schema per test; two pools act as two machines."""

    @pytest.fixture
    def ledger(self, pg_url: str) -> Iterator[Ledger]:
        store = PostgresLedger(pg_url)
        yield store
        store.close()

    @pytest.fixture
    def second_ledger(self, pg_url: str, ledger: Ledger) -> Iterator[Ledger]:
        store = PostgresLedger(pg_url)
        yield store
        store.close()


def test_open_ledger_selects_postgres_by_url(pg_url: str) -> None:
    """``postgresql://`` and ``postgres://`` URLs open the PostgreSQL ledger."""
    for url in (pg_url, pg_url.replace("postgresql://", "postgres://", 1)):
        store = open_ledger(url)
        assert isinstance(store, PostgresLedger)
        store.close()


def test_read_only_open_creates_no_tables(pg_url: str) -> None:
    """Opening without create on an empty database leaves it empty."""
    store = open_ledger(pg_url, create=False)
    assert store.counts("j", ["s"])["s"].total == 0
    store.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('backfill_meta')").fetchone() == (None,)


def test_schema_version_is_recorded_and_a_newer_one_refused(pg_url: str) -> None:
    """The schema version is stored; a database written by a newer backfill is refused."""
    PostgresLedger(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM backfill_meta WHERE key = 'schema_version'")
        assert row.fetchone() == (str(SCHEMA_VERSION),)
        conn.execute("UPDATE backfill_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError, match="upgrade backfill"):
        PostgresLedger(pg_url)


def test_bad_urls_are_one_sentence_without_the_password(pg_url: str) -> None:
    """A missing database, an unreachable port and a malformed URL each name the problem."""
    base = pg_url.split("?")[0].rsplit("/", 1)[0]
    with pytest.raises(LedgerError, match="database 'no_such_db' does not exist") as missing:
        PostgresLedger(base.replace("postgres@", "postgres:hunter2@") + "/no_such_db")
    assert "hunter2" not in str(missing.value)
    with pytest.raises(LedgerError, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:1\b"):
        PostgresLedger("postgresql://postgres:hunter2@127.0.0.1:1/test")
    with pytest.raises(LedgerError, match="not a valid PostgreSQL URL") as bad:
        PostgresLedger("postgresql://postgres:hunter2@127.0.0.1:5432/test?nonsense=1")
    assert "hunter2" not in str(bad.value)


def test_two_workers_sharing_a_rate_stay_under_it_together(pg_url: str) -> None:
    """Two workers, each with its own connection and resource object, start no more than
    rate + burst requests in any one-second window between them, and a pause one of them
    sees holds the other too, once the starts it had already booked are spent."""
    import asyncio
    import time
    from concurrent.futures import ThreadPoolExecutor

    from backfill.clock import SystemClock
    from backfill.fleet import LedgerRate
    from backfill.ratelimit import Resource

    rate, burst = 20, 2
    stores = [PostgresLedger(pg_url), PostgresLedger(pg_url)]
    pools = [ThreadPoolExecutor(1), ThreadPoolExecutor(1)]
    resources = [Resource("api", rate=rate, burst=burst) for _ in stores]
    for store, pool, resource in zip(stores, pools, resources, strict=True):
        resource.share_with(LedgerRate(store, "j", resource, pool, SystemClock()))
    starts: list[float] = []

    async def request(resource: Resource) -> None:
        await resource.acquire()
        starts.append(time.monotonic())

    async def main() -> float:
        await asyncio.gather(*(request(resources[i % 2]) for i in range(50)))
        resources[0].pause(0.5)
        await asyncio.sleep(0.05)
        before = time.monotonic()
        # The other worker may still hold starts it booked before the pause (a quarter
        # second's worth at most); past those, it waits for the pause.
        for _ in range(6):
            await request(resources[1])
        return starts[-1] - before

    waited = asyncio.run(main())
    for store in stores:
        store.close()
    starts.sort()
    starts = starts[:50]
    busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert busiest <= rate + burst
    assert busiest >= rate - 2  # shared, not split in two halves
    assert waited >= 0.4


def test_a_schema_1_database_is_migrated_in_place(pg_url: str) -> None:
    """A ledger of schema 1 (no shared resource schedules) is brought up to date on open,
    keeping its partitions."""
    store = PostgresLedger(pg_url)
    store.plan("j", "s", daily("2013-01-01", "2013-01-31"))
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE backfill_stages DROP COLUMN planned")
        conn.execute("ALTER TABLE backfill_workers DROP COLUMN resources")
        conn.execute("DROP TABLE backfill_resources")
        conn.execute("ALTER TABLE backfill_partitions DROP COLUMN checks")
        conn.execute("DROP INDEX backfill_partitions_window")
        conn.execute("UPDATE backfill_meta SET value = '1' WHERE key = 'schema_version'")
    migrated = PostgresLedger(pg_url)
    assert migrated.counts("j", ["s"])["s"].pending == 31
    due, _, _, _ = migrated.take_starts("j", "api", count=2, interval=0.5, tolerance=0.0)
    assert due[0] == 0.0
    (got,) = migrated.claim("j", "s", "me", limit=1, lease_seconds=60, now=1.0, run_id="r")
    done = Outcome(got.id, Status.DONE, checks='[{"name":"min_rows(1)","ok":true}]')
    assert migrated.complete("me", [done], now=2.0) == 1
    assert migrated.plan("j", "s", daily("2013-01-01", "2013-02-01"), fingerprint="f") == 1
    assert migrated.plan("j", "s", daily("2013-01-01", "2013-02-01"), fingerprint="f") == 0
    migrated.close()


def test_the_ledger_leaves_no_prepared_statements_on_the_server(pg_url: str) -> None:
    """Every ledger statement is planned for its own arguments: no server-side prepared
    statement (whose generic plan guessed 10 rows for a batch of 1,000 and turned each
    completion into a 1,000 x 1,000 join), and none for a transaction pooler to lose."""
    store = PostgresLedger(pg_url)
    store.plan("j", "s", daily("2013-01-01", "2013-03-31"))
    for _ in range(9):
        claims = store.claim("j", "s", "me", limit=10, lease_seconds=60, now=1.0, run_id="r")
        assert store.complete("me", [Outcome(c.id, Status.DONE) for c in claims], now=2.0) == 10
    prepared = store._run(
        lambda conn: conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    )
    assert prepared == (0,)
    assert store.counts("j", ["s"])["s"].done == 90
    store.close()


def test_workers_sharing_a_quota_start_no_more_than_it_between_them(pg_url: str) -> None:
    """Two workers with 10 requests each on a resource of 50/s and 12/min start no more
    than 12 between them in the first seconds: the rest wait for the window, though each
    worker alone stays within the quota."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from backfill.clock import SystemClock
    from backfill.fleet import LedgerRate
    from backfill.ratelimit import Resource

    stores = [PostgresLedger(pg_url), PostgresLedger(pg_url)]
    resources = [Resource("api", rate=50, limits=["12/min"]) for _ in stores]
    for store, resource in zip(stores, resources, strict=True):
        resource.share_with(LedgerRate(store, "j", resource, ThreadPoolExecutor(1), SystemClock()))

    async def main() -> int:
        tasks = [asyncio.ensure_future(resources[i % 2].acquire()) for i in range(20)]
        done, pending = await asyncio.wait(tasks, timeout=2.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(done)

    started = asyncio.run(main())
    for store in stores:
        store.close()
    # Each worker alone would allow all its 10. A start a busy worker finds over half
    # an interval late is dropped, yet counted: under load a few of the 12 may be.
    assert 6 <= started <= 12


def test_a_run_whose_state_database_stays_gone_stops_with_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The state database goes away mid-run for longer than the reconnect window: the
    ledger calls retry for the window, then the run stops with one sentence naming the
    database and the time, the calls after it failing at once rather than a window each."""
    import asyncio
    import time

    from backfill import Job
    from backfill.runner import ExitCode
    from backfill.testing import run_job
    from pg_support import private_cluster

    monkeypatch.setattr(PostgresLedger, "retry_for", 3.0)
    with private_cluster() as cluster:
        ledger = PostgresLedger(cluster.url)
        job = Job("gone", partitions=daily("2013-01-01", "2013-12-31"))
        stopped: list[float] = []

        @job.stage(concurrency=2)
        async def fetch(ctx: object, partition: object) -> None:
            if partition.key == "2013-01-20" and not stopped:  # type: ignore[attr-defined]
                await asyncio.to_thread(cluster.pg_ctl, "stop", "-m", "fast")
                stopped.append(time.monotonic())
            await asyncio.sleep(0.01)

        # The run ends with a fatal result (its summary still prints), not an exception.
        result = run_job(job, ledger)
        took = time.monotonic() - stopped[0]
        ledger.close()
    assert result.exit_code == ExitCode.USAGE
    message = result.message or ""
    assert message.startswith("lost the state database postgresql://postgres@127.0.0.1:")
    assert "for more than 3 s" in message and "\n" not in message
    assert took < 20 * PostgresLedger.retry_for, took  # not a window per call, nor forever
