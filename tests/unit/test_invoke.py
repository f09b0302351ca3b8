"""StageThreads: plain functions on threads for asyncio callers, with timeouts counted
from each call's start and threads given up by timed-out calls replaced."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from backfill.invoke import StageThreads

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event blocked calls wait on (at most 30 s), set when the test ends."""
    event = threading.Event()
    yield event
    event.set()


def eventually(condition: object, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_call_after_a_timed_out_one_starts_at_once(release: threading.Event) -> None:
    """With one thread, a call that times out gives it up: the next call runs and returns
    its result instead of queueing behind the blocked one."""

    async def main() -> str:
        threads = StageThreads(1)
        try:
            with pytest.raises(TimeoutError):
                await threads.call(release.wait, 30, time_limit=0.1)
            return await threads.call(str.upper, "fast", time_limit=5)
        finally:
            threads.shutdown()

    assert asyncio.run(main()) == "FAST"


def test_the_timeout_counts_from_the_start_of_the_call(release: threading.Event) -> None:
    """A call that waits for a thread busy with a live call (no bound reached) is timed
    from its own start: it waits longer than its timeout and still succeeds."""

    async def main() -> tuple[str, float]:
        threads = StageThreads(1)
        try:
            busy = asyncio.create_task(threads.call(time.sleep, 0.6, time_limit=None))
            await asyncio.sleep(0.05)
            began = time.monotonic()
            value = await threads.call(str.lower, "QUEUED", time_limit=0.3)
            await busy
            return value, time.monotonic() - began
        finally:
            threads.shutdown()

    value, waited = asyncio.run(main())
    assert value == "queued"
    assert waited >= 0.3


def test_the_bound_on_abandoned_calls_warns_once_and_bounds_the_wait(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    """One thread, at most one abandoned call replaced: the second blocked call keeps its
    thread (a warning says so once), a later call waits at most its timeout, and once the
    blocked calls return every thread serves again."""

    async def main(threads: StageThreads) -> None:
        for _ in range(2):
            with pytest.raises(TimeoutError):
                await threads.call(release.wait, 30, time_limit=0.1)
        assert threads.abandoned == 2
        with pytest.raises(TimeoutError, match="no thread became free"):
            await threads.call(str.upper, "starved", time_limit=0.2)
        release.set()
        await asyncio.to_thread(eventually, lambda: threads.abandoned == 0)
        assert await threads.call(str.upper, "fed", time_limit=5) == "FED"

    threads = StageThreads(1, max_abandoned=1)
    with caplog.at_level(logging.WARNING, logger="backfill.invoke"):
        try:
            asyncio.run(main(threads))
        finally:
            threads.shutdown()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "still running on their threads" in warnings[0].getMessage()


def test_an_abandoned_call_s_outcome_is_discarded(release: threading.Event) -> None:
    """A timed-out call that later raises changes nothing: its exception goes nowhere
    and its thread ends, leaving the configured number serving."""

    def fails_later() -> None:
        release.wait(30)
        raise ValueError("too late")

    async def main(threads: StageThreads) -> str:
        with pytest.raises(TimeoutError):
            await threads.call(fails_later, time_limit=0.1)
        release.set()
        await asyncio.to_thread(eventually, lambda: threads.abandoned == 0)
        return await threads.call(str.upper, "after", time_limit=5)

    threads = StageThreads(2, name="test-discard")
    try:
        assert asyncio.run(main(threads)) == "AFTER"
        eventually(
            lambda: sum(t.name.startswith("test-discard") for t in threading.enumerate()) == 2
        )
    finally:
        threads.shutdown()


def test_a_call_given_up_before_it_starts_never_runs(release: threading.Event) -> None:
    """A call cancelled while it waits for a thread is withdrawn: it never runs."""
    ran = threading.Event()

    async def main(threads: StageThreads) -> None:
        busy = asyncio.create_task(threads.call(release.wait, 30, time_limit=None))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(threads.call(ran.set, time_limit=None))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        await busy
        assert await threads.call(str.upper, "next", time_limit=5) == "NEXT"

    threads = StageThreads(1, max_abandoned=0)
    try:
        asyncio.run(main(threads))
    finally:
        threads.shutdown()
    assert not ran.is_set()


def test_calls_run_in_the_caller_s_context_on_daemon_threads() -> None:
    """A call sees the caller's context variables (log lines keep their run and
    partition), and its thread is a daemon, so the process never waits for it."""

    def look() -> tuple[str, bool]:
        return WHO.get(), threading.current_thread().daemon

    async def main(threads: StageThreads) -> tuple[str, bool]:
        WHO.set("partition 2013-01-01")
        return await threads.call(look, time_limit=5)

    threads = StageThreads(1)
    try:
        assert asyncio.run(main(threads)) == ("partition 2013-01-01", True)
    finally:
        threads.shutdown()


def test_an_exception_of_the_call_reaches_the_caller() -> None:
    """What the function raises is what the caller gets."""

    def broken() -> None:
        raise KeyError("missing")

    async def main(threads: StageThreads) -> None:
        with pytest.raises(KeyError, match="missing"):
            await threads.call(broken, time_limit=5)

    threads = StageThreads(1)
    try:
        asyncio.run(main(threads))
    finally:
        threads.shutdown()
