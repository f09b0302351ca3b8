"""The ledger's thread: a call whose caller was cancelled still runs to its end, and how
it ends is nobody's to report."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from backfill.clock import SystemClock
from backfill.engine.db import LedgerThread


def test_a_call_whose_caller_was_cancelled_and_that_then_fails_logs_nothing() -> None:
    """A full disk fails a ledger call while the run is being torn down and its caller
    cancelled: the call runs on to its end on the ledger's thread (shielded), and its
    error is nobody's now. asyncio used to log it as a future's exception never
    retrieved, a traceback in the middle of the run's one-line message."""
    reported: list[dict[str, Any]] = []
    release = threading.Event()

    def fails() -> None:
        release.wait(5.0)
        raise OSError("database or disk is full")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        db = LedgerThread(SystemClock())
        caller = asyncio.ensure_future(db.call(fails))
        await asyncio.sleep(0.05)
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        release.set()
        await asyncio.sleep(0.2)
        db.shutdown()

    asyncio.run(main())
    import gc

    gc.collect()
    assert reported == []
