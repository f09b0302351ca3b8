"""Lease bookkeeping: until when a worker may write without asking the ledger, and what
it does when a lease passed to another worker."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest

from backfill import Job, daily
from backfill.leases import LeaseBook
from backfill.ledger import Ledger, open_ledger
from backfill.testing import MemorySink, run_job


def test_a_proof_vouches_for_two_thirds_of_a_lease() -> None:
    """A lease proven at t is certain until t + 2/3 of the lease, then it must be asked
    for again; unknown claims are never certain."""
    book = LeaseBook(60.0)
    book.proven([1, 2], since=100.0)
    assert book.certain(1, now=139.9)
    assert not book.certain(1, now=140.0)
    assert not book.certain(3, now=100.0)
    book.forget(2)
    assert not book.certain(2, now=101.0)
    assert len(book) == 1


def test_a_renewal_extends_only_leases_still_certain_when_it_finished() -> None:
    """A renewal that finished while a lease was certain pushes it back; one that came
    too late (the worker was stalled) leaves it uncertain, since it may have passed on
    before the renewal reached the ledger."""
    book = LeaseBook(60.0)
    book.proven([1], since=0.0)  # certain until 40
    book.proven([2], since=-30.0)  # certain until 10
    book.renewed(since=20.0, done=20.5)
    assert book.certain(1, now=59.0)  # 20 + 40
    assert not book.certain(2, now=11.0)


class PassedOn:
    """A ledger whose first ``begin`` finds one partition taken over by another worker,
    as after a stall past its lease."""

    def __init__(self, inner: Ledger, key: str) -> None:
        self._inner = inner
        self._key = key
        self._ids: dict[int, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        claims = self._inner.claim(*args, **kwargs)
        self._ids.update((c.id, c.key) for c in claims)
        return claims

    def begin(self, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        held = self._inner.begin(owner, leases)
        return {i for i in held if self._ids.get(i) != self._key}


def test_a_partition_whose_lease_passed_on_before_it_began_is_not_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A claimed partition the ledger no longer gives this worker when it begins is
    neither run nor written, and the worker says so once."""
    job = Job("passed", partitions=daily("2013-01-01", "2013-01-06"))
    ran: list[str] = []

    @job.stage(concurrency=2)
    async def fetch(ctx: Any, partition: Any) -> list[dict[str, str]]:
        ran.append(partition.key)
        return [{"day": partition.key}]

    sink = MemorySink(key=["day"])
    ledger = PassedOn(open_ledger(":memory:"), "2013-01-04")
    with caplog.at_level(logging.WARNING, logger="backfill.engine.lease"):
        run_job(job, ledger, sink=sink)  # type: ignore[arg-type]
    assert "2013-01-04" not in ran
    assert sorted(ran) == ["2013-01-01", "2013-01-02", "2013-01-03", "2013-01-05", "2013-01-06"]
    assert "2013-01-04" not in {row["day"] for row in sink.rows.values()}
    lost = [r for r in caplog.records if "passed to another worker" in r.getMessage()]
    assert len(lost) == 1
