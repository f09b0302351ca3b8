"""The run's clients, of every kind, bound to the job's resources: one registry.

A client kind (``http`` first; a warehouse's SQL and a browser's page pool next) plugs
in with :func:`register_client`: a factory that makes one client for a resource of a
job (or for no resource), on the run's clock. The engine holds one :class:`Clients` per
run and hands it to every stage's context; ``ctx.client(kind)`` and ``ctx.http`` take
their client from it, ``ctx.slot(name)`` the resource. A new kind needs no change to
the engine.

Example::

    register_client("warehouse", lambda job, resource, clock: Warehouse(resource, clock))

    @job.stage(resource="warehouse")
    async def totals(ctx, partition):
        return await ctx.client("warehouse").query(...)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from backfill.clock import Clock
from backfill.errors import BackfillError, ConfigError

if TYPE_CHECKING:
    from backfill.job import Job
    from backfill.ratelimit import Resource
    from backfill.sources.http import HttpClient

__all__ = ["Client", "ClientFactory", "Clients", "register_client"]


class Client(Protocol):
    """What the engine needs of any client: closing it when the run ends."""

    async def aclose(self) -> None: ...


# factory(job, resource or None, the run's clock) -> a client bound to that resource.
ClientFactory = Callable[["Job", "Resource | None", Clock], Client]


def _http(job: Job, resource: Resource | None, clock: Clock) -> HttpClient:
    """``ctx.http``: the options the job declared with the resource, or none."""
    # Imported here: the registry is loaded with the engine, httpx only when used.
    from backfill.sources.http import HttpClient

    if resource is None:
        return HttpClient(timeout=job.http_timeout, secrets=job.secrets, clock=clock)
    options = job.http_options[resource.name]
    return HttpClient(
        resource=resource,
        timeout=options["timeout"],
        retries=options["retries"],
        headers=options["headers"],
        params=options["params"],
        secrets=job.secrets,
        base_url=options["base_url"],
        allowed_hosts=options["allowed_hosts"],
        cross_origin=options["cross_origin"],
        max_body=options["max_body"],
        deadline=options["deadline"],
        hedge=options["hedge"],
        clock=clock,
    )


def _browser(job: Job, resource: Resource | None, clock: Clock) -> Client:
    """``ctx.browser``: the page pool of a resource declared with ``job.browser(...)``."""
    # Imported here: Playwright is an extra, loaded only by jobs that use a browser.
    from backfill.sources.browser import browser_client

    return browser_client(job, resource, clock)


def _entities(job: Job, resource: Resource | None, clock: Clock) -> Client:
    """``ctx.entities(kind)``: the run's entity resolvers."""
    from backfill.entities.run import run_entities

    return run_entities(job, resource, clock)


def _sql(job: Job, resource: Resource | None, clock: Clock) -> Client:
    """``ctx.sql``: the warehouse the job declared as the stage's resource."""
    # Imported here: SQLAlchemy only when a stage queries a warehouse.
    from backfill.sources.sql import SqlClient

    options = job.sql_options.get(resource.name) if resource is not None else None
    if resource is None or options is None:
        named = f"resource {resource.name!r} is not a warehouse" if resource else "no resource"
        raise ConfigError(
            f"ctx.sql needs a warehouse, and the stage has {named}: declare one with "
            "job.warehouse(NAME, URL, ...) and name it with resource=NAME"
        )
    return SqlClient(
        options["url"],
        resource=resource,
        clock=clock,
        timeout=options["timeout"],
        secrets=job.secrets,
        name=resource.name,
        bytes_budget=options.get("bytes_budget"),
        scanned=options.get("scanned"),
    )


_KINDS: dict[str, ClientFactory] = {
    "http": _http,
    "browser": _browser,
    "entities": _entities,
    "sql": _sql,
}


def register_client(kind: str, factory: ClientFactory) -> None:
    """Plug a client kind in: ``ctx.client(kind)`` then makes one per resource and run
    with ``factory(job, resource, clock)``. Registering a kind again replaces it."""
    if not kind.isidentifier():
        raise ConfigError(f"client kind {kind!r} must be an identifier")
    _KINDS[kind] = factory


class Clients:
    """A run's clients: one per kind and resource, made on first use, closed at the end.

    ``kinds`` replaces the registered kinds (tests plug in fakes this way).
    """

    def __init__(
        self, job: Job, *, clock: Clock, kinds: Mapping[str, ClientFactory] | None = None
    ) -> None:
        self.job = job
        self.clock = clock
        self._kinds = dict(kinds) if kinds is not None else _KINDS
        self._made: dict[tuple[str, str | None], Any] = {}
        # Stages on the engine's threads may ask too: one client per key all the same.
        self._lock = threading.Lock()

    def resource(self, name: str) -> Resource:
        """The declared resource ``name``."""
        resource = self.job.resources.get(name)
        if resource is None:
            raise BackfillError(f"unknown resource {name!r}; declare it on the job")
        return resource

    def get(self, kind: str, resource: str | None = None) -> Any:
        """The run's client of ``kind`` bound to ``resource`` (None: to no resource)."""
        key = (kind, resource)
        with self._lock:
            client = self._made.get(key)
            if client is None:
                factory = self._kinds.get(kind)
                if factory is None:
                    known = ", ".join(sorted(self._kinds))
                    raise BackfillError(
                        f"no client of kind {kind!r}; the kinds are {known} (a new kind "
                        "is plugged in with backfill.sources.clients.register_client)"
                    )
                bound = self.resource(resource) if resource is not None else None
                client = factory(self.job, bound, self.clock)
                self._made[key] = client
        return client

    def _any_http(self, resources: Iterable[str]) -> bool:
        """Whether any of ``resources`` is one of the job's HTTP resources."""
        return any(name in self.job.http_options for name in resources)

    def preload(self, resources: Iterable[str]) -> None:
        """Import, before the run's event loop starts, what the first HTTP request of a
        run using the HTTP resources among ``resources`` would import on it (see
        :func:`backfill.sources.http.preload`)."""
        if not self._any_http(resources):
            return
        from backfill.sources.http import preload

        preload()

    def warm(self, resources: Iterable[str]) -> None:
        """Start making, on a thread of its own, what the first HTTP client of a run
        using the HTTP resources among ``resources`` would make on the event loop (see
        :func:`backfill.sources.http.warm`): the run's planning overlaps it."""
        if not self._any_http(resources):
            return
        from backfill.sources.http import warm

        warm()

    def http(self, resource: str | None = None) -> HttpClient:
        """The run's HTTP client for ``resource`` (None: unlimited)."""
        client: HttpClient = self.get("http", resource)
        return client

    def made(self, kind: str) -> list[Any]:
        """The clients of ``kind`` made so far (the run's figures add up theirs)."""
        with self._lock:
            return [client for (of, _), client in self._made.items() if of == kind]

    async def aclose(self) -> None:
        """Close every client made (the run ends); they stay listed, so the run's figures
        can still add up what they did."""
        with self._lock:
            made = list(self._made.values())
        for client in made:
            await client.aclose()
