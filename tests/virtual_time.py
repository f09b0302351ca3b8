"""Virtual time for tests of resources: clocks on which every wait ends instantly."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random

__all__ = ["FakeClock", "LateClock", "StallingClock"]


async def settle() -> None:
    """Let every runnable task run until it sleeps (or ends) before time moves: yield
    to the loop until nothing else is ready to run (asyncio's own queue of ready
    callbacks), a thousand times at most. (Twenty yields every time, as before, gave the
    same results four times slower.)"""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    for _ in range(1000):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            return


class FakeClock:
    """Virtual time: it moves only when every task is asleep, straight to the earliest
    wake-up, so every test of time runs instantly and sleepers wake exactly on time."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def time(self) -> float:
        return 1_000_000.0 + self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), next(self._seq), woken))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await woken

    async def _drive(self) -> None:
        while self._sleepers:
            await settle()
            deadline, _, woken = heapq.heappop(self._sleepers)
            self.t = max(self.t, deadline)
            if not woken.done():
                woken.set_result(None)


class StallingClock(FakeClock):
    """Virtual time with one stall: at ``at`` the loop is busy for ``seconds``, so every
    sleeper due in that time wakes late, all at once."""

    def __init__(self, at: float, seconds: float) -> None:
        super().__init__()
        self.stall = (at, seconds)

    async def _drive(self) -> None:
        at, seconds = self.stall
        while self._sleepers:
            await settle()
            deadline, _, woken = heapq.heappop(self._sleepers)
            if at <= deadline < at + seconds:
                deadline = at + seconds
            self.t = max(self.t, deadline)
            if not woken.done():
                woken.set_result(None)


class LateClock(FakeClock):
    """Virtual time on a busy machine: every sleeper wakes up to ``late`` seconds after
    its deadline (uniformly, from a seeded generator), as timers do when other processes
    hold the CPU."""

    def __init__(self, late: float, seed: int = 1) -> None:
        super().__init__()
        self.late = late
        self._rng = random.Random(seed)

    async def _drive(self) -> None:
        while self._sleepers:
            await settle()
            deadline, _, woken = heapq.heappop(self._sleepers)
            self.t = max(self.t, deadline + self._rng.uniform(0.0, self.late))
            if not woken.done():
                woken.set_result(None)
