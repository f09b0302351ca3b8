"""Pauses a source imposes, stored in the state (PostgreSQL, SQLite): capped, releasable."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backfill.clock import SystemClock
from backfill.fleet import LedgerRate
from backfill.ledger import SharedLimits
from backfill.ledger.postgres import PostgresLedger
from backfill.ledger.sqlite import SQLiteLedger
from backfill.ratelimit import Resource
from pg_support import fresh_schema

THIRTY_ONE_YEARS = 999_999_999.0


@pytest.fixture(params=["postgresql", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedLimits]:
    """Each state that keeps resource schedules: a PostgreSQL schema, a SQLite file."""
    if request.param == "sqlite":
        store = SQLiteLedger(tmp_path / "state.db")
        yield store
        store.close()
        return
    with fresh_schema() as url:
        pg = PostgresLedger(url)
        yield pg
        pg.close()


def test_a_stored_pause_longer_than_the_cap_is_cut_to_it(ledger: SharedLimits) -> None:
    """A pause of 31 years stored by an earlier run delays the next start by the cap
    (60 s here), not 31 years, and is stored cut."""
    ledger.take_starts("j", "api", count=1, interval=0.5, tolerance=0.0)
    ledger.pause_resource("j", "api", THIRTY_ONE_YEARS)
    due, paused, _, _ = ledger.take_starts(
        "j", "api", count=2, interval=0.5, tolerance=0.0, max_pause=60.0
    )
    assert 59.0 < paused <= 60.0
    assert 59.0 < due[0] <= 60.0
    assert due[1] == pytest.approx(due[0] + 0.5)
    _, paused_again, _, _ = ledger.take_starts("j", "api", count=1, interval=0.5, tolerance=0.0)
    assert paused_again <= 60.0


def test_a_worker_holds_a_fleet_pause_no_longer_than_its_max_wait(
    ledger: SharedLimits,
) -> None:
    """A worker whose resource has max_wait=30 takes a stored 31-year pause as 30 s, and
    tells its listeners what was asked and what it waits."""
    ledger.take_starts("j", "api", count=1, interval=0.1, tolerance=0.0)
    ledger.pause_resource("j", "api", THIRTY_ONE_YEARS)
    resource = Resource("api", rate="10/s", max_wait=30.0)
    told: list[str] = []
    resource.subscribe(lambda name, what, seconds, kind: told.append(what))
    pool = ThreadPoolExecutor(1)
    clock = SystemClock()
    resource.share_with(LedgerRate(ledger, "j", resource, pool, clock))

    async def take() -> None:
        # The worker takes starts and sees the fleet's pause; its first start lies past
        # the pause, so stop waiting for it once the pause is known.
        task = asyncio.ensure_future(resource.acquire())
        for _ in range(3000):
            if resource.paused_until > clock.monotonic():
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(take())
    pool.shutdown()
    assert 0 < resource.paused_until - clock.monotonic() <= 30.0
    assert told and "seen by another worker" in told[0]


def test_resume_resource_ends_a_stored_pause_and_the_schedule_behind_it(
    ledger: SharedLimits,
) -> None:
    """Releasing a paused resource reports what was left of the pause; the next start is
    due at once."""
    ledger.take_starts("j", "api", count=1, interval=0.5, tolerance=0.0)
    ledger.pause_resource("j", "api", 3000.0)
    ledger.take_starts("j", "api", count=3, interval=0.5, tolerance=0.0)
    left = ledger.resume_resource("j", "api")
    assert left is not None
    assert 2900.0 < left <= 3000.0
    due, paused, _, _ = ledger.take_starts("j", "api", count=1, interval=0.5, tolerance=0.0)
    assert due == [0.0]
    assert paused <= 0.0
    assert ledger.resume_resource("j", "api") is None


def test_resume_resource_of_a_resource_never_used_says_it_was_not_paused(
    ledger: SharedLimits,
) -> None:
    """A resource without a stored schedule was not paused: None, nothing written."""
    assert ledger.resume_resource("j", "never") is None
