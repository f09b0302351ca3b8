"""Outcomes buffered on their way to the ledger (backfill.engine.outcomes)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from backfill.clock import SystemClock
from backfill.engine.db import LedgerThread
from backfill.engine.outcomes import FLUSH_SIZE, Outcomes
from backfill.errors import LedgerError
from backfill.ledger import Outcome, Status


class Completes:
    """A ledger that only records ``complete`` calls; it may refuse some, or fail."""

    def __init__(self, refuse: int = 0, fail: bool = False) -> None:
        self.batches: list[list[Outcome]] = []
        self.refuse = refuse
        self.fail = fail

    def complete(self, owner: str, outcomes: Sequence[Outcome], *, now: float) -> int:
        if self.fail:
            raise LedgerError("the ledger's disk is full")
        self.batches.append(list(outcomes))
        return len(outcomes) - self.refuse


class Calls:
    """What the buffer told its owner."""

    def __init__(self) -> None:
        self.flushed = 0
        self.lost: list[str] = []
        self.errors: list[BaseException] = []
        self.forgotten: list[int] = []


def buffer(ledger: Completes, calls: Calls) -> Outcomes:
    clock = SystemClock()
    return Outcomes(
        ledger,  # type: ignore[arg-type]
        LedgerThread(clock),
        "me",
        clock,
        on_flushed=lambda: setattr(calls, "flushed", calls.flushed + 1),
        on_lost=calls.lost.append,
        on_error=calls.errors.append,
        forget=calls.forgotten.append,
    )


def done(claim_id: int) -> Outcome:
    return Outcome(claim_id, Status.DONE)


def test_outcomes_wait_in_the_buffer_until_a_flush_writes_them_in_one_call() -> None:
    """Recorded outcomes reach the ledger together, in one call, at the flush."""
    ledger, calls = Completes(), Calls()

    async def scenario() -> None:
        outcomes = buffer(ledger, calls)
        for claim_id in (1, 2, 3):
            await outcomes.record(done(claim_id))
        assert ledger.batches == []
        assert len(outcomes) == 3
        await outcomes.flush()
        await outcomes.flush()

    asyncio.run(scenario())
    assert [[o.id for o in b] for b in ledger.batches] == [[1, 2, 3]]
    assert calls.flushed == 1
    assert calls.forgotten == [1, 2, 3]


def test_a_full_batch_is_flushed_in_the_background() -> None:
    """The FLUSH_SIZE-th outcome starts a flush without waiting for the flush loop."""
    ledger, calls = Completes(), Calls()

    async def scenario() -> None:
        outcomes = buffer(ledger, calls)
        for claim_id in range(FLUSH_SIZE):
            await outcomes.record(done(claim_id))
        await outcomes.settle()

    asyncio.run(scenario())
    assert [len(b) for b in ledger.batches] == [FLUSH_SIZE]


def test_a_soon_outcome_is_flushed_at_once() -> None:
    """``soon=True`` writes the outcome without waiting for a full batch."""
    ledger, calls = Completes(), Calls()

    async def scenario() -> None:
        outcomes = buffer(ledger, calls)
        await outcomes.record(done(7), soon=True)
        await outcomes.settle()

    asyncio.run(scenario())
    assert [[o.id for o in b] for b in ledger.batches] == [[7]]


def test_outcomes_the_ledger_refuses_are_reported_as_lost() -> None:
    """When the ledger applies fewer outcomes than it was given (leases passed on), the
    owner hears how many."""
    ledger, calls = Completes(refuse=2), Calls()

    async def scenario() -> None:
        outcomes = buffer(ledger, calls)
        for claim_id in (1, 2, 3):
            await outcomes.record(done(claim_id))
        await outcomes.flush()

    asyncio.run(scenario())
    assert calls.lost == ["2 outcome(s) were not recorded"]


def test_claims_still_held_at_the_end_go_back_to_the_pool() -> None:
    """Closing releases every held claim without an outcome as pending, unattempted."""
    ledger, calls = Completes(), Calls()

    async def scenario() -> None:
        outcomes = buffer(ledger, calls)
        outcomes.hold([5, 3, 4])
        await outcomes.record(done(4))
        outcomes.let_go(5)
        await outcomes.close()

    asyncio.run(scenario())
    (batch,) = ledger.batches
    assert [(o.id, o.status, o.attempts) for o in batch] == [
        (4, Status.DONE, 1),
        (3, Status.PENDING, 0),
    ]


def test_a_failed_background_flush_reaches_the_owner() -> None:
    """A flush that fails off the partition's path hands its error to ``on_error``."""
    ledger, calls = Completes(fail=True), Calls()

    async def scenario() -> None:
        outcomes = buffer(ledger, calls)
        await outcomes.record(done(1), soon=True)
        await outcomes.settle()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert [str(e) for e in calls.errors] == ["the ledger's disk is full"]


def test_a_failed_final_flush_is_raised() -> None:
    """The last flush at close raises its error for the run to report."""
    ledger, calls = Completes(fail=True), Calls()

    async def scenario() -> Any:
        outcomes = buffer(ledger, calls)
        outcomes.hold([1])
        await outcomes.close()

    with pytest.raises(LedgerError):
        asyncio.run(scenario())


def test_a_failed_periodic_flush_reaches_the_owner_and_the_flushes_stop() -> None:
    """The periodic flush failing (the ledger's disk full) hands its error to
    ``on_error`` at once, as any background flush does: the run stops with it, rather
    than going on without periodic flushes and saying it only at its end."""
    ledger, calls = Completes(fail=True), Calls()

    async def scenario() -> None:
        outcomes = buffer(ledger, calls)
        await outcomes.record(done(1))
        task = asyncio.create_task(outcomes.flush_every(0.01))
        await asyncio.wait_for(task, 2.0)

    asyncio.run(scenario())
    assert [str(e) for e in calls.errors] == ["the ledger's disk is full"]
