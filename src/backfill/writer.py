"""The sink writer: buffers the rows of many partitions and writes them in bulk.

One :class:`Destination` per database the run's tables live in: one connection, one
thread, one buffer. Partitions hand their rows over and wait; the destination writes
everything buffered in one transaction when enough rows have gathered or the oldest has
waited long enough, then answers each partition. A partition is only ever reported
written after its transaction has committed.

When the ledger lives in the same database, the partitions' done-marks are written in
that same transaction (exactly once, even for ``append``), and every partition's rows
(its pages too) are written only under its fence: the transaction proves and locks the
worker's lease first, so a worker that was stalled past its lease writes nothing.
Otherwise the runner records them after the commit, and a crash in between redoes the
partition idempotently.

A bad partition (a record without its key, a type clash, a hostile field) fails only
itself: a batch that fails on data is split in halves, each written on its own, down to
the culprits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from backfill.backoff import Backoff
from backfill.errors import (
    BackfillError,
    PermanentError,
    SinkError,
    TransientError,
    disk_full_message,
    is_disk_full,
)
from backfill.ledger import Completer, DatabaseIdentity, Fence, Outcome
from backfill.partitions import Partition
from backfill.retry import RECONNECT_SECONDS
from backfill.sinks import Record, Rows, Sink, SinkConnection

__all__ = ["Destination", "PageWrites", "SinkWriter", "WriteResult"]

log = logging.getLogger("backfill.writer")

BATCH_ROWS = 20_000
MAX_DELAY = 0.25
MAX_BUFFER = 200_000
TRANSIENT_ATTEMPTS = 8
# A write waits for its database to come back (a restart, a failover): 50 ms doubling to
# 5 s, drawn from the top half; kept under set_testing, so the loop never spins.
_WRITE_BACKOFF = Backoff(first=0.05, cap=5.0, jitter=0.5, switchable=False)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """How a partition's hand-over ended.

    ``recorded``: its outcome committed with its rows (the ledger shares the database).
    ``lost``: its lease had passed to another worker, so nothing of it was written.
    """

    error: PermanentError | None = None
    recorded: bool = False
    lost: bool = False


@dataclass(slots=True)
class PageWrites:
    """What a partition's next write replaces and how it tags its rows, across the
    attempts at it (pages written with ``ctx.write``, then the rows it returns).

    Rows carry the checkpoint in force when they are written. An attempt's first write
    deletes the partition's earlier rows when the attempt starts without a checkpoint,
    else the rows tagged with the checkpoint it resumes from: those written after it was
    saved, which a kill or an error before the next checkpoint would otherwise double.
    Later writes of the attempt delete nothing.
    """

    checkpoint: str | None
    first: bool = True
    redo: str | None = None
    # Rows the attempt has written with ctx.write so far.
    rows: int = 0

    def attempt(self) -> None:
        """A new attempt, from the checkpoint in force."""
        self.first = self.checkpoint is None
        self.redo = self.checkpoint
        self.rows = 0

    def written(self, rows: int) -> None:
        """The attempt's rows so far are durable: its later writes only add to them."""
        self.first = False
        self.redo = None
        self.rows += rows


@dataclass(slots=True)
class _Item:
    parts: dict[str, Rows]
    rows: int
    outcome: Outcome | None
    future: asyncio.Future[WriteResult]
    partition: Partition
    # (claim id, claims): the lease the rows are written under, when the fence is ours.
    lease: tuple[int, int] | None = None


@dataclass(slots=True)
class _Buffer:
    items: list[_Item] = field(default_factory=list)
    rows: int = 0
    since: float = 0.0
    urgent: bool = False


class Destination:
    """One database: its tables, connection, thread and buffer."""

    def __init__(
        self,
        database: str,
        sinks: Sequence[Sink],
        *,
        owner: str,
        completer: Completer | None = None,
        fence: Fence | None = None,
        now: Callable[[], float] = time.time,
        batch_rows: int = BATCH_ROWS,
        max_delay: float | None = None,
        settled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.database = database
        self.sinks = {s.name: s for s in sinks}
        self.owner = owner
        self.completer = completer
        self.fence = fence
        self.now = now
        self.batch_rows = batch_rows
        self.max_delay = MAX_DELAY if max_delay is None else max_delay
        # True when every partition in flight waits for a write: nothing more can join
        # the batch, and waiting for more would only hold them (see SinkWriter).
        self.settled = settled
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="backfill-sink")
        self._conn: SinkConnection | None = None
        self._buffer = _Buffer()
        self._more = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self.transactions = 0

    @property
    def description(self) -> str:
        return " and ".join(s.description for s in self.sinks.values())

    async def open(self) -> None:
        """Connect (every table checks itself); a sink that cannot is a SinkError: one
        sentence naming its file on a full disk, else the sink and what it raised."""
        sinks = list(self.sinks.values())
        loop = asyncio.get_running_loop()
        for sink in sinks:
            try:
                conn = await loop.run_in_executor(self._pool, sink.connect)
                if sink is sinks[0]:
                    self._conn = conn
                else:
                    await loop.run_in_executor(self._pool, conn.close)
            except BackfillError:
                raise
            except Exception as exc:
                if is_disk_full(exc):
                    raise SinkError(disk_full_message(exc.filename)) from exc
                raise SinkError(f"cannot open {sink.description}: {exc}") from exc
        self._task = asyncio.create_task(self._run())

    async def submit(
        self,
        parts: Mapping[str, Rows],
        outcome: Outcome | None,
        partition: Partition,
        *,
        urgent: bool = False,
        lease: tuple[int, int] | None = None,
    ) -> WriteResult:
        """Hand over one partition's rows; return once they are durable (or refused).

        ``lease`` (claim id, claims): with a fence, the rows are written only if the
        transaction finds that lease still held (else the result is ``lost``).
        """
        if self._failure is not None:
            raise self._failure
        while not self._space.is_set() and not urgent:
            await self._space.wait()
            if self._failure is not None:
                raise self._failure
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        rows = sum(len(r.records) for r in parts.values())
        buffer = self._buffer
        if not buffer.items:
            buffer.since = asyncio.get_running_loop().time()
        if self.fence is None:
            lease = None
        buffer.items.append(_Item(dict(parts), rows, outcome, future, partition, lease))
        buffer.rows += rows
        buffer.urgent = buffer.urgent or urgent
        if buffer.rows >= MAX_BUFFER:
            self._space.clear()
        self._more.set()
        return await asyncio.shield(future)

    def nudge(self) -> None:
        """Look again at whether the batch may wait (see :attr:`settled`)."""
        if self._buffer.items:
            self._more.set()

    async def close(self) -> None:
        """Write what is buffered, then close the connection."""
        self._closing = True
        self._more.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._pool, self._conn.close)
            self._conn = None
        self._pool.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._more.wait()
            buffer = self._buffer
            if not buffer.items:
                self._more.clear()
                if self._closing:
                    return
                continue
            deadline = buffer.since + self.max_delay
            while (
                buffer.rows < self.batch_rows
                and not buffer.urgent
                and not self._closing
                and not self.settled()
                and loop.time() < deadline
            ):
                self._more.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._more.wait(), deadline - loop.time())
            self._buffer = _Buffer()
            self._space.set()
            items = buffer.items
            try:
                results = await loop.run_in_executor(self._pool, self._commit, items)
            except BaseException as exc:
                self._fail(exc, items)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for item, result in zip(items, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)

    def _fail(self, exc: BaseException, items: list[_Item]) -> None:
        self._failure = exc if isinstance(exc, Exception) else SinkError(str(exc))
        self._space.set()
        for item in [*items, *self._buffer.items]:
            if not item.future.done():
                item.future.set_exception(self._failure)
                # Retrieved by whoever awaits it; never "exception was never retrieved".
                item.future.exception()
        self._buffer = _Buffer()

    # -- on the destination's thread --------------------------------------------------

    def _commit(self, items: list[_Item]) -> list[WriteResult]:
        try:
            return self._retrying(items)
        except PermanentError as exc:
            if len(items) == 1:
                return [_refused(items[0], exc)]
        # One partition's bad data fails the whole transaction. Halves are written apart,
        # down to the culprits: a few transactions per bad partition, not one per
        # partition of the batch (hundreds, with a source that sends bad records often).
        half = len(items) // 2
        return self._commit(items[:half]) + self._commit(items[half:])

    def _retrying(self, items: list[_Item]) -> list[WriteResult]:
        """The transaction, retried on transient failures (each time on a connection the
        sink has made sound again) for ``RECONNECT_SECONDS``, at least 8 times: a server
        restart or failover costs a pause, not the run."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._transaction(items)
            except TransientError as exc:
                late = time.monotonic() + _WRITE_BACKOFF.ceiling(attempt) > deadline
                if attempt >= TRANSIENT_ATTEMPTS and late:
                    raise SinkError(
                        f"cannot write {self.description}: still failing after "
                        f"{RECONNECT_SECONDS:g} s ({attempt} attempts): {exc.message}"
                    ) from exc
                log.warning("retrying a write to %s: %s", self.description, exc.message)
                time.sleep(_WRITE_BACKOFF.delay(attempt))

    def _transaction(self, items: list[_Item]) -> list[WriteResult]:
        conn = self._conn
        if conn is None:
            raise SinkError(f"{self.description} is closed")
        conn.begin()
        try:
            live = items
            lost: set[int] = set()
            recorded = False
            leases = [i.lease for i in items if i.lease is not None]
            if self.fence is not None and leases:
                held = self.fence(conn.raw, self.owner, leases)
                lost = {id(i) for i in items if i.lease is not None and i.lease[0] not in held}
                live = [i for i in items if id(i) not in lost]
            outcomes = [i.outcome for i in live if i.outcome is not None]
            if self.completer is not None and outcomes:
                applied = self.completer(conn.raw, self.owner, outcomes, self.now())
                recorded = True
                lost |= {
                    id(i) for i in live if i.outcome is not None and i.outcome.id not in applied
                }
                live = [i for i in live if id(i) not in lost]
            for name, sink in self.sinks.items():
                batch = [i.parts[name] for i in live if name in i.parts]
                if batch:
                    sink.write(conn, batch)
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        self.transactions += 1
        return [
            WriteResult(
                recorded=recorded and i.outcome is not None and id(i) not in lost,
                lost=id(i) in lost,
            )
            for i in items
        ]


def _refused(item: _Item, exc: PermanentError) -> WriteResult:
    key = item.partition.key
    if key not in exc.message:
        exc = PermanentError(f"partition {key}: {exc.message}", category=exc.category)
    return WriteResult(error=exc)


class SinkWriter:
    """Every destination of a run, opened together and closed together."""

    def __init__(
        self,
        owner: str,
        *,
        completer_for: Callable[[DatabaseIdentity], Completer | None] | None = None,
        fence_for: Callable[[DatabaseIdentity], Fence | None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.owner = owner
        self.completer_for = completer_for
        self.fence_for = fence_for
        self.now = now
        self.destinations: dict[str, Destination] = {}
        # The run's partitions in flight, and how many of them wait for a write: a batch
        # waits for more rows only while some partition could still bring them (the
        # others' rows, and the partitions downstream waiting for them, are held).
        self._in_flight = 0
        self._writing = 0
        # Each sink's database, asked once at open: a SQLite table's resolves its path
        # (several system calls), and writes ask for every partition.
        self._databases: dict[int, str] = {}

    def _database(self, sink: Sink) -> str:
        database = self._databases.get(id(sink))
        return sink.database if database is None else database

    async def open(self, sinks: Sequence[Sink]) -> None:
        grouped: dict[str, list[Sink]] = {}
        for sink in sinks:
            database = self._databases.setdefault(id(sink), sink.database)
            members = grouped.setdefault(database, [])
            if all(s is not sink for s in members):
                members.append(sink)
        for database, members in grouped.items():
            names = [s.name for s in members]
            duplicate = next((n for n in names if names.count(n) > 1), None)
            if duplicate is not None:
                raise SinkError(
                    f"two different sinks write table {duplicate} in {members[0].description}; "
                    "declare the table once and share it between stages"
                )
            identity = members[0].identity if self.completer_for or self.fence_for else None
            completer = self.completer_for(identity) if self.completer_for and identity else None
            fence = self.fence_for(identity) if self.fence_for and identity else None
            destination = Destination(
                database,
                members,
                owner=self.owner,
                completer=completer,
                fence=fence,
                now=self.now,
                settled=self._settled,
            )
            self.destinations[database] = destination
            await destination.open()

    def began(self) -> None:
        """A partition (or a group of them run one after another) is in flight."""
        self._in_flight += 1

    def ended(self) -> None:
        """... and is no longer: what waits for a batch may not need to any more."""
        self._in_flight -= 1
        for destination in self.destinations.values():
            destination.nudge()

    def _settled(self) -> bool:
        return self._writing >= self._in_flight

    def shares_ledger(self, sinks: Sequence[Sink]) -> bool:
        """Whether these tables' done-marks commit with their rows (one database, the ledger's)."""
        databases = {self._database(s) for s in sinks}
        return len(databases) == 1 and self.destinations[databases.pop()].completer is not None

    async def write(
        self,
        sinks: Sequence[Sink],
        partition: Partition,
        records: Mapping[str, Sequence[Record]],
        outcome: Outcome | None,
        *,
        first: bool,
        page: str | None = None,
        redo: str | None = None,
        urgent: bool = False,
        lease: tuple[int, int] | None = None,
    ) -> WriteResult:
        """Write one partition's rows to every table; the outcome rides along when the
        ledger shares the (single) database, and ``lease`` is proven wherever it does.
        ``first``, ``page`` and ``redo`` say what the write replaces and how its rows are
        tagged (see :class:`Rows`)."""
        by_database: dict[str, dict[str, Rows]] = {}
        for sink in sinks:
            rows = records.get(sink.name, ())
            by_database.setdefault(self._database(sink), {})[sink.name] = Rows(
                partition, rows, first, page, redo
            )
        self._writing += 1
        # Every batch waiting may now hold the last partition in flight (settled).
        for destination in self.destinations.values():
            destination.nudge()
        try:
            if len(by_database) == 1:
                ((database, parts),) = by_database.items()
                destination = self.destinations[database]
                carried = outcome if destination.completer is not None else None
                return await destination.submit(
                    parts, carried, partition, urgent=urgent, lease=lease
                )
            results = await asyncio.gather(
                *(
                    self.destinations[db].submit(parts, None, partition, urgent=urgent, lease=lease)
                    for db, parts in by_database.items()
                )
            )
        finally:
            self._writing -= 1
        error = next((r.error for r in results if r.error is not None), None)
        return WriteResult(error=error, lost=any(r.lost for r in results))

    async def close(self) -> None:
        for destination in self.destinations.values():
            await destination.close()
