"""What a stage function receives besides its partition."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from backfill.partitions import Partition

if TYPE_CHECKING:
    from backfill.entities.resolver import EntityResolver
    from backfill.ratelimit import Resource
    from backfill.sources.browser import BrowserClient
    from backfill.sources.clients import Clients
    from backfill.sources.http import HttpClient
    from backfill.sources.sql import PartitionSql

__all__ = ["Context", "ProcessContext", "RunCache", "Slot", "StageLog"]

# Names a log line already uses: the attributes of every LogRecord, the fields the log
# output adds, and what the engine binds. A caller's extra field of one of these names
# would break the record (logging refuses them) or relabel the line.
_TAKEN = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "event",
    "level",
    "logger",
    "timestamp",
    "run_id",
    "job",
    "worker",
    "stage",
    "partition",
}


class StageLog(logging.LoggerAdapter[logging.Logger]):
    """``ctx.log``: a logger whose lines say which run, stage and partition they are
    about, and keep the fields a stage adds::

        ctx.log.info("page fetched", extra={"page": 3, "rows": 500})

    The standard adapter replaces a call's ``extra`` with its own; this one merges them.
    The bound fields always win: a field of the caller's named like one a line already
    has (``stage``, ``partition``, ``run_id``, ``job``, ``worker``, ``event``, ``level``,
    or a ``LogRecord`` attribute such as ``name``) is kept as ``extra_NAME``.
    """

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        given: Mapping[str, object] = kwargs.get("extra") or {}
        fields = {(f"extra_{k}" if k in _TAKEN else k): v for k, v in given.items()}
        kwargs["extra"] = {**fields, **(self.extra or {})}
        return msg, kwargs


class RunCache:
    """A per-run cache for expensive look-ups shared by every partition.

    ``get_or_set`` computes a value once per key even when many partitions ask at the same
    time (the others wait for the first), e.g. an archive page fetched once per year
    instead of once per tournament::

        archive = await ctx.cache.get_or_set(("archive", year), lambda: fetch(year))

    A failed computation is not cached, so the next caller tries again.
    """

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._pending: dict[Hashable, asyncio.Future[Any]] = {}
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self._values.get(key, default)

    def set(self, key: Hashable, value: Any) -> None:
        self._values[key] = value

    def pop(self, key: Hashable, default: Any = None) -> Any:
        """Forget ``key`` (a value no later partition needs), returning its value or
        ``default``; keeps a cache of, e.g., a rolling window from growing with the run."""
        return self._values.pop(key, default)

    async def get_or_set(self, key: Hashable, factory: Callable[[], Any]) -> Any:
        """The cached value, or ``factory()`` (sync or async) computed once and kept."""
        if key in self._values:
            self.hits += 1
            return self._values[key]
        pending = self._pending.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = factory()
            if inspect.isawaitable(value):
                value = await value
        except BaseException as exc:
            future.set_exception(exc)
            # Waiters get the exception; nobody else needs to retrieve it.
            future.exception()
            raise
        else:
            self._values[key] = value
            future.set_result(value)
            return value
        finally:
            del self._pending[key]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Slot:
    """A resource's turn for one call of any client: a place in its concurrency pool
    and a start at its rates, held for the block. ``async with`` in an async stage;
    ``with`` in a plain ``def`` stage (it runs on the engine's threads, and waits there
    while the event loop hands out the turn)::

        with ctx.slot("warehouse"):
            rows = connection.execute(query).fetchall()
    """

    __slots__ = ("_held", "_loop", "resource")

    def __init__(self, resource: Resource, loop: asyncio.AbstractEventLoop | None) -> None:
        self.resource = resource
        self._loop = loop
        self._held: contextlib.AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> None:
        held = self.resource.turn()
        await held.__aenter__()
        self._held = held

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        held, self._held = self._held, None
        assert held is not None
        return await held.__aexit__(kind, exc, tb)

    def __enter__(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("ctx.slot() is only available while a stage runs")
        if _running_loop() is loop:
            # Waiting here for a turn the loop itself must hand out would block it.
            raise RuntimeError(
                f"resource {self.resource.name}: an async stage takes its slot with "
                "`async with ctx.slot(...)`, not `with`"
            )
        held = self.resource.turn()
        asyncio.run_coroutine_threadsafe(held.__aenter__(), loop).result()
        self._held = held

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        assert held is not None and self._loop is not None
        asyncio.run_coroutine_threadsafe(held.__aexit__(kind, exc, tb), self._loop).result()


@dataclass(slots=True)
class Context:
    """Handed to every stage call: the partition and the run's shared services.

    ``attempt`` is 1 on the first try of this partition in this run. ``checkpoint`` is what
    an earlier, unfinished run of this partition saved with :meth:`save_checkpoint` (None
    on a fresh start), e.g. the cursor of the next page to fetch.
    """

    # The engine makes one per partition passing the fields by position, in this order
    # (Attempt._context): a field added or moved here is added or moved there too.
    partition: Partition
    job: str
    stage: str
    run_id: str
    attempt: int
    cache: RunCache
    log: StageLog
    _resource: str | None = None
    checkpoint: str | None = None
    _save_checkpoint: Callable[[str | None], Awaitable[None]] | None = None
    _write: Callable[[Iterable[object], str | None], Awaitable[int]] | None = None
    # The run's clients, of every kind (see backfill.sources.clients).
    _clients: Clients | None = None
    # A stage that writes by itself (a SQL stage inside its warehouse): its lease proven
    # just before, its rows counted as the partition's records.
    _prove: Callable[[], Awaitable[None]] | None = None
    _written: Callable[[int], None] | None = None
    # Where slots are handed out: the loop the stage's context was made on.
    _loop: asyncio.AbstractEventLoop | None = field(default_factory=_running_loop, repr=False)

    def for_process(self) -> ProcessContext:
        """What a stage running in a worker process receives (it must pickle)."""
        return ProcessContext(
            partition=self.partition,
            job=self.job,
            stage=self.stage,
            run_id=self.run_id,
            attempt=self.attempt,
            checkpoint=self.checkpoint,
        )

    @property
    def http(self) -> HttpClient:
        """The HTTP client of this stage's resource: its limits, retries and headers apply
        to every request (pooled, created on first use, errors classified)."""
        return self.http_for(self._resource)

    @property
    def browser(self) -> BrowserClient:
        """The page pool of this stage's browser resource (declared with
        ``job.browser(...)``): ``async with ctx.browser.page() as page: await
        page.goto(url)``; see :mod:`backfill.sources.browser`."""
        client: BrowserClient = self._registry().get("browser", self._resource)
        return client

    @property
    def sql(self) -> PartitionSql:
        """The warehouse of this stage's resource (declared with ``job.warehouse``), its
        queries bound to this partition's ``:day``, ``:start``, ``:end`` and dimensions,
        each under the resource's limits and timeout (see :mod:`backfill.sources.sql`)."""
        return self.sql_for(self._resource)

    def sql_for(self, resource: str | None) -> PartitionSql:
        """The warehouse of another declared resource, bound to this partition."""
        client = self._registry().get("sql", resource)
        return client.bound(self.partition, where=f"the query of stage {self.stage}")  # type: ignore[no-any-return]

    def http_for(self, resource: str | None) -> HttpClient:
        """The HTTP client of another declared resource."""
        return self._registry().http(resource)

    def client(self, kind: str, resource: str | None = None) -> Any:
        """The run's client of ``kind`` (``"http"``, or a kind plugged in with
        :func:`backfill.sources.clients.register_client`) bound to ``resource``, by
        default this stage's: made on first use, closed when the run ends."""
        return self._registry().get(kind, resource or self._resource)

    def entities(self, kind: str) -> EntityResolver:
        """The run's resolver of an entity kind the job declared (``job.entities``): one
        per run, shared by every stage, its look-ups cached for the run::

            pid = await ctx.entities("players").resolve(name, source="atp", country="SRB")
        """
        resolvers = self._registry().get("entities")
        resolver: EntityResolver = resolvers.resolver(kind)
        return resolver

    def slot(self, resource: str | None = None) -> Slot:
        """A turn at ``resource`` (by default this stage's) for one call of any client:
        the resource's concurrency, rates, quotas, pauses and circuit hold for whatever
        runs in the block, e.g. a warehouse that takes 15 queries at once::

            async with ctx.slot("warehouse"):      # in an async stage
                rows = await run_query(sql)

            with ctx.slot("warehouse"):            # in a plain def stage
                rows = cursor.execute(sql).fetchall()
        """
        name = resource or self._resource
        if name is None:
            raise RuntimeError(
                f"stage {self.stage!r} declares no resource: name the one to take a slot "
                "of, e.g. ctx.slot('warehouse')"
            )
        return Slot(self._registry().resource(name), self._loop)

    def _registry(self) -> Clients:
        if self._clients is None:
            raise RuntimeError("clients and slots are only available while a stage runs")
        return self._clients

    async def prove_lease(self) -> None:
        """Make sure this worker still holds the partition (its lease may have passed to
        another after a stall): call it right before a write the engine's sinks do not
        make, e.g. a warehouse's ``INSERT ... SELECT``. Raises when the lease is lost; the
        engine then lets the partition go, writing nothing more of it."""
        if self._prove is not None:
            await self._prove()

    def count_records(self, rows: int) -> None:
        """Count ``rows`` the stage wrote by itself as the partition's records."""
        if self._written is not None:
            self._written(rows)

    async def save_checkpoint(self, value: str | None) -> None:
        """Record where this partition should resume if the run stops before it ends.

        Save it only after what came before is durable (see :meth:`write`); it is cleared
        when the partition finishes.
        """
        if self._save_checkpoint is not None:
            await self._save_checkpoint(value)
        self.checkpoint = value

    async def write(self, records: Iterable[object], table: str | None = None) -> int:
        """Write records to the stage's sink now, durably, instead of returning them.

        For huge partitions: write each page as it comes, then save a checkpoint. A stage
        with several tables names the one these records go to.
        """
        if self._write is None:
            raise RuntimeError("ctx.write is only available while a stage runs")
        return await self._write(records, table)


@dataclass(slots=True)
class ProcessContext:
    """The context of a ``executor="process"`` stage: plain data, no services (HTTP
    clients, the run cache and ``ctx.write`` live in the main process)."""

    partition: Partition
    job: str
    stage: str
    run_id: str
    attempt: int
    checkpoint: str | None = None

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"backfill.stage.{self.stage}")
