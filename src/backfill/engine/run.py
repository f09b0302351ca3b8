"""The run: one worker of one job, from joining the ledger to its result.

:class:`Runner` assembles the run's collaborators (the stage graph, the lease keeper,
the outcome buffer, the sink writer, the clients, the invoker, the stage loops), runs
the background tasks (heartbeat, flusher, displays' tick), and ends the run: releasing
whatever it still holds, deciding the exit code, and putting the run on record.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import math
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from backfill.clock import Clock, SystemClock
from backfill.context import RunCache
from backfill.engine.attempt import AttemptEnv, Totals
from backfill.engine.claims import StageActivity, StageLoop, concurrency
from backfill.engine.control import RunControl
from backfill.engine.db import LedgerThread
from backfill.engine.lease import LeaseKeeper, host
from backfill.engine.outcomes import Outcomes
from backfill.engine.plan import StageGraph, plan_partitions
from backfill.engine.result import (
    Conclusion,
    ExitCode,
    RunOptions,
    RunResult,
    RunStatus,
    conclude,
)
from backfill.errors import BackfillError, FatalError, SinkError
from backfill.events import EventBus, FleetCounts, RunFinished, RunStarted, Tick, WorkerJoined
from backfill.invoke import Invoker
from backfill.job import Job
from backfill.ledger import Ledger, RunRecord, SharedCompletion, SharedLimits, StageCounts
from backfill.runstats import RunStats
from backfill.secrets import Masker
from backfill.sources.clients import Clients
from backfill.sources.http import HttpClient
from backfill.writer import SinkWriter

__all__ = ["Runner"]

log = logging.getLogger("backfill.engine.run")

_FLEET_COUNTS_EVERY = 5  # seconds between reads of the fleet's counts, for displays


class Runner:
    """Runs one job's selected stages against a ledger until nothing claimable is left.

    Example::

        result = asyncio.run(Runner(job, open_ledger("sqlite:///state.db")).run())
    """

    def __init__(
        self,
        job: Job,
        ledger: Ledger,
        options: RunOptions | None = None,
        *,
        bus: EventBus | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.job = job
        self.ledger = ledger
        self.options = options or RunOptions()
        self.bus = bus or EventBus()
        self.clock: Clock = clock or SystemClock()
        self.stages = job.select_stages(list(self.options.stages))
        self.graph = StageGraph(job, self.stages, self.options.selection)
        self.run_id = uuid.uuid4().hex[:12]
        self.worker_id = f"{host()}:{os.getpid()}:{self.run_id}"
        self.cache = RunCache()
        self.clients = Clients(job, clock=self.clock)
        # (Made before the run's loop starts, where the CLI and the tests make a runner.)
        self.clients.preload(self.graph.resources())
        # Everything the run shows or stores goes through it; checkpoints are sealed by it.
        self._masker = job.masker(ledger.url)
        self.db = LedgerThread(self.clock)
        self.control = RunControl(self.bus, self.clock, self._masker, self.options.grace)
        self.leases = LeaseKeeper(
            job, ledger, self.db, self.worker_id, self.clock, self.bus, self.graph.resources()
        )
        for resource in job.resources.values():
            resource.reset(clock=self.clock)
            resource.subscribe(self.leases.on_resource)
        self.activity = StageActivity(self.graph.included)
        # Whether the partitions this worker still held at the end were given back: a
        # worker on record as stopped holds none (see _finish).
        self._given_back = False
        self._joined = math.inf  # when this worker joined the ledger (see _release)
        self.outcomes = Outcomes(
            ledger,
            self.db,
            self.worker_id,
            self.clock,
            on_flushed=self.activity.signal,
            on_lost=self.leases.losses.lost,
            on_error=self._flush_failed,
            forget=self.leases.book.forget,
        )
        self.writer = SinkWriter(
            self.worker_id,
            completer_for=ledger.completer if isinstance(ledger, SharedCompletion) else None,
            fence_for=ledger.fence if isinstance(ledger, SharedCompletion) else None,
            now=self.clock.time,
        )
        self.totals = Totals()
        # Run metrics, stored with the run record; a subscriber like any display.
        self.stats = RunStats(self.graph.names)
        self.bus.subscribe(self.stats)

    # -- public control --------------------------------------------------------------

    def stop(self, reason: str = "interrupted", *, immediate: bool = False) -> None:
        """Stop claiming; finish in-flight work (or cancel it when ``immediate``)."""
        self.control.stop(reason, immediate=immediate)

    def interrupt(self) -> None:
        """First call: graceful stop. Second call: cancel in-flight work at once."""
        self.control.interrupt()

    def http(self, resource: str | None = None) -> HttpClient:
        """The run's HTTP client for ``resource`` (None: unlimited), created on first use."""
        return self.clients.http(resource)

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> RunResult:
        # Every log line of this run (and of the tasks it starts) carries these.
        bound = structlog.contextvars.bind_contextvars(
            run_id=self.run_id, job=self.job.name, worker=self.worker_id
        )
        try:
            return await self._run()
        finally:
            structlog.contextvars.reset_contextvars(**bound)

    async def _run(self) -> RunResult:
        started = self.clock.monotonic()
        control = self.control
        # What the first HTTP client would make on the loop is made while the run plans.
        self.clients.warm(self.graph.resources())
        try:
            await self._start(self.clock.time())
        except BackfillError as exc:
            # The ledger cannot take the run (e.g. its disk is full): nothing runs, and
            # the run still ends with a result (and the command with its summary).
            control.note(exc)
        background = []
        if control.fatal is None and isinstance(self.ledger, SharedLimits):
            background.append(asyncio.create_task(self.leases.fleet(self.ledger)))
        if control.fatal is None:
            try:
                await self.writer.open([sink for s in self.stages for sink in s.sinks])
            except SinkError as exc:
                control.fatal = FatalError(str(exc), category="sink")
        invoker = Invoker(self.stages, lambda stage: concurrency(stage, self.options))
        background += [
            asyncio.create_task(self.leases.heartbeat()),
            asyncio.create_task(self.outcomes.flush_every()),
            asyncio.create_task(self.leases.publish_resources()),
            asyncio.create_task(
                tick(
                    self.bus,
                    self.clock,
                    self._fleet_counts if self.options.wait_for_leases else None,
                )
            ),
        ]
        try:
            if control.fatal is None:
                await self._stage_loops(invoker)
        finally:
            control.close()
            for task in background:
                task.cancel()
            for task in background:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except BackfillError as exc:
                    # It failed before it was cancelled (the ledger gone while a flush
                    # or a heartbeat ran): the run still ends in order, with the cause.
                    control.note(exc)
            await self._release(invoker)
        return await self._finish(started)

    async def _stage_loops(self, invoker: Invoker) -> None:
        env = AttemptEnv(
            job=self.job,
            ledger=self.ledger,
            db=self.db,
            worker_id=self.worker_id,
            run_id=self.run_id,
            clock=self.clock,
            bus=self.bus,
            masker=self._masker,
            cache=self.cache,
            clients=self.clients,
            invoker=invoker,
            writer=self.writer,
            leases=self.leases,
            outcomes=self.outcomes,
            control=self.control,
            totals=self.totals,
            signal_progress=self.activity.signal,
            urgent=self.activity.urgent,
            loop=asyncio.get_running_loop(),
        )
        try:
            async with asyncio.TaskGroup() as group:
                for stage in self.stages:
                    loop = StageLoop(stage, env, self.graph, self.activity, self.options)
                    group.create_task(loop.run())
        except* BackfillError as group_error:
            # The ledger itself failed (e.g. locked for too long): stop cleanly and
            # report it; every lease still held is released afterwards.
            # (After the run's cause, when it had one: a sink's full disk, said as the run
            # stopped, fills the ledger's next; see RunControl.fail.)
            first = group_error.exceptions[0]
            self.control.fail(FatalError(str(first), category=type(first).__name__))

    async def _start(self, now: float) -> None:
        """Join the ledger: register this worker, release dead workers' partitions, plan
        the partitions, mark the stale ones, and record the run."""
        self._joined = now
        lost = await self.leases.join(now)
        await plan_partitions(self.db, self.ledger, self.job.name, self.graph)
        await self.db.call(
            self.ledger.start_run,
            run_record(self.run_id, self.job.name, self.options, self._masker, now),
        )
        initial = await self.db.call(self._counts)
        self.bus.emit(RunStarted(self.run_id, self.job.name, self.worker_id, now, initial))
        self.bus.emit(WorkerJoined(self.worker_id, self.job.name, host(), os.getpid()))
        for event in lost:
            self.bus.emit(event)
        # (Said once the run has started: a resource starting where the last run left it.)
        await self.leases.resume_resources()

    async def _fleet_counts(self) -> dict[str, StageCounts]:
        result: dict[str, StageCounts] = await self.db.call(self._counts)
        return result

    def _counts(self) -> dict[str, StageCounts]:
        """The selection's counts per stage of the run (a blocking ledger read)."""
        result: dict[str, StageCounts] = self.ledger.counts(
            self.job.name, self.graph.names, self.options.selection, recent=False
        )
        return result

    # -- the end of the run ----------------------------------------------------------

    async def _release(self, invoker: Invoker) -> None:
        """Write what is buffered, give back every partition still held, close pools."""
        await self.outcomes.settle()
        # Rows still buffered (from partitions cancelled while waiting) are written;
        # those partitions are released below and redone idempotently.
        await self.writer.close()
        try:
            await self.outcomes.close()
        except BackfillError as exc:
            self.control.note(exc)
        # Nothing this worker leased may outlive it as "running".
        stray = await self._closing(self.ledger.release_owner, self.worker_id)
        self._given_back = stray is not None
        if self._given_back:
            # What the resources learned goes on record as they end: the next run
            # starts there (see LeaseKeeper.resume_resources); nothing, when another
            # worker shared the run (each learns a share of the source).
            alone = await self.leases.alone(self._joined)
            await self._closing(
                self.ledger.heartbeat,
                self.worker_id,
                now=self.clock.time(),
                resources=self.leases.resources_json(final=alone),
            )
        if stray:
            # Expected after a fatal stop (the in-flight work it cancelled).
            level = logging.INFO if self.control.fatal is not None else logging.WARNING
            log.log(level, "released %d partition(s) still leased at the end of the run", stray)
        await self.clients.aclose()
        invoker.shutdown()

    async def _finish(self, started: float) -> RunResult:
        """Decide the run's status and exit code, and put the run on record."""
        control, names = self.control, self.graph.names
        final: dict[str, StageCounts] = await self._closing(self._counts) or {
            name: StageCounts(name) for name in names
        }
        waiting = sum(
            final[n.stage.name].pending for n in self.graph.dependent() if n.stage.name in final
        )
        stopped = control.fatal is not None or control.interrupted
        blocked = await self._blocked() if waiting and not stopped else {}
        lost = 0
        if (
            control.fatal is None
            and not control.interrupted
            and (blocked or any(c.failed for c in final.values()))
        ):
            groups = await self._closing(
                self.ledger.failure_groups, self.job.name, names, self.options.selection
            )
            lost = sum(g.count for g in groups or () if g.category == "worker_lost")
        status, code, message = conclude(
            Conclusion(final, waiting, blocked, self.graph.outside, lost),
            fatal=control.fatal.message if control.fatal is not None else None,
            interrupted=control.interrupted,
        )
        if message is not None:
            message = self._masker.mask(message)
        elapsed = self.clock.monotonic() - started
        totals = self.totals
        result = RunResult(
            run_id=self.run_id,
            status=status,
            exit_code=code,
            elapsed=elapsed,
            counts=final,
            records=totals.records,
            retries=totals.retries,
            requests=sum(c.requests for c in self.clients.made("http")),
            request_retries=sum(c.retried for c in self.clients.made("http")),
            message=message,
            executed=totals.executed,
            stage_stats=self.stats.summaries(),
            warehouses={c.name: c.stats.as_dict() for c in self.clients.made("sql")},
        )
        await self._closing(
            self.ledger.finish_run,
            self.run_id,
            now=self.clock.time(),
            status=status.value,
            exit_code=code,
            counts=result.summary(self.stats.as_record()),
        )
        if self._given_back:
            await self._closing(self.ledger.stop_worker, self.worker_id, now=self.clock.time())
        # Else (the ledger refused the release: a full disk) the worker stays on record as
        # running, and a stopped worker's partitions are nobody's to reap: the next run
        # on this host, this process gone, takes them back at once (elsewhere, once
        # their leases run out), where a worker recorded as stopped held them a lease.
        if control.fatal is not None and result.status is not RunStatus.FATAL:
            # The end of the run could not be recorded: say so, exit 2.
            result.status, result.exit_code = RunStatus.FATAL, ExitCode.USAGE
            result.message = self._masker.mask(control.fatal.message)
        self.bus.emit(
            RunFinished(
                self.run_id, result.status.value, result.exit_code, elapsed, final, result.message
            )
        )
        self.db.shutdown()
        return result

    async def _closing(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A ledger call while the run ends; its failure (e.g. a full disk) becomes the
        run's fatal error, if it has none yet, instead of losing the result. None then."""
        try:
            return await self.db.call(fn, *args, **kwargs)
        except BackfillError as exc:
            self.control.note(exc)
            return None

    async def _blocked(self) -> dict[str, dict[str, str]]:
        """Per stage of this run, its pending partitions that wait for a failed input:
        key -> that input as ``STAGE KEY``."""
        blocked: dict[str, dict[str, str]] = {}
        for node in self.graph.dependent():
            if node.needs:
                keys = await self._closing(
                    self.ledger.blocked_keys,
                    self.job.name,
                    node.stage.name,
                    node.needs,
                    node.selection,
                )
                if keys:
                    blocked[node.stage.name] = keys
        return blocked

    def _flush_failed(self, error: BaseException) -> None:
        """A background flush of outcomes failed: the run cannot record its work."""
        self.control.fail(FatalError(str(error), category=type(error).__name__))


def run_record(run_id: str, job: str, options: RunOptions, masker: Masker, now: float) -> RunRecord:
    """The run as the ledger keeps it: who ran what, where, with which options (secrets
    masked)."""
    try:
        user: str | None = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return RunRecord(
        id=run_id,
        job=job,
        started_at=now,
        host=host(),
        pid=os.getpid(),
        command=options.command,
        options=masker.mask_tree(
            {**options.as_record(), "argv": masker.mask_argv(options.argv), "user": user}
        ),
    )


async def tick(
    bus: EventBus,
    clock: Clock,
    fleet_counts: Callable[[], Awaitable[dict[str, StageCounts]]] | None,
) -> None:
    """A Tick event every second, for displays with a cadence of their own; in a fleet
    (``fleet_counts``), the fleet's counts every few seconds, so a worker shows the
    fleet's progress, not its own share."""
    seconds = 0
    while True:
        # The displays' cadence, not the run's logic: real seconds, not the clock's.
        await asyncio.sleep(1.0)
        seconds += 1
        if fleet_counts is not None and seconds % _FLEET_COUNTS_EVERY == 0:
            try:
                counts = await fleet_counts()
            except BackfillError as exc:
                log.debug("could not read the fleet's counts: %s", exc)
            else:
                bus.emit(FleetCounts(counts))
        bus.emit(Tick(clock.time()))
