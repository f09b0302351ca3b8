"""The runner: plans, claims, executes, retries and records partitions.

One :class:`Runner` is one worker for one run. Per stage, a loop claims a batch of
partitions from the ledger and starts a task for each under the stage's concurrency
limit (a semaphore taken before the task starts and released when it ends), so memory
is bounded by the batch size, never by the number of partitions. Outcomes are buffered
and written to the ledger in batches, always *after* the partition's rows are durable
in the sink: a crash between the two redoes the partition, and the idempotent sink
writes the same rows again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import importlib
import inspect
import json
import logging
import multiprocessing
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import structlog

from backfill.checks import CheckResult, results_json
from backfill.clock import Clock, Deadline, SystemClock, current_deadline
from backfill.context import Context, RunCache, StageLog
from backfill.errors import (
    BackfillError,
    ConfigError,
    EmptyPartition,
    FatalError,
    PermanentError,
    SinkError,
    StageError,
    TransientError,
    disk_full_message,
    is_disk_full,
)
from backfill.events import (
    EventBus,
    FleetCounts,
    PartitionFinished,
    PartitionRetrying,
    PartitionStarted,
    ResourceChanged,
    RunFinished,
    RunStarted,
    RunStopping,
    Tick,
    WorkerJoined,
    WorkerLost,
)
from backfill.fleet import LedgerRate, concurrency_share
from backfill.invoke import StageThreads
from backfill.job import Job, Stage, load_job_module
from backfill.leases import LeaseBook, LeaseLost
from backfill.ledger import (
    MAX_LOST_LEASES,
    Claim,
    Ledger,
    Outcome,
    RunRecord,
    SharedCompletion,
    SharedLimits,
    StageCounts,
    Status,
    WorkerRecord,
)
from backfill.partitions import Order, Partition, Selection
from backfill.runstats import RunStats
from backfill.sinks import Mode, Record, to_mappings
from backfill.sources.http import HttpClient, RequestTally, partition_requests
from backfill.writer import PageWrites, SinkWriter, WriteResult

__all__ = ["ExitCode", "RunOptions", "RunResult", "Runner", "worker_is_dead"]

log = logging.getLogger("backfill.runner")
T = TypeVar("T")

_MAX_BATCH = 1000
_FLUSH_EVERY = 0.25
_FLUSH_SIZE = 500
_FIRST_LEASE_WAIT = 0.05  # seconds; doubles up to the lease poll
_MIN_SCAN = 1024  # pending partitions a bounded claim checks for readiness, at least
_FULL_SCAN_SPACING = 50  # a full scan is due after this many times its own cost
_MESSAGE_LIMIT = 2000
_FLEET_COUNTS_EVERY = 5  # seconds between reads of the fleet's counts, for displays


class ExitCode:
    OK = 0
    FAILED = 1
    USAGE = 2
    INTERRUPTED = 130


class RunStatus(StrEnum):
    DONE = "done"
    FAILED = "failed"
    FATAL = "fatal"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What one invocation asks for. ``stages=()`` means every stage."""

    stages: tuple[str, ...] = ()
    selection: Selection | None = None
    order: Order | None = None
    concurrency: int | None = None
    grace: float = 5.0
    command: str = "run"
    argv: tuple[str, ...] = ()
    # With other workers on the same ledger: when nothing is claimable but partitions are
    # still leased, wait (their leases expire if their workers died) instead of leaving.
    wait_for_leases: bool = False

    def as_record(self) -> dict[str, Any]:
        sel = self.selection
        return {
            "stages": list(self.stages),
            "selection": sel.describe() if sel else "everything",
            "order": self.order.value if self.order else None,
            "concurrency": self.concurrency,
            "argv": list(self.argv),
        }


@dataclass(slots=True)
class RunResult:
    run_id: str
    status: RunStatus
    exit_code: int
    elapsed: float
    counts: dict[str, StageCounts]
    records: int = 0
    retries: int = 0
    requests: int = 0
    request_retries: int = 0
    message: str | None = None
    executed: int = 0
    stage_stats: dict[str, dict[str, float]] = field(default_factory=dict)


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs. A zombie (killed, not yet reaped
    by its parent, which can take a second or more, or forever under a PID 1 that never
    reaps) does not: ``kill(pid, 0)`` alone would call it alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read()
    except FileNotFoundError:
        # Gone since the kill, unless this system has no /proc at all.
        return not os.path.exists("/proc/self/stat")
    except OSError:
        return True
    # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the
    # last ')'. Z is a zombie, X a process being torn down.
    state = fields.rpartition(b")")[2].split()[:1]
    return state not in ([b"Z"], [b"X"])


def worker_is_dead(worker: WorkerRecord, *, now: float, lease_seconds: float) -> bool:
    """Whether a worker that never said it stopped is gone: its process has vanished from
    this host, or it has not renewed its leases for longer than a lease lasts."""
    if worker.stopped_at is not None:
        return False
    if worker.host == _host() and not _pid_alive(worker.pid):
        return True
    return now - worker.heartbeat_at > lease_seconds


def _left_message(counts: Mapping[str, StageCounts]) -> str:
    """What a run that found nothing more to do leaves unfinished, and what to do."""
    running = sum(c.running for c in counts.values())
    pending = sum(c.pending for c in counts.values())
    parts = [f"{running} leased by another worker"] if running else []
    if pending:
        parts.append(f"{pending} pending, waiting for inputs not finished yet")
    return (
        f"{running + pending} partition(s) left unfinished ({', '.join(parts)}); nothing "
        "was lost: run the same command again to finish them (`backfill status` shows "
        "where they are)"
    )


def _truncate(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MESSAGE_LIMIT else message[: _MESSAGE_LIMIT - 1] + "…"


def _failed_message(
    failed: int, waiting: int, blocked: Mapping[str, Mapping[str, str]], lost: int = 0
) -> str:
    """Why a run that worked through everything it could still ends with exit 1, and how
    to repair it: failed partitions (``lost`` of them killed their worker every time),
    and those that wait for a failed input."""
    parts = [f"{failed} partition(s) failed; see `backfill status`"] if failed else []
    if lost:
        parts.append(
            f"{lost} of them died with their worker {MAX_LOST_LEASES} times in a row "
            "(worker_lost: out of memory, or killed from outside)"
        )
    if blocked:
        stage, keys = next(iter(blocked.items()))
        key, blocker = min(keys.items())
        parts.append(
            f"{waiting} wait for them"
            if failed
            else f"{waiting} partition(s) wait for failed inputs"
        )
        parts[-1] += (
            f" (e.g. {stage} {key} waits for failed {blocker}; "
            "`backfill coverage --gaps` lists them)"
        )
    elif waiting:
        parts.append(f"{waiting} wait for them (run `backfill coverage --gaps`)")
    parts.append(
        "once the cause is fixed, `backfill retry --failed` runs them again, and what "
        "waits for them"
    )
    return "; ".join(parts)


def _classify(exc: BaseException, stage: Stage, tally: RequestTally | None = None) -> StageError:
    """Map any exception a stage raised onto transient, permanent or fatal."""
    if isinstance(exc, StageError):
        return exc
    if isinstance(exc, TimeoutError):
        if stage.timeout is None:
            # Not the stage's own limit: a client's (a socket's read timeout, say).
            return TransientError(f"TimeoutError: {exc}", category="timeout")
        # Waits for a resource's turns do not count (see Deadline): this is the stage's
        # own time, and what the source last did wrong is likely why.
        cause = (
            f"; the source's last error: {tally.last_error}" if tally and tally.last_error else ""
        )
        return TransientError(
            f"stage {stage.name} took longer than its timeout of {stage.timeout:g} s{cause}",
            category="timeout",
        )
    if isinstance(exc, SinkError):
        return FatalError(str(exc), category="sink")
    if is_disk_full(exc):
        # Filled by the stage itself (a download, a temporary file): no retry frees space.
        return FatalError(disk_full_message(exc.filename), category="disk_full")
    if isinstance(exc, OSError):  # ConnectionError included
        return TransientError(f"{type(exc).__name__}: {exc}", category="network")
    if isinstance(exc, BackfillError):
        return FatalError(str(exc), category=type(exc).__name__)
    # A bug or a data problem in the stage: retrying the same input will not help.
    return PermanentError(f"{type(exc).__name__}: {exc}", category=type(exc).__name__)


class Runner:
    """Runs one job's selected stages against a ledger until nothing claimable is left."""

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
        self.run_id = uuid.uuid4().hex[:12]
        self.worker_id = f"{_host()}:{os.getpid()}:{self.run_id}"
        self.cache = RunCache()
        self._clients: dict[str | None, HttpClient] = {}
        self._secrets = job.secrets
        # Everything the run shows or stores goes through it; checkpoints are sealed by it.
        self._masker = job.masker(ledger.url)
        for resource in job.resources.values():
            resource.reset()
            resource.subscribe(self._on_resource)
        self._stop = asyncio.Event()
        # Set when a resource pauses, opens its circuit, waits for a quota...: its state
        # goes on record (at once, at the first one: status shows the run's resources).
        self._resources_changed = asyncio.Event()
        self._resources_changed.set()
        self._immediate = False
        self._fatal: StageError | None = None
        self._interrupted = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._outcomes: list[Outcome] = []
        # Every claim this runner holds and has not yet recorded an outcome for. Whatever
        # is left here at shutdown (e.g. a task cancelled before it ever ran) is released.
        self._held: set[int] = set()
        # Until when each begun partition's lease is certainly ours (see backfill.leases).
        self.leases = LeaseBook(job.lease_seconds)
        self._leases_lost = 0
        self._fences: dict[str, bool] = {}
        self._flush_lock = asyncio.Lock()
        self._background_flush: asyncio.Task[None] | None = None
        # Decided once per stage, not per partition (inspect's checks are not free).
        self._kinds = {s.name: _kind(s.fn) for s in self.stages}
        self._needs = {s.name: job.dependencies(s) for s in self.stages}
        # Stages of this run whose loops still run: what a waiting downstream stage
        # can expect progress from. ``_progress`` is replaced each time it fires.
        self._included = frozenset(s.name for s in self.stages)
        self._active: set[str] = set(self._included)
        # Stages with nothing left to claim: the partitions they still run are their last.
        self._draining: set[str] = set()
        self._progress = asyncio.Event()
        self._process_pool: ProcessPoolExecutor | None = None
        self._ledger_pool = ThreadPoolExecutor(1, thread_name_prefix="backfill-ledger")
        self._stage_threads: StageThreads | None = None
        self.writer = SinkWriter(
            self.worker_id,
            completer_for=ledger.completer if isinstance(ledger, SharedCompletion) else None,
            fence_for=ledger.fence if isinstance(ledger, SharedCompletion) else None,
            now=self.clock.time,
        )
        self._records = 0
        self._retries = 0
        self._executed = 0
        # Run metrics, stored with the run record; a subscriber like any display.
        self.stats = RunStats(s.name for s in self.stages)
        self.bus.subscribe(self.stats)
        self._grace_task: asyncio.Task[None] | None = None
        self._log = logging.getLogger("backfill.stage")

    # -- public control --------------------------------------------------------------

    def stop(self, reason: str = "interrupted", *, immediate: bool = False) -> None:
        """Stop claiming; finish in-flight work (or cancel it when ``immediate``)."""
        first = not self._stop.is_set()
        self._interrupted = self._interrupted or reason == "interrupted"
        self._stop.set()
        if immediate and not self._immediate:
            self._immediate = True
            self._cancel_in_flight()
        elif first:
            self._grace_task = asyncio.get_running_loop().create_task(self._grace_then_cancel())
        if first or immediate:
            self.bus.emit(RunStopping(self._masker.mask(reason), immediate=immediate))

    def _cancel_in_flight(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _grace_then_cancel(self) -> None:
        await self.clock.sleep(self.options.grace)
        self._cancel_in_flight()

    def interrupt(self) -> None:
        """First call: graceful stop. Second call: cancel in-flight work at once."""
        if self._stop.is_set():
            self.stop("interrupted", immediate=True)
        else:
            self.stop("interrupted")

    def http(self, resource: str | None = None) -> HttpClient:
        """The run's HTTP client for ``resource`` (None: unlimited), created on first use."""
        client = self._clients.get(resource)
        if client is None:
            if resource is None:
                client = HttpClient(timeout=self.job.http_timeout, secrets=self._secrets)
            else:
                if resource not in self.job.resources:
                    raise BackfillError(f"unknown resource {resource!r}; declare it on the job")
                options = self.job.http_options[resource]
                client = HttpClient(
                    resource=self.job.resources[resource],
                    timeout=options["timeout"],
                    retries=options["retries"],
                    headers=options["headers"],
                    params=options["params"],
                    secrets=self._secrets,
                    base_url=options["base_url"],
                    allowed_hosts=options["allowed_hosts"],
                    cross_origin=options["cross_origin"],
                    max_body=options["max_body"],
                    deadline=options["deadline"],
                    hedge=options["hedge"],
                )
            self._clients[resource] = client
        return client

    def _on_resource(self, name: str, what: str, seconds: float, kind: str) -> None:
        self.bus.emit(ResourceChanged(name, what, seconds, kind))
        self._resources_changed.set()

    def _resources_json(self) -> str | None:
        """What the resources this run's stages use are doing, as the ledger keeps it."""
        used = sorted({s.resource for s in self.stages if s.resource is not None})
        if not used:
            return None
        states = {name: self.job.resources[name].state() for name in used}
        return json.dumps(states, separators=(",", ":"))

    async def _tick(self) -> None:
        """A Tick event every second, for displays with a cadence of their own; in a
        fleet, the fleet's counts every few seconds, so a worker shows the fleet's
        progress, not its own share."""
        names = [s.name for s in self.stages]
        seconds = 0
        while True:
            # The displays' cadence, not the run's logic: real seconds, not the clock's.
            await asyncio.sleep(1.0)
            seconds += 1
            if self.options.wait_for_leases and seconds % _FLEET_COUNTS_EVERY == 0:
                try:
                    counts = await self._db(
                        self.ledger.counts,
                        self.job.name,
                        names,
                        self.options.selection,
                        recent=False,
                    )
                except BackfillError as exc:
                    log.debug("could not read the fleet's counts: %s", exc)
                else:
                    self.bus.emit(FleetCounts(counts))
            self.bus.emit(Tick(self.clock.time()))

    async def _publish_resources(self) -> None:
        """Put on record what this worker's resources are doing as soon as one pauses,
        opens or closes its circuit, changes its rate or waits for a quota (at most once
        a second; the heartbeat does it too), so status and the dashboard can say why
        nothing moves."""
        while True:
            await self._resources_changed.wait()
            self._resources_changed.clear()
            try:
                await self._db(
                    self.ledger.heartbeat,
                    self.worker_id,
                    now=self.clock.time(),
                    resources=self._resources_json(),
                )
            except BackfillError as exc:
                log.warning("could not record the state of resources: %s", exc)
            # Not a wait the run's clock should see: only spacing the writes out.
            await asyncio.sleep(1.0)

    def _unseal(
        self, checkpoint: str | None, log: logging.LoggerAdapter[logging.Logger]
    ) -> str | None:
        """A stored checkpoint with the secrets declared now (a rotated key is used)."""
        if checkpoint is None:
            return None
        value, missing = self._masker.unseal(checkpoint)
        for where in missing:
            log.warning(
                "the checkpoint names the secret %s, which the job no longer declares; the "
                "partition resumes with the placeholder in its place",
                where,
            )
        return value

    def _clean(self, message: str) -> str:
        """One line, bounded, with every secret masked: what the ledger and logs get."""
        return _truncate(self._masker.mask(message))

    # -- plumbing ----------------------------------------------------------------------

    async def _db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking ledger call on the ledger's own thread.

        Shielded: cancelling the caller must not cancel a queued call (a batch of
        outcomes would silently vanish); the call runs to its end regardless.
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._ledger_pool, lambda: fn(*args, **kwargs))
        return await asyncio.shield(future)

    async def _db_timed(self, fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
        """``_db``, and how long the call itself took on the ledger's thread: not the wait
        for that thread, nor for an event loop busy with other work."""
        clock = self.clock

        def timed() -> tuple[Any, float]:
            began = clock.monotonic()
            return fn(*args, **kwargs), clock.monotonic() - began

        result: tuple[Any, float] = await self._db(timed)
        return result

    def _selection(self, stage: Stage) -> Selection | None:
        """The run's selection; a reference stage's single partition is always in it."""
        return None if stage.reference else self.options.selection

    def _signal_progress(self) -> None:
        """Wake the stages waiting for upstream partitions to finish."""
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    def _concurrency(self, stage: Stage) -> int:
        if self.options.concurrency is not None:
            return max(1, self.options.concurrency)
        return stage.concurrency

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

    async def _start(self, now: float, names: list[str]) -> None:
        """Join the ledger: register this worker, release dead workers' partitions, plan
        the partitions, mark the stale ones, and record the run."""
        await self._db(
            self.ledger.register_worker,
            WorkerRecord(self.worker_id, self.job.name, _host(), os.getpid(), now, now, None),
        )
        lost = await self._reap_dead_workers()
        selected = {s.name for s in self.stages}
        # Stages the selected ones need are planned too (not run): their partitions must
        # be on record for a dependency to wait for them.
        needed = {u for s in self.stages for u in self.job.upstream(s.name)} | selected
        for stage in self.job.stages.values():
            if stage.name in needed:
                # The spec's repr names every partition it holds: a worker joining a run
                # already planned skips the insert of each one.
                await self._db(
                    self.ledger.plan,
                    self.job.name,
                    stage.name,
                    stage.partitions,
                    fingerprint=repr(stage.partitions),
                )
        for stage in self.stages:
            if stage.needs:
                # Finished partitions whose inputs are being (or were) redone run again.
                await self._db(
                    self.ledger.mark_stale,
                    self.job.name,
                    stage.name,
                    self._needs[stage.name],
                    self._selection(stage),
                )
        try:
            user: str | None = getpass.getuser()
        except (KeyError, OSError):
            user = None
        await self._db(
            self.ledger.start_run,
            RunRecord(
                id=self.run_id,
                job=self.job.name,
                started_at=now,
                host=_host(),
                pid=os.getpid(),
                command=self.options.command,
                options=self._masker.mask_tree(
                    {
                        **self.options.as_record(),
                        "argv": self._masker.mask_argv(self.options.argv),
                        "user": user,
                    }
                ),
            ),
        )
        initial = await self._db(
            self.ledger.counts, self.job.name, names, self.options.selection, recent=False
        )
        self.bus.emit(RunStarted(self.run_id, self.job.name, self.worker_id, now, initial))
        self.bus.emit(WorkerJoined(self.worker_id, self.job.name, _host(), os.getpid()))
        for event in lost:
            self.bus.emit(event)

    async def _run(self) -> RunResult:
        started = self.clock.monotonic()
        now = self.clock.time()
        names = [s.name for s in self.stages]
        try:
            await self._start(now, names)
        except BackfillError as exc:
            # The ledger cannot take the run (e.g. its disk is full): nothing runs, and
            # the run still ends with a result (and the command with its summary).
            self._fatal = FatalError(str(exc), category=type(exc).__name__)
        fleet: asyncio.Task[None] | None = None
        if self._fatal is None and isinstance(self.ledger, SharedLimits):
            fleet = asyncio.create_task(self._fleet(self.ledger))

        if self._fatal is None:
            try:
                await self.writer.open([sink for s in self.stages for sink in s.sinks])
            except SinkError as exc:
                self._fatal = FatalError(str(exc), category="sink")
        sync_threads = sum(
            self._concurrency(s) for s in self.stages if not s.is_async and s.executor == "thread"
        )
        if sync_threads:
            self._stage_threads = StageThreads(sync_threads)
        processes = [s for s in self.stages if s.executor == "process"]
        if processes:
            self._process_pool = _process_pool(
                sum(self._concurrency(s) for s in processes), processes
            )

        heartbeat = asyncio.create_task(self._heartbeat())
        flusher = asyncio.create_task(self._flush_loop())
        publisher = asyncio.create_task(self._publish_resources())
        ticker = asyncio.create_task(self._tick())
        try:
            if self._fatal is None:
                try:
                    async with asyncio.TaskGroup() as group:
                        for stage in self.stages:
                            group.create_task(self._stage_loop(stage))
                except* BackfillError as group_error:
                    # The ledger itself failed (e.g. locked for too long): stop cleanly
                    # and report it; every lease still held is released below.
                    first = group_error.exceptions[0]
                    self._fatal = FatalError(str(first), category=type(first).__name__)
                    self.stop(f"fatal: {first}", immediate=True)
        finally:
            if self._grace_task is not None:
                self._grace_task.cancel()
            heartbeat.cancel()
            flusher.cancel()
            publisher.cancel()
            ticker.cancel()
            if fleet is not None:
                fleet.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fleet
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            if self._background_flush is not None:
                # Its failure, if any, was already turned into a fatal stop.
                with contextlib.suppress(Exception):
                    await self._background_flush
            # Rows still buffered (from partitions cancelled while waiting) are written;
            # those partitions are released below and redone idempotently.
            await self.writer.close()
            for claim_id in sorted(self._held):
                self._outcomes.append(Outcome(claim_id, Status.PENDING, attempts=0))
            self._held.clear()
            try:
                await self._flush()
            except BackfillError as exc:
                self._fail_closing(exc)
            # Nothing this worker leased may outlive it as "running".
            stray = await self._closing(self.ledger.release_owner, self.worker_id)
            if stray:
                # Expected after a fatal stop (the in-flight work it cancelled).
                level = logging.INFO if self._fatal is not None else logging.WARNING
                log.log(level, "released %d partition(s) still leased at the end of the run", stray)
            await self._close_resources()

        final: dict[str, StageCounts] = await self._closing(
            self.ledger.counts, self.job.name, names, self.options.selection, recent=False
        ) or {name: StageCounts(name) for name in names}
        failed = sum(c.failed for c in final.values())
        waiting = self._waiting(final)
        # Read after every lease of this worker was released: whatever is still pending
        # or running is work left, and exit 0 must mean that nothing is.
        left = sum(c.pending + c.running for c in final.values())
        stopped = self._fatal is not None or self._interrupted
        blocked = await self._blocked() if waiting and not stopped else {}
        outside = sorted({u for s in self.stages for u in self.job.upstream(s.name)} - set(names))
        if self._fatal is not None:
            status, code, message = RunStatus.FATAL, ExitCode.USAGE, self._fatal.message
        elif self._interrupted:
            status, code, message = RunStatus.INTERRUPTED, ExitCode.INTERRUPTED, None
        elif failed or blocked:
            status, code = RunStatus.FAILED, ExitCode.FAILED
            groups = await self._closing(
                self.ledger.failure_groups, self.job.name, names, self.options.selection
            )
            lost = sum(g.count for g in groups or () if g.category == "worker_lost")
            message = _failed_message(failed, waiting, blocked, lost)
        elif waiting and (outside or not any(c.running for c in final.values())):
            status, code = RunStatus.FAILED, ExitCode.FAILED
            message = (
                f"{waiting} partition(s) wait for upstream stages this run did "
                f"not include ({', '.join(outside)}); run those too, e.g. with --start-from"
                if outside
                else f"{waiting} partition(s) wait for upstream partitions outside the "
                "selection; widen --from/--to/--where, or run without them"
            )
        elif left:
            status, code = RunStatus.FAILED, ExitCode.FAILED
            message = _left_message(final)
        else:
            status, code, message = RunStatus.DONE, ExitCode.OK, None
        if message is not None:
            message = self._masker.mask(message)
        elapsed = self.clock.monotonic() - started
        result = RunResult(
            run_id=self.run_id,
            status=status,
            exit_code=code,
            elapsed=elapsed,
            counts=final,
            records=self._records,
            retries=self._retries,
            requests=sum(c.requests for c in self._clients.values()),
            request_retries=sum(c.retried for c in self._clients.values()),
            message=message,
            executed=self._executed,
            stage_stats=self.stats.summaries(),
        )
        await self._closing(
            self.ledger.finish_run,
            self.run_id,
            now=self.clock.time(),
            status=status.value,
            exit_code=code,
            counts={
                "executed": self._executed,
                "records": self._records,
                "retries": self._retries,
                "requests": result.requests,
                "request_retries": result.request_retries,
                "elapsed": round(elapsed, 3),
                "stages": {
                    n: {"done": c.done, "empty": c.empty, "failed": c.failed, "pending": c.pending}
                    for n, c in final.items()
                },
                "message": message,
                "stats": self.stats.as_record(),
            },
        )
        await self._closing(self.ledger.stop_worker, self.worker_id, now=self.clock.time())
        if self._fatal is not None and result.status is not RunStatus.FATAL:
            # The end of the run could not be recorded: say so, exit 2.
            result.status, result.exit_code = RunStatus.FATAL, ExitCode.USAGE
            result.message = self._masker.mask(self._fatal.message)
        self.bus.emit(
            RunFinished(
                self.run_id, result.status.value, result.exit_code, elapsed, final, result.message
            )
        )
        self._ledger_pool.shutdown(wait=True)
        return result

    async def _closing(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A ledger call while the run ends; its failure (e.g. a full disk) becomes the
        run's fatal error, if it has none yet, instead of losing the result. None then."""
        try:
            return await self._db(fn, *args, **kwargs)
        except BackfillError as exc:
            self._fail_closing(exc)
            return None

    def _fail_closing(self, exc: BackfillError) -> None:
        if self._fatal is None:
            self._fatal = FatalError(str(exc), category=type(exc).__name__)

    async def _blocked(self) -> dict[str, dict[str, str]]:
        """Per stage of this run, its pending partitions that wait for a failed input:
        key -> that input as ``STAGE KEY``."""
        blocked: dict[str, dict[str, str]] = {}
        for stage in self.stages:
            needs = self._needs[stage.name]
            if needs:
                keys = await self._closing(
                    self.ledger.blocked_keys,
                    self.job.name,
                    stage.name,
                    needs,
                    self._selection(stage),
                )
                if keys:
                    blocked[stage.name] = keys
        return blocked

    def _waiting(self, counts: Mapping[str, StageCounts]) -> int:
        """Partitions of dependent stages left pending: their inputs are not finished."""
        return sum(counts[s.name].pending for s in self.stages if s.needs and s.name in counts)

    async def _close_resources(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        if self._stage_threads is not None:
            # Threads of sync stages cannot be cancelled; nothing waits for stragglers.
            self._stage_threads.shutdown()
        if self._process_pool is not None:
            self._process_pool.shutdown(wait=False, cancel_futures=True)

    async def _reap_dead_workers(self) -> list[WorkerLost]:
        """Release partitions held by workers of this job that are certainly gone."""
        lost: list[WorkerLost] = []
        now = self.clock.time()
        for worker in await self._db(self.ledger.workers, self.job.name):
            if worker.id == self.worker_id:
                continue
            if worker_is_dead(worker, now=now, lease_seconds=2 * self.job.lease_seconds):
                released = await self._db(self.ledger.release_owner, worker.id, lost=True)
                await self._db(self.ledger.stop_worker, worker.id, now=now)
                if released:
                    log.info("released %d partition(s) of dead worker %s", released, worker.id)
                lost.append(WorkerLost(worker.id, released))
        return lost

    async def _fleet(self, ledger: SharedLimits) -> None:
        """Keep resource schedules in the ledger: quotas always (they hold across
        restarts); rates where others may share them (a fleet's ledger, or a resource
        declared shared=True); and, in a fleet, a concurrency share per worker
        rebalanced every couple of seconds."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="backfill-fleet")
        try:
            for resource in self.job.resources.values():
                rate = bool(resource.rate_interval) and (ledger.fleet or resource.shared)
                if rate or resource.quotas:
                    resource.share_with(
                        LedgerRate(ledger, self.job.name, resource, pool, self.clock, rate=rate),
                        rate=rate,
                    )
            shared = [
                r for r in self.job.resources.values() if r.concurrency is not None and ledger.fleet
            ]
            while shared:
                try:
                    workers = await self._db(self.ledger.workers, self.job.name)
                except BackfillError as exc:
                    log.warning("could not rebalance concurrency: %s", exc)
                else:
                    now = self.clock.time()
                    alive = [
                        w.id
                        for w in workers
                        if not worker_is_dead(w, now=now, lease_seconds=self.job.lease_seconds)
                    ]
                    for resource in shared:
                        assert resource.concurrency is not None
                        share = concurrency_share(resource.concurrency, alive, self.worker_id)
                        await resource.set_share(share)
                await self.clock.sleep(min(2.0, self.job.lease_seconds / 3))
            await asyncio.Event().wait()
        finally:
            pool.shutdown(wait=False)

    async def _heartbeat(self) -> None:
        """Renew our leases on a fixed tick that does not drift."""
        interval = self.job.lease_seconds / 3
        next_tick = self.clock.monotonic() + interval
        while True:
            await self.clock.sleep(max(0.0, next_tick - self.clock.monotonic()))
            next_tick += interval
            now = self.clock.time()
            since = self.clock.monotonic()
            try:
                await self._db(
                    self.ledger.renew, self.worker_id, lease_seconds=self.job.lease_seconds, now=now
                )
                self.leases.renewed(since=since, done=self.clock.monotonic())
                await self._db(
                    self.ledger.heartbeat,
                    self.worker_id,
                    now=now,
                    resources=self._resources_json(),
                )
            except BackfillError as exc:
                log.warning("could not renew leases: %s", exc)

    async def _flush_loop(self) -> None:
        while True:
            await self.clock.sleep(_FLUSH_EVERY)
            await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:
            if not self._outcomes:
                return
            batch, self._outcomes = self._outcomes, []
            applied = await self._db(
                self.ledger.complete, self.worker_id, batch, now=self.clock.time()
            )
            self._signal_progress()
            if applied < len(batch):
                self._say_lost(f"{len(batch) - applied} outcome(s) were not recorded")

    async def _record(self, outcome: Outcome, *, soon: bool = False) -> None:
        """Queue an outcome for the ledger; flush in the background when the batch is full
        (or at once, ``soon``)."""
        self._held.discard(outcome.id)
        self.leases.forget(outcome.id)
        self._outcomes.append(outcome)
        if (soon or len(self._outcomes) >= _FLUSH_SIZE) and self._background_flush is None:
            # Off the partition's path: its task and concurrency slot need not wait for
            # the ledger round trip (awaiting it here stalled the event loop's work).
            self._background_flush = asyncio.create_task(self._flush())
            self._background_flush.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._background_flush = None
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        if self._fatal is None:
            self._fatal = FatalError(str(error), category=type(error).__name__)
        self.stop(f"fatal: {error}", immediate=True)

    # -- per stage -----------------------------------------------------------------------

    async def _stage_loop(self, stage: Stage) -> None:
        limit = self._concurrency(stage)
        semaphore = asyncio.Semaphore(limit)
        batch_size = min(_MAX_BATCH, max(2 * limit, 16))
        order = self.options.order or stage.partitions.order
        running: set[asyncio.Task[None]] = set()
        # A partition gives its slot back once its rows are handed to the sink writer,
        # not when they are durable: the next partition's requests need not wait for a
        # batch to fill. ``slots`` says whether a task's slot is already back.
        slots: dict[asyncio.Task[None], list[bool]] = {}
        # Waiting for other workers' leases: poll soon at first (most end within moments
        # of each other), then back off to the lease poll.
        lease_wait = _FIRST_LEASE_WAIT
        # Whether a claim found nothing after nothing was seen leased elsewhere.
        settled = False

        def releaser(flag: list[bool]) -> Callable[[], None]:
            def release() -> None:
                if not flag[0]:
                    flag[0] = True
                    semaphore.release()

            return release

        def finished(task: asyncio.Task[None]) -> None:
            # One callback, not three: each is a separate event-loop handle per partition.
            running.discard(task)
            self._tasks.discard(task)
            flag = slots.pop(task)
            if not flag[0]:
                flag[0] = True
                semaphore.release()

        needs = self._needs[stage.name]
        upstream = set(self.job.upstream(stage.name))
        selection = self._selection(stage)

        # A stage with inputs that has caught up with them would scan every pending
        # partition for a ready one at each claim. It looks among the first ones instead
        # (Ledger.claim's scan) and among all of them only when a full scan is due: its
        # last one cost at most a fiftieth of the time since. Nothing is concluded (no
        # wait, no stop) on an empty bounded claim.
        full_due = 0.0

        def take(limit: int, suspects: bool = False, full: bool = True) -> Any:
            scan = None if full or suspects else max(2 * limit, _MIN_SCAN)
            return self._db_timed(
                self.ledger.claim,
                self.job.name,
                stage.name,
                self.worker_id,
                limit=limit,
                lease_seconds=self.job.lease_seconds,
                now=self.clock.time(),
                run_id=self.run_id,
                selection=selection,
                order=order,
                needs=needs,
                suspects=suspects,
                scan=scan,
            )

        while not self._stop.is_set():
            batch_started = self.clock.monotonic()
            progress = self._progress
            claims: list[Claim]
            full = not needs or batch_started >= full_due
            claims, claim_cost = await take(batch_size, full=full)
            if needs and full:
                full_due = self.clock.monotonic() + _FULL_SCAN_SPACING * claim_cost
            alone = False
            if not claims and not running:
                # Partitions whose worker died holding them run with nothing else of the
                # stage, on record before the next claim: a death among them is blamed
                # on them only, and those lost twice come one at a time.
                claims, more = await take(batch_size, suspects=True)
                claim_cost += more
                alone = bool(claims)
            self._held.update(c.id for c in claims)
            if claims:
                lease_wait = _FIRST_LEASE_WAIT
                settled = False
            else:
                if not running:
                    if upstream and await self._upstream_busy(upstream):
                        # Wait for upstream partitions to finish; never claim more often
                        # than a few times the cost of an empty claim.
                        await self._wait_progress(progress, self._lease_poll())
                        await self._sleep_unless_stopped(min(1.0, 4 * claim_cost))
                        continue
                    if not full:
                        # Inputs are all finished: look at every pending partition before
                        # concluding that none of them is ready.
                        full_due = 0.0
                        continue
                    if self.options.wait_for_leases:
                        # Our own last outcomes first: unrecorded, they would look like
                        # another worker's leases and cost a lease poll of waiting.
                        await self._flush()
                        if await self._leased_elsewhere(stage):
                            settled = False
                            await self._sleep_unless_stopped(lease_wait)
                            lease_wait = min(self._lease_poll(), 2 * lease_wait)
                            continue
                        if not settled:
                            # A lease given back since the claim above is pending now:
                            # one more claim takes it rather than leaving it behind.
                            settled = True
                            continue
                    break
                if stage.name not in self._draining and not (
                    upstream and await self._upstream_busy(upstream)
                ):
                    self._draining.add(stage.name)
                if running:  # the last ones may have ended while the ledger answered
                    await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
                continue
            index = 0
            while index < len(claims):
                await semaphore.acquire()
                if alone:
                    # Each suspect's outcome on record as it comes: a death later in the
                    # group must not cost those that finished before it a suspicion.
                    await self._flush()
                if self._stop.is_set():
                    semaphore.release()
                    for rest in claims[index:]:
                        await self._record(Outcome(rest.id, Status.PENDING, attempts=0))
                    break
                # Every slot free now starts a partition, and one ledger call begins them
                # all: a death from here on counts against them (and not against the
                # rest of the batch), and their leases, taken a while ago, are proven
                # still ours.
                group = [claims[index]]
                while not alone and index + len(group) < len(claims) and not semaphore.locked():
                    await semaphore.acquire()
                    group.append(claims[index + len(group)])
                index += len(group)
                since = self.clock.monotonic()
                held = await self._db(
                    self.ledger.begin, self.worker_id, [(c.id, c.claims) for c in group]
                )
                self.leases.proven(held, since=since)
                if self._stop.is_set():
                    # Stopped while the ledger answered: they go back unstarted.
                    for _ in group:
                        semaphore.release()
                    for rest in claims[index - len(group) :]:
                        await self._record(Outcome(rest.id, Status.PENDING, attempts=0))
                    break
                for claim in group:
                    if claim.id not in held:
                        semaphore.release()
                        self._lease_lost(claim)
                        continue
                    flag = [False]
                    task = asyncio.create_task(self._execute(stage, claim, releaser(flag)))
                    slots[task] = flag
                    running.add(task)
                    self._tasks.add(task)
                    task.add_done_callback(finished)
            if alone:
                while running:
                    await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
                    await self._flush()
                continue
            # Size batches to roughly a second of work: fewer ledger round trips for fast
            # stages, small leases for slow ones.
            took = self.clock.monotonic() - batch_started
            if took < 0.5 and len(claims) == batch_size:
                batch_size = min(_MAX_BATCH, batch_size * 2)
            elif took > 5.0:
                batch_size = max(2 * limit, batch_size // 2)
        if running:
            # On a stop, the grace timer (or a second Ctrl+C) cancels what is left.
            await asyncio.wait(set(running))
        if self.job.downstream(stage.name):
            # What this stage finished must be on record before its dependants decide
            # that nothing more will come from it.
            await self._flush()
        self._active.discard(stage.name)
        self._signal_progress()

    def _lease_lost(self, claim: Claim) -> None:
        """Forget a partition whose lease passed to another worker; say so once a run."""
        self._held.discard(claim.id)
        self.leases.forget(claim.id)
        self._say_lost(f"partition {claim.key} was not written")

    def _say_lost(self, what: str) -> None:
        """Warn of leases that passed on, the first time only: after a stall, every
        partition the worker held goes the same way."""
        self._leases_lost += 1
        if self._leases_lost == 1:
            log.warning(
                "%s: its lease had passed to another worker (this one was stalled for "
                "longer than a lease); it writes nothing more for the partitions it lost",
                what,
            )
        else:
            log.debug("%s: its lease had passed to another worker", what)

    async def _prove_lease(self, claim: Claim) -> None:
        """Before a write the ledger cannot fence in its own transaction: make sure the
        lease is still ours, asking the ledger only when it may have run out."""
        if self.leases.certain(claim.id, now=self.clock.monotonic()):
            return
        since = self.clock.monotonic()
        held = await self._db(self.ledger.begin, self.worker_id, [(claim.id, claim.claims)])
        if claim.id not in held:
            raise LeaseLost(claim.key)
        self.leases.proven(held, since=since)

    async def _upstream_busy(self, upstream: set[str]) -> bool:
        """Whether partitions of these stages may still finish: a stage of this run is
        still working on them, or (with other workers) some are leased, or ready to be
        claimed in a stage this run leaves to others."""
        if upstream & self._active:
            return True
        if not self.options.wait_for_leases:
            return False
        # Whatever anyone holds now ends, or its lease expires and it is claimable again.
        # Pending partitions count only where another worker could claim them: ready
        # ones, in this run's selection, of a stage this run does not include (a stage
        # it includes has claimed all it could before its loop ended). Those that wait
        # for a failed input, or for inputs outside the selection, nobody will run.
        for name in sorted(upstream):
            stage = self.job.stages[name]
            selection = self._selection(stage)
            if name not in self._included and await self._db(
                self.ledger.unfinished,
                self.job.name,
                name,
                selection,
                needs=self.job.dependencies(stage),
            ):
                return True
            if await self._db(self.ledger.unfinished, self.job.name, name, None, running_only=True):
                return True
        return False

    async def _wait_progress(self, progress: asyncio.Event, seconds: float) -> None:
        """Until ``progress`` fires (outcomes were recorded), a stop, or ``seconds``."""
        waiters = {
            asyncio.ensure_future(progress.wait()),
            asyncio.ensure_future(self._stop.wait()),
        }
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    def _lease_poll(self) -> float:
        """How often to look for partitions whose leases have expired."""
        return min(2.0, self.job.lease_seconds / 4)

    async def _leased_elsewhere(self, stage: Stage) -> bool:
        """Whether partitions of ``stage`` are leased by another worker. Its pending ones
        are not waited for: a claim just found none of them ready, and those waiting for
        inputs still being worked on are what ``_upstream_busy`` waits for."""
        return bool(
            await self._db(
                self.ledger.unfinished,
                self.job.name,
                stage.name,
                self._selection(stage),
                running_only=True,
            )
        )

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        stopped = asyncio.ensure_future(self._stop.wait())
        sleeping = asyncio.ensure_future(self.clock.sleep(seconds))
        await asyncio.wait({stopped, sleeping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, sleeping):
            task.cancel()

    async def _execute(self, stage: Stage, claim: Claim, release: Callable[[], None]) -> None:
        partition = claim.partition(stage.partitions.grain)
        self.bus.emit(PartitionStarted(stage.name, claim.key))
        started = self.clock.monotonic()
        attempt = 0
        adapter = StageLog(
            self._log, {"run_id": self.run_id, "stage": stage.name, "partition": claim.key}
        )
        outcome: Outcome
        # Requests ctx.http makes for this partition (this task's own context), and the
        # partition every log line of this task is about.
        tally = RequestTally()
        partition_requests.set(tally)
        structlog.contextvars.bind_contextvars(stage=stage.name, partition=claim.key)
        pages = PageWrites(claim.checkpoint)
        rows: dict[str, list[Record]] = {}
        # Every write for the partition proves its lease: inside the sink's transaction
        # where the ledger shares the database, else by asking the ledger just before.
        lease = (claim.id, claim.claims)
        fenced = self._fenced(stage)

        async def save_checkpoint(value: str | None) -> None:
            # A next link may echo the API key: the ledger (and the pages' tags) hold
            # placeholders where the job's secrets were, never the secrets.
            sealed = self._masker.seal(value) if value is not None else None
            if not await self._db(self.ledger.save_checkpoint, self.worker_id, claim.id, sealed):
                raise LeaseLost(claim.key)
            # Tag later pages with it only once it is on record: until then a resume
            # starts from the one before, and must find (and replace) them by that one.
            pages.checkpoint = sealed

        async def write(
            tables: Mapping[str, list[Record]], done: Outcome | None, *, urgent: bool
        ) -> WriteResult:
            """Every write for the partition: its lease proven, its page tagged."""
            if not fenced:
                await self._prove_lease(claim)
            return await self.writer.write(
                stage.sinks,
                partition,
                tables,
                done,
                first=pages.first,
                page=pages.checkpoint,
                redo=pages.redo,
                urgent=urgent,
                lease=lease,
            )

        async def write_now(items: Iterable[object], table: str | None) -> int:
            now_rows = self._rows_for(stage, to_mappings(items), table)
            count = sum(len(r) for r in now_rows.values())
            if stage.sinks:
                result = await write(now_rows, None, urgent=True)
                if result.error is not None:
                    raise result.error
                if result.lost:
                    raise LeaseLost(claim.key)
            pages.written(count)
            return count

        try:
            while True:
                attempt += 1
                pages.attempt()
                ctx = Context(
                    partition=partition,
                    job=self.job.name,
                    stage=stage.name,
                    run_id=self.run_id,
                    attempt=attempt,
                    cache=self.cache,
                    log=adapter,
                    _http=self.http,
                    _resource=stage.resource,
                    checkpoint=self._unseal(pages.checkpoint, adapter),
                    _save_checkpoint=save_checkpoint,
                    _write=write_now,
                )
                try:
                    rows = await self._call(stage, ctx)
                except EmptyPartition as exc:
                    outcome = Outcome(
                        claim.id,
                        Status.EMPTY,
                        attempts=attempt,
                        duration=self.clock.monotonic() - started,
                        error_category="empty",
                        error_message=self._clean(exc.reason),
                    )
                    break
                except (asyncio.CancelledError, LeaseLost):
                    raise
                except Exception as exc:
                    error = _classify(exc, stage, tally)
                    if isinstance(error, FatalError):
                        if self._fatal is None:
                            self._fatal = error
                            self.stop(f"fatal: {error.message}", immediate=True)
                        outcome = Outcome(
                            claim.id,
                            Status.PENDING,
                            attempts=attempt,
                            error_category=error.category,
                            error_message=self._clean(error.message),
                        )
                        break
                    delay = None
                    if isinstance(error, TransientError):
                        delay = stage.retry.delay(attempt, error.retry_after)
                    if delay is None or self._stop.is_set():
                        if delay is not None:
                            # Stopping: give the partition back rather than fail it.
                            outcome = Outcome(claim.id, Status.PENDING, attempts=attempt)
                            break
                        outcome = Outcome(
                            claim.id,
                            Status.FAILED,
                            attempts=attempt,
                            duration=self.clock.monotonic() - started,
                            error_category=error.category,
                            error_message=self._clean(error.message),
                        )
                        if not isinstance(exc, StageError):
                            adapter.debug("stage raised", exc_info=exc)
                        break
                    self._retries += 1
                    self.bus.emit(
                        PartitionRetrying(
                            stage.name,
                            claim.key,
                            attempt,
                            delay,
                            error.category,
                            self._clean(error.message),
                        )
                    )
                    await self.clock.sleep(delay)
                    continue
                written = pages.rows + sum(len(r) for r in rows.values())
                duration = self.clock.monotonic() - started
                outcome = Outcome(
                    claim.id, Status.DONE, attempts=attempt, records=written, duration=duration
                )
                if stage.checks:
                    outcome = self._check(stage, partition, rows, outcome)
                break
            if tally.requests:
                outcome = dataclasses.replace(outcome, requests=tally.requests)
            if outcome.status is Status.DONE and self._needs_write(stage, rows):
                release()
                try:
                    result = await write(rows, outcome, urgent=self._urgent(stage))
                except (asyncio.CancelledError, LeaseLost):
                    raise
                except Exception as exc:
                    # The destination itself failed (retries of busy moments are done):
                    # stop the run; this partition goes back to the pool.
                    fatal = _classify(exc, stage)
                    if self._fatal is None:
                        self._fatal = fatal
                        self.stop(f"fatal: {fatal.message}", immediate=True)
                    result = None
                    outcome = Outcome(claim.id, Status.PENDING, attempts=attempt)
                if result is None:
                    pass
                elif result.error is not None:
                    error = result.error
                    outcome = Outcome(
                        claim.id,
                        Status.FAILED,
                        attempts=attempt,
                        duration=self.clock.monotonic() - started,
                        error_category=error.category,
                        error_message=self._clean(error.message),
                        requests=tally.requests,
                    )
                elif result.lost:
                    raise LeaseLost(claim.key)
                elif result.recorded:
                    self._held.discard(claim.id)
                    self.leases.forget(claim.id)
                    self._finished(outcome)
                    self._signal_progress()
                    self._emit_finished(stage, claim, outcome, tally)
                    return
        except asyncio.CancelledError:
            await self._record(
                Outcome(
                    claim.id, Status.PENDING, attempts=max(0, attempt - 1), requests=tally.requests
                )
            )
            self.bus.emit(PartitionFinished(stage.name, claim.key, Status.PENDING, 0, 0.0, attempt))
            raise
        except LeaseLost:
            # Another worker runs it now: nothing more of ours may reach the sink or the
            # ledger for it.
            self._lease_lost(claim)
            self.bus.emit(PartitionFinished(stage.name, claim.key, Status.PENDING, 0, 0.0, attempt))
            return
        self._finished(outcome)
        # Rows committed in a database apart from the ledger: their outcome goes on record
        # at once (sharing the ledger's next round trip), so a death right after counts
        # nothing against a partition that had finished.
        committed = outcome.status is Status.DONE and (
            bool(pages.rows) or self._needs_write(stage, rows)
        )
        await self._record(outcome, soon=self._urgent(stage) or committed)
        self._emit_finished(stage, claim, outcome, tally)

    def _fenced(self, stage: Stage) -> bool:
        """Whether the stage's writes prove their lease in the sink's own transaction
        (its tables live in the ledger's database), so no ledger call is needed first."""
        fenced = self._fences.get(stage.name)
        if fenced is None:
            fenced = self._fences[stage.name] = not stage.sinks or self.writer.shares_ledger(
                stage.sinks
            )
        return fenced

    def _urgent(self, stage: Stage) -> bool:
        """Whether the stage's rows and outcomes skip the writer's and the ledger's
        batching (a quarter of a second each): every stage that needs a reference table
        waits for it, and the last partitions of a stage have no others to wait for."""
        return stage.reference or stage.name in self._draining

    def _check(
        self,
        stage: Stage,
        partition: Partition,
        rows: Mapping[str, list[Record]],
        outcome: Outcome,
    ) -> Outcome:
        """Run the stage's checks on the partition's records; the first failing one fails
        the partition with its category (and nothing of it is written)."""
        results: list[CheckResult] = []
        for check in stage.checks:
            if check.table is not None:
                records: list[Record] = rows.get(check.table, [])
            elif len(rows) == 1:
                records = next(iter(rows.values()))
            else:
                records = [r for table_rows in rows.values() for r in table_rows]
            result = check.run(records, partition)
            results.append(dataclasses.replace(result, detail=self._masker.mask(result.detail)))
        stored = results_json(results)
        failed = next((r for r in results if not r.ok), None)
        if failed is None:
            return dataclasses.replace(outcome, checks=stored)
        return dataclasses.replace(
            outcome,
            status=Status.FAILED,
            records=0,
            error_category=failed.category,
            error_message=self._clean(f"check {failed.name} failed: {failed.detail}"),
            checks=stored,
        )

    def _finished(self, outcome: Outcome) -> None:
        if outcome.status is not Status.PENDING:
            self._executed += 1
        if outcome.status is Status.DONE:
            self._records += outcome.records

    def _emit_finished(
        self, stage: Stage, claim: Claim, outcome: Outcome, tally: RequestTally
    ) -> None:
        self.bus.emit(
            PartitionFinished(
                stage.name,
                claim.key,
                outcome.status,
                outcome.records,
                outcome.duration,
                outcome.attempts,
                outcome.error_category,
                outcome.error_message,
                tally.requests,
                tally.rate_limited,
            )
        )

    async def _call(self, stage: Stage, ctx: Context) -> dict[str, list[Record]]:
        """Call the stage function and collect its records per table, within its timeout."""
        fn = stage.fn
        kind = self._kinds[stage.name]
        if kind == "async" and stage.timeout is None:
            # The common case, without a wrapper coroutine.
            result = await fn(ctx, ctx.partition)
        else:
            result = await self._call_slow(stage, ctx, kind)
        if stage.multi_table:
            if result is None:
                return {}
            if not isinstance(result, Mapping):
                raise ConfigError(
                    f"stage {stage.name} writes several tables; return {{table name: records}}"
                    f", not a {type(result).__name__}"
                )
            tables: dict[str, list[Record]] = {}
            for name, items in result.items():
                tables.update(self._rows_for(stage, to_mappings(items), name))
            return tables
        if result is None:
            return self._rows_for(stage, [], None)
        if isinstance(result, dict) or not isinstance(result, Iterable):
            result = [result]
        return self._rows_for(stage, to_mappings(result), None)

    def _rows_for(
        self, stage: Stage, records: list[Record], table: str | None
    ) -> dict[str, list[Record]]:
        """Records keyed by the table they go to (a stage without a sink: key "")."""
        sinks = stage.sinks
        if table is None:
            if stage.multi_table:
                raise ConfigError(
                    f"stage {stage.name} writes several tables; name one: ctx.write(records, "
                    f"table=...) (its tables: {', '.join(s.name for s in sinks)})"
                )
            return {sinks[0].name if sinks else "": records}
        if all(s.name != table for s in sinks):
            known = ", ".join(s.name for s in sinks) or "none"
            raise ConfigError(
                f"stage {stage.name} returned rows for table {table!r}, which it does not "
                f"declare (its tables: {known})"
            )
        return {table: records}

    @staticmethod
    def _needs_write(stage: Stage, rows: Mapping[str, list[Record]]) -> bool:
        # Replace-partition and append write even no rows: the partition's old ones go.
        return bool(stage.sinks) and (
            any(rows.values()) or any(s_mode(s) is not Mode.UPSERT for s in stage.sinks)
        )

    async def _call_slow(self, stage: Stage, ctx: Context, kind: str) -> Any:
        fn = stage.fn
        if kind == "asyncgen":

            async def collect() -> list[object]:
                gen: AsyncIterator[object] = fn(ctx, ctx.partition)
                return [item async for item in gen]

            coro: Any = collect()
        elif kind == "async":

            async def call_async() -> Any:
                return await fn(ctx, ctx.partition)

            coro = call_async()
        elif stage.executor == "process":
            loop = asyncio.get_running_loop()
            assert self._process_pool is not None
            coro = loop.run_in_executor(self._process_pool, _call_in_process, fn, ctx.for_process())
        else:
            assert self._stage_threads is not None
            # Timed from the call's start on its thread; a call that times out gives its
            # thread up, so the partitions after it never pay for it.
            return await self._stage_threads.call(_call_sync, fn, ctx, time_limit=stage.timeout)
        if stage.timeout is not None:
            async with asyncio.timeout(stage.timeout) as timeout:
                # Waits for a resource's turns stop this clock (see Deadline).
                current_deadline.set(Deadline(timeout))
                try:
                    return await coro
                finally:
                    current_deadline.set(None)
        return await coro


def s_mode(sink: Any) -> Mode:
    """A sink's write mode (custom sinks without a spec are treated as upserts)."""
    spec = getattr(sink, "spec", None)
    return spec.mode if spec is not None else Mode.UPSERT


def _kind(fn: Any) -> str:
    if inspect.isasyncgenfunction(fn):
        return "asyncgen"
    if inspect.iscoroutinefunction(fn):
        return "async"
    return "sync"


def _call_sync(fn: Any, ctx: Context) -> Any:
    result = fn(ctx, ctx.partition)
    if inspect.isgenerator(result):
        return list(result)
    return result


def _call_in_process(fn: Any, ctx: Any) -> Any:
    """Run a stage function in a worker process; what it returns travels back pickled."""
    result = fn(ctx, ctx.partition)
    if inspect.isgenerator(result) or (
        result is not None and not isinstance(result, dict | list | tuple) and _iterable(result)
    ):
        return list(result)
    return result


def _iterable(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, str | bytes)


def _process_pool(workers: int, stages: list[Stage]) -> ProcessPoolExecutor:
    """Worker processes for CPU-bound stages, started fresh (``spawn``: forking a process
    that runs threads and an event loop is unsafe), each loading the job's module."""
    modules = {}
    for stage in stages:
        name = getattr(stage.fn, "__module__", None)
        module = sys.modules.get(name) if name else None
        if name and name != "__main__":
            modules[name] = getattr(module, "__file__", None)
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_process,
        initargs=(modules,),
    )


def _init_process(modules: dict[str, str | None]) -> None:
    """In a fresh worker process: make each stage function's module importable under the
    name it was pickled with (a job file is loaded the way ``load_job`` loaded it)."""
    for name, path in modules.items():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            if path is None:
                raise
            load_job_module(Path(path))
