"""Waiting out a source that is down: its resource's circuit open."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from backfill.errors import TransientError
from backfill.ratelimit import Resource, describe_seconds
from backfill.sources.tally import partition_requests


class SourceDown(Exception):
    """A request's resource has been down (its circuit open) for longer than its
    ``max_wait``."""


class Outage:
    """How a client's requests wait for a resource whose circuit is open: behind its
    probes, until the source has been down for ``max_wait``, not for as long as the
    outage lasts."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def down_for(self) -> float:
        """How long the resource's source has been down (its circuit open), in seconds."""
        since = self.resource.down_since
        return 0.0 if since is None else self.resource.clock.monotonic() - since

    @contextlib.asynccontextmanager
    async def slot(self, max_wait: float) -> AsyncIterator[None]:
        """A slot on the resource, waited for until the source has been down for
        ``max_wait``; past that, only the probe's turn is taken (the source may be
        back), any other request fails at once (:class:`SourceDown`)."""
        resource = self.resource
        budget = max_wait - self.down_for()
        if budget <= 0:
            breaker = resource.breaker
            ready = not breaker.probing and (breaker.open_until or 0) <= resource.clock.monotonic()
            if not ready:
                raise SourceDown
            budget = 1.0
        try:
            async with asyncio.timeout(budget) as limit:
                async with resource.slot():
                    limit.reschedule(None)
                    yield
        except TimeoutError:
            if limit.expired():
                raise SourceDown from None
            raise

    def error(self, exc: TransientError | None, max_wait: float) -> TransientError:
        """The error for a request that found its source down for longer than
        ``max_wait``: for how long, and what the source last did wrong."""
        resource = self.resource
        tally = partition_requests.get()
        last = exc.message if exc is not None else (tally.last_error if tally else None)
        last = last or resource.last_error
        down = describe_seconds(round(self.down_for(), 1))
        said = f"; its last error: {last}" if last else ""
        return TransientError(
            f"resource {resource.name}: the source has been down (its circuit open) for "
            f"{down} s, longer than max_wait={describe_seconds(max_wait)} s{said}",
            category=exc.category if exc is not None else "unavailable",
        )
