"""A run's resolvers: ``ctx.entities(kind)`` in every stage of the run takes the same
resolver of a kind the job declared (one connection, one cache, one in-memory index for
the run), made on first use and closed when the run ends. Plugged into the run's client
registry as the ``entities`` kind, so the engine knows nothing of it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from backfill.errors import ConfigError

if TYPE_CHECKING:
    from backfill.clock import Clock
    from backfill.entities.resolver import EntityResolver
    from backfill.job import Job
    from backfill.ratelimit import Resource

__all__ = ["RunEntities", "run_entities"]


class RunEntities:
    """The resolvers of one run, one per entity kind of the job."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._made: dict[str, EntityResolver] = {}
        self._lock = threading.Lock()

    def resolver(self, kind: str) -> EntityResolver:
        """The run's resolver of ``kind``."""
        with self._lock:
            made = self._made.get(kind)
            if made is None:
                spec = self.job.entity_kinds.get(kind)
                if spec is None:
                    declared = ", ".join(sorted(self.job.entity_kinds)) or "none"
                    raise ConfigError(
                        f"job {self.job.name!r} declares no entity kind {kind!r} (declared: "
                        f"{declared}); add job.entities({kind!r}, ...)"
                    )
                from backfill.entities.resolver import EntityResolver

                made = self._made[kind] = EntityResolver(spec)
        return made

    async def aclose(self) -> None:
        with self._lock:
            made = list(self._made.values())
        for resolver in made:
            await resolver.aclose()


def run_entities(job: Job, resource: Resource | None, clock: Clock) -> RunEntities:
    """The client factory of the ``entities`` kind (see :mod:`backfill.sources.clients`)."""
    return RunEntities(job)
