"""The ledger's own thread: every blocking ledger call of a run goes through it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backfill.clock import Clock

__all__ = ["LedgerThread"]


class LedgerThread:
    """Runs blocking ledger calls one at a time, off the event loop.

    Example::

        db = LedgerThread(clock)
        claims = await db.call(ledger.claim, "job", "fetch", worker, limit=16, ...)
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="backfill-ledger")

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the ledger's thread.

        Shielded: cancelling the caller must not cancel a queued call (a batch of
        outcomes would silently vanish); the call runs to its end regardless, and how it
        ends is then nobody's to report (a full disk failing it while the run is torn
        down was logged as an exception never retrieved: a traceback in the run's
        one-line message).
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_settled)
            raise

    async def timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
        """``call``, and how long the call itself took on the ledger's thread: not the
        wait for that thread, nor for an event loop busy with other work."""
        clock = self._clock

        def timed() -> tuple[Any, float]:
            began = clock.monotonic()
            return fn(*args, **kwargs), clock.monotonic() - began

        result: tuple[Any, float] = await self.call(timed)
        return result

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


def _settled(future: asyncio.Future[Any]) -> None:
    """Take a finished call's exception, so that nothing reports it as never retrieved."""
    if not future.cancelled():
        future.exception()
