"""Outcomes on their way to the ledger: buffered, and written in batches.

An outcome is recorded only *after* the partition's rows are durable in the sink: a
crash between the two redoes the partition, and the idempotent sink writes the same
rows again. Batching turns a ledger round trip per partition into one per quarter of a
second (or per 500 outcomes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from backfill.clock import Clock
from backfill.engine.db import LedgerThread
from backfill.ledger import Ledger, Outcome, Status

__all__ = ["FLUSH_EVERY", "FLUSH_SIZE", "Outcomes"]

T = TypeVar("T")

FLUSH_EVERY = 0.25
FLUSH_SIZE = 500


class Outcomes:
    """The claims a worker holds, and the outcomes it has not written yet.

    ``on_flushed`` runs after each batch reached the ledger (stages waiting for inputs
    look again); ``on_lost`` gets what the ledger refused (the lease had passed on);
    ``on_error`` gets the error of a background flush (the run cannot go on).
    """

    def __init__(
        self,
        ledger: Ledger,
        db: LedgerThread,
        worker_id: str,
        clock: Clock,
        *,
        on_flushed: Callable[[], None],
        on_lost: Callable[[str], None],
        on_error: Callable[[BaseException], None],
        forget: Callable[[int], None],
    ) -> None:
        self._ledger = ledger
        self._db = db
        self._worker_id = worker_id
        self._clock = clock
        self._on_flushed = on_flushed
        self._on_lost = on_lost
        self._on_error = on_error
        self._forget = forget
        self._buffer: list[Outcome] = []
        # Every claim this worker holds and has not yet recorded an outcome for. Whatever
        # is left here at shutdown (e.g. a task cancelled before it ever ran) is released.
        self._held: set[int] = set()
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Outcomes waiting to be written."""
        return len(self._buffer)

    def hold(self, ids: Iterable[int]) -> None:
        """Claims taken: each ends with an outcome, or is released at the end."""
        self._held.update(ids)

    def let_go(self, claim_id: int) -> None:
        """A claim that needs no outcome from us any more (recorded with its rows, or
        its lease passed on)."""
        self._held.discard(claim_id)
        self._forget(claim_id)

    async def record(self, outcome: Outcome, *, soon: bool = False) -> None:
        """Queue an outcome for the ledger; flush in the background when the batch is full
        (or at once, ``soon``)."""
        self.let_go(outcome.id)
        self._buffer.append(outcome)
        if (soon or len(self._buffer) >= FLUSH_SIZE) and self._background is None:
            # Off the partition's path: its task and concurrency slot need not wait for
            # the ledger round trip (awaiting it here stalled the event loop's work).
            self._background = asyncio.create_task(self.flush())
            self._background.add_done_callback(self._flushed)

    async def flush(self) -> None:
        """Write every buffered outcome to the ledger, in one call."""
        async with self._lock:
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            applied = await self._db.call(
                self._ledger.complete, self._worker_id, batch, now=self._clock.time()
            )
            self._on_flushed()
            if applied < len(batch):
                self._on_lost(f"{len(batch) - applied} outcome(s) were not recorded")

    async def flush_with(self, fn: Callable[..., T], *args: Any) -> T:
        """Write every buffered outcome, then call ``fn(*args)``, in one trip to the
        ledger's thread; ``fn``'s result. A fast stage's begin marks carry the outcomes
        of the partitions before them: one ledger call, not two queued one behind the
        other."""
        async with self._lock:
            batch, self._buffer = self._buffer, []

            def both() -> tuple[int, T]:
                applied = self._ledger.complete(self._worker_id, batch, now=self._clock.time())
                return applied, fn(*args)

            done: tuple[int, T] = await self._db.call(both)
            applied, result = done
            if batch:
                self._on_flushed()
                if applied < len(batch):
                    self._on_lost(f"{len(batch) - applied} outcome(s) were not recorded")
            return result

    async def flush_every(self, seconds: float = FLUSH_EVERY) -> None:
        """Flush on the run's clock until cancelled, or until a flush fails: its error
        goes to ``on_error`` at once (the run cannot record its work), as a background
        flush's does."""
        while True:
            await self._clock.sleep(seconds)
            try:
                await self.flush()
            except Exception as exc:  # (as _flushed: whatever it is, the run stops on it)
                self._on_error(exc)
                return

    async def settle(self) -> None:
        """Wait for the flush running in the background, if any."""
        if self._background is not None:
            # Its failure, if any, was already turned into a fatal stop.
            with contextlib.suppress(Exception):
                await self._background

    async def close(self) -> None:
        """At the end of the run: every claim still held goes back to the pool, with
        what is buffered. A failure to write them is raised."""
        await self.settle()
        for claim_id in sorted(self._held):
            self._buffer.append(Outcome(claim_id, Status.PENDING, attempts=0))
        self._held.clear()
        await self.flush()

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._background = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._on_error(error)
