"""Hedged GETs: a second copy of a request far slower than its source usually is."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

# Answers remembered for the percentile, how many are needed first, and the shortest
# wait before a second copy goes.
_LATENCY_SAMPLES = 200
_HEDGE_AFTER_SAMPLES = 20
_HEDGE_FLOOR = 0.25
# Where nothing else waits for the resource (the last pages of a run), a copy costs no
# other request its turn: it goes sooner, past one and a half times the percentile (a
# tenth of a second at least); while the resource stays busy, how often it looks again.
_IDLE_FACTOR = 1.5
_IDLE_FLOOR = 0.1
_IDLE_POLL = 0.02

T = TypeVar("T")


class Hedge:
    """When a GET gets a second copy, and the race between the two: a stalled page near
    the end of a run must not cost the whole timeout. ``sent`` copies went, ``won`` of
    them answered first."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self.sent = 0
        self.won = 0

    def after(self, method: str, deadline: float) -> float | None:
        """How long a GET may take before a second copy is sent: three times the 95th
        percentile of this resource's recent answers, at least a quarter second and at
        most half the request's ``deadline``; None when it is not hedged."""
        if not self.enabled or method != "GET" or len(self.latencies) < _HEDGE_AFTER_SAMPLES:
            return None
        return min(max(_HEDGE_FLOOR, 3.0 * self._p95()), deadline / 2)

    def idle_after(self, wait: float) -> float:
        """How long a GET may take before a second copy is sent while nothing else waits
        for the resource (a copy then takes a turn nobody else would): one and a half
        times the 95th percentile, at least a tenth of a second, at most ``wait`` (what
        :meth:`after` said)."""
        return min(max(_IDLE_FLOOR, _IDLE_FACTOR * self._p95()), wait)

    def _p95(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(0.95 * (len(ordered) - 1))]

    async def race(
        self,
        first: asyncio.Task[T],
        copy: Callable[[], Coroutine[Any, Any, T]],
        wait: float,
        *,
        idle: Callable[[], bool] | None = None,
    ) -> T:
        """``first``'s answer, or, when it has none after ``wait`` seconds, the first of
        it and a ``copy`` to answer; the other is cancelled. A copy that fails leaves the
        first running. With ``idle`` (true while nothing else waits for the resource),
        the copy goes as soon as ``first`` is past :meth:`idle_after` and the resource
        is idle."""
        racers: set[asyncio.Task[T]] = {first}
        try:
            loop = asyncio.get_running_loop()
            until = loop.time() + wait
            early = self.idle_after(wait) if idle is not None else wait
            done, _ = await asyncio.wait(racers, timeout=early)
            while not done and idle is not None and not idle():
                left = until - loop.time()
                if left <= 0:
                    break
                done, _ = await asyncio.wait(racers, timeout=min(_IDLE_POLL, left))
            if first in done:
                # Answered before any copy went: its answer (or its error), without a
                # second wait on the loop.
                racers = set()
                return first.result()
            if not done:
                racers.add(asyncio.create_task(copy()))
            while True:
                done, pending = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is first or task.exception() is None:
                        if task is not first:
                            self.won += 1
                        return task.result()
                racers = pending
        finally:
            for task in racers:
                task.cancel()
            for task in racers:
                with contextlib.suppress(BaseException):
                    await task
