"""A resource's concurrency: how many of its calls may be under way at once."""

from __future__ import annotations

import asyncio


class _Share:
    """A concurrency pool whose size can change while requests hold it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self.used < self.limit)
            self.used += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._freed:
            self.used -= 1
            self._freed.notify()

    async def resize(self, limit: int) -> None:
        async with self._freed:
            self.limit = limit
            self._freed.notify_all()


class Pool:
    """At most ``concurrency`` calls at once (none: no pool), or, in a fleet, this
    worker's share of them (:meth:`set_share`)."""

    def __init__(self, concurrency: int | None) -> None:
        self.concurrency = concurrency
        self.share: int | None = None
        self._semaphore: asyncio.Semaphore | _Share | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def current(self) -> asyncio.Semaphore | _Share | None:
        """The pool to hold for a call on the running loop (None: no concurrency limit)."""
        if self.concurrency is None:
            return None
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            # A job module (and its resources) may outlive one event loop, e.g. in tests.
            if self.share is None:
                self._semaphore = asyncio.Semaphore(self.concurrency)
            else:
                self._semaphore = _Share(self.share)
            self._loop = loop
        return self._semaphore

    def full(self) -> bool:
        """Every slot is taken on the running loop (a call now would wait for one)."""
        pool = self._semaphore
        if pool is None or self._loop is not asyncio.get_running_loop():
            return False
        if isinstance(pool, _Share):
            return pool.used >= pool.limit
        return pool.locked()

    async def set_share(self, concurrency: int) -> None:
        """This worker's part of the fleet's concurrency (rebalanced as workers come and go)."""
        self.share = max(1, concurrency)
        pool = self._semaphore
        if isinstance(pool, _Share) and self._loop is asyncio.get_running_loop():
            await pool.resize(self.share)
        else:
            # The next call builds a resizable pool of the new size.
            self._semaphore = None

    def reset(self) -> None:
        """No share of a fleet any more (a new run starts)."""
        self.share = None
        self._semaphore = None
