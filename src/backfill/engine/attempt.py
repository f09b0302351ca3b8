"""One partition, from its claim to its outcome: the attempts at it, its retries, its
checkpoints and ``ctx.write`` pages, its checks, and its rows handed to the sink writer.

Errors are classified here, once: :func:`classify` maps whatever a stage raised onto
transient, permanent or fatal. A :class:`~backfill.errors.StageError` (what a client such
as ``ctx.http`` raises after judging a response) is already classified and is trusted as
it is; everything else (timeouts, network and disk errors, bugs) is judged here only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog

from backfill.clock import Clock
from backfill.context import Context, RunCache, StageLog
from backfill.engine.control import RunControl
from backfill.engine.db import LedgerThread
from backfill.engine.discovery import plan_found, take_found
from backfill.engine.lease import LeaseKeeper
from backfill.engine.outcomes import Outcomes
from backfill.engine.rows import check, needs_write, rows_for, tables_of
from backfill.errors import (
    BackfillError,
    EmptyPartition,
    FatalError,
    PermanentError,
    SinkError,
    StageError,
    TransientError,
    disk_full_message,
    is_disk_full,
)
from backfill.events import EventBus, PartitionFinished, PartitionRetrying, PartitionStarted
from backfill.invoke import Invoker
from backfill.job import Job, Stage
from backfill.leases import LeaseLost
from backfill.ledger import Claim, Ledger, Outcome, Status
from backfill.partitions import Discover
from backfill.secrets import Masker
from backfill.sinks import Record, to_mappings
from backfill.sources.clients import Clients
from backfill.sources.http import RequestTally, partition_requests
from backfill.writer import PageWrites, SinkWriter, WriteResult

__all__ = ["Attempt", "AttemptEnv", "Totals", "classify", "truncate"]

_MESSAGE_LIMIT = 2000
# Module constants for the statuses a partition's path compares with: an enum member
# looked up on its class costs ~60 ns, several times per partition.
_DONE = Status.DONE
_PENDING = Status.PENDING

# Where ``ctx.log`` lines go, bound to the run, stage and partition.
_stage_log = logging.getLogger("backfill.stage")


def truncate(message: str) -> str:
    """One line, at most ``_MESSAGE_LIMIT`` characters: what the ledger keeps."""
    message = " ".join(message.split())
    return message if len(message) <= _MESSAGE_LIMIT else message[: _MESSAGE_LIMIT - 1] + "…"


def classify(exc: BaseException, stage: Stage, tally: RequestTally | None = None) -> StageError:
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


@dataclass(slots=True)
class Totals:
    """What this worker did in the run, for its result."""

    records: int = 0
    retries: int = 0
    executed: int = 0

    def finished(self, outcome: Outcome) -> None:
        if outcome.status is not _PENDING:
            self.executed += 1
        if outcome.status is _DONE:
            self.records += outcome.records


@dataclass(frozen=True, slots=True)
class AttemptEnv:
    """What every partition attempt of a run shares."""

    job: Job
    ledger: Ledger
    db: LedgerThread
    worker_id: str
    run_id: str
    clock: Clock
    bus: EventBus
    masker: Masker
    cache: RunCache
    clients: Clients
    invoker: Invoker
    writer: SinkWriter
    leases: LeaseKeeper
    outcomes: Outcomes
    control: RunControl
    totals: Totals
    # Wakes the stages waiting for upstream partitions to finish.
    signal_progress: Callable[[], None]
    # Whether a stage's rows and outcomes skip batching (see StageActivity.urgent).
    urgent: Callable[[Stage], bool]
    # The run's event loop, handed to each stage's context: asking asyncio for it costs
    # a getpid() system call per partition. None: the loop running the attempt.
    loop: asyncio.AbstractEventLoop | None = None

    def clean(self, message: str) -> str:
        """One line, bounded, with every secret masked: what the ledger and logs get."""
        return truncate(self.masker.mask(message))


class Attempt:
    """One claimed partition of one stage, run until it has an outcome.

    ``release`` gives the partition's concurrency slot back: once its rows are handed
    to the sink writer, not when they are durable. ``fenced``: its writes prove the
    lease in the sink's own transaction, so no ledger call is needed first.
    ``stage_bound``: the task's log context names the stage already.
    """

    def __init__(
        self,
        env: AttemptEnv,
        stage: Stage,
        claim: Claim,
        release: Callable[[], None],
        *,
        fenced: bool,
        stage_bound: bool = False,
    ) -> None:
        self.env = env
        self.stage = stage
        self.claim = claim
        self.partition = claim.partition(stage.partitions.grain, stage.partitions.tz)
        self._release = release
        self._fenced = fenced
        # Whether the task's log context already names the stage (a runner's task runs
        # many of its partitions; see StageLoop._run_group).
        self._stage_bound = stage_bound
        self.number = 0
        self.started = 0.0
        self.log = StageLog(
            _stage_log, {"run_id": env.run_id, "stage": stage.name, "partition": claim.key}
        )
        # Requests ctx.http makes for this partition (this task's own context).
        self.tally = RequestTally()
        self.pages = PageWrites(claim.checkpoint)
        self.rows: dict[str, list[Record]] = {}
        # Partitions it discovered for other stages (see engine/discovery.py).
        self.found: list[Discover] = []

    async def run(self) -> None:
        env, stage, claim = self.env, self.stage, self.claim
        if env.bus.wants(PartitionStarted):
            env.bus.emit(PartitionStarted(stage.name, claim.key))
        self.started = env.clock.monotonic()
        partition_requests.set(self.tally)
        # The partition every log line of this task is about.
        if self._stage_bound:
            structlog.contextvars.bind_contextvars(partition=claim.key)
        else:
            structlog.contextvars.bind_contextvars(stage=stage.name, partition=claim.key)
        try:
            outcome = await self._attempts()
            if self.tally.requests:
                outcome = dataclasses.replace(outcome, requests=self.tally.requests)
            if outcome.status is _DONE and self.found:
                outcome = await self._plan_found(outcome)
            writes = outcome.status is _DONE and needs_write(stage, self.rows)
            if writes:
                written = await self._write_done(outcome)
                if written is None:
                    return
                outcome = written
        except asyncio.CancelledError:
            await env.outcomes.record(
                Outcome(
                    claim.id,
                    Status.PENDING,
                    attempts=max(0, self.number - 1),
                    requests=self.tally.requests,
                )
            )
            self._emit_given_back()
            raise
        except LeaseLost:
            # Another worker runs it now: nothing more of ours may reach the sink or the
            # ledger for it.
            self.lease_lost()
            self._emit_given_back()
            return
        env.totals.finished(outcome)
        # Rows committed in a database apart from the ledger: their outcome goes on record
        # at once (sharing the ledger's next round trip), so a death right after counts
        # nothing against a partition that had finished.
        committed = outcome.status is _DONE and (bool(self.pages.rows) or writes)
        await env.outcomes.record(outcome, soon=env.urgent(stage) or committed)
        self._emit_finished(outcome)

    def lease_lost(self) -> None:
        """Forget the partition: its lease passed to another worker."""
        self.env.outcomes.let_go(self.claim.id)
        self.env.leases.losses.lost(f"partition {self.claim.key} was not written")

    # -- the attempts --------------------------------------------------------------------

    async def _attempts(self) -> Outcome:
        """Call the stage until it succeeds, fails for good, or the run stops."""
        while True:
            self.number += 1
            self.pages.attempt()
            try:
                result = await self.env.invoker.call(self.stage, self._context())
                if result is not None:
                    result, self.found = take_found(self.env.job, self.stage, result)
                self.rows = tables_of(self.stage, result)
            except EmptyPartition as exc:
                return self._outcome(
                    Status.EMPTY, error_category="empty", error_message=self.env.clean(exc.reason)
                )
            except (asyncio.CancelledError, LeaseLost):
                raise
            except Exception as exc:
                outcome = await self._failed(exc)
                if outcome is None:
                    continue
                return outcome
            written = self.pages.rows + sum(map(len, self.rows.values()))
            outcome = self._outcome(_DONE, records=written)
            if self.stage.checks:
                outcome = check(
                    self.stage,
                    self.partition,
                    self.rows,
                    outcome,
                    mask=self.env.masker.mask,
                    clean=self.env.clean,
                )
            return outcome

    async def _failed(self, exc: Exception) -> Outcome | None:
        """The outcome of an attempt that raised; None after waiting to try again."""
        env, claim = self.env, self.claim
        error = classify(exc, self.stage, self.tally)
        if isinstance(error, FatalError):
            env.control.fail_first(error)
            return Outcome(
                claim.id,
                Status.PENDING,
                attempts=self.number,
                error_category=error.category,
                error_message=env.clean(error.message),
            )
        delay = None
        if isinstance(error, TransientError):
            delay = self.stage.retry.delay(self.number, error.retry_after)
        if delay is not None and env.control.stopped():
            # Stopping: give the partition back rather than fail it.
            return Outcome(claim.id, Status.PENDING, attempts=self.number)
        if delay is None:
            if not isinstance(exc, StageError):
                self.log.debug("stage raised", exc_info=exc)
            return self._outcome(
                Status.FAILED,
                error_category=error.category,
                error_message=env.clean(error.message),
            )
        env.totals.retries += 1
        env.bus.emit(
            PartitionRetrying(
                self.stage.name,
                claim.key,
                self.number,
                delay,
                error.category,
                env.clean(error.message),
            )
        )
        await env.clock.sleep(delay)
        return None

    async def _plan_found(self, outcome: Outcome) -> Outcome:
        """Plan what the partition discovered before its done-mark goes on record; a
        ledger that fails stops the run, the partition going back to the pool."""
        env = self.env
        try:
            added = await plan_found(
                env.db, env.ledger, env.job, self.stage, self.partition, self.found, env.bus
            )
        except Exception as exc:
            env.control.fail_first(classify(exc, self.stage))
            return Outcome(self.claim.id, Status.PENDING, attempts=self.number)
        if added:
            # The stages that run them may be waiting for work: they need not wait for
            # this partition's outcome to go on record.
            env.signal_progress()
        return outcome

    def _outcome(
        self,
        status: Status,
        *,
        records: int = 0,
        error_category: str | None = None,
        error_message: str | None = None,
    ) -> Outcome:
        """The outcome of the attempt so far, timed from the partition's start."""
        # Positional: keywords cost a frozen dataclass a third more per partition.
        return Outcome(
            self.claim.id,
            status,
            self.number,
            records,
            self.env.clock.monotonic() - self.started,
            error_category,
            error_message,
        )

    def _context(self) -> Context:
        env = self.env
        # Positional, in the order of Context's fields: fifteen keywords cost a stage's
        # context three times as much (tests/unit/test_engine_context.py pins each field).
        return Context(
            self.partition,
            env.job.name,
            self.stage.name,
            env.run_id,
            self.number,
            env.cache,
            self.log,
            self.stage.resource,
            self._unseal(self.pages.checkpoint),
            self._save_checkpoint,
            self._write_now,
            env.clients,
            self._prove_lease,
            self.pages.written,
            env.loop or asyncio.get_running_loop(),
        )

    async def _prove_lease(self) -> None:
        """``ctx.prove_lease()``: the lease asked for just before a stage's own write."""
        await self.env.leases.prove(self.claim)

    def _unseal(self, checkpoint: str | None) -> str | None:
        """A stored checkpoint with the secrets declared now (a rotated key is used)."""
        if checkpoint is None:
            return None
        value, missing = self.env.masker.unseal(checkpoint)
        for where in missing:
            self.log.warning(
                "the checkpoint names the secret %s, which the job no longer declares; the "
                "partition resumes with the placeholder in its place",
                where,
            )
        return value

    # -- checkpoints and writes ----------------------------------------------------------

    async def _save_checkpoint(self, value: str | None) -> None:
        """``ctx.checkpoint(...)``."""
        env = self.env
        # A next link may echo the API key: the ledger (and the pages' tags) hold
        # placeholders where the job's secrets were, never the secrets.
        sealed = env.masker.seal(value) if value is not None else None
        if not await env.db.call(env.ledger.save_checkpoint, env.worker_id, self.claim.id, sealed):
            raise LeaseLost(self.claim.key)
        # Tag later pages with it only once it is on record: until then a resume starts
        # from the one before, and must find (and replace) them by that one.
        self.pages.checkpoint = sealed

    async def _write_now(self, items: Iterable[object], table: str | None) -> int:
        """``ctx.write(...)``: a page of rows, durable before the stage goes on."""
        rows = rows_for(self.stage, to_mappings(items), table)
        count = sum(len(r) for r in rows.values())
        if self.stage.sinks:
            result = await self._write(rows, None, urgent=True)
            if result.error is not None:
                raise result.error
            if result.lost:
                raise LeaseLost(self.claim.key)
        self.pages.written(count)
        return count

    async def _write(
        self, tables: Mapping[str, list[Record]], done: Outcome | None, *, urgent: bool
    ) -> WriteResult:
        """Every write for the partition: its lease proven (inside the sink's transaction
        where the ledger shares the database, else by asking the ledger just before), its
        page tagged."""
        if not self._fenced:
            await self.env.leases.prove(self.claim)
        pages = self.pages
        return await self.env.writer.write(
            self.stage.sinks,
            self.partition,
            tables,
            done,
            first=pages.first,
            page=pages.checkpoint,
            redo=pages.redo,
            urgent=urgent,
            lease=(self.claim.id, self.claim.claims),
        )

    async def _write_done(self, outcome: Outcome) -> Outcome | None:
        """Write a finished partition's rows. The outcome to record, or None when it was
        recorded with the rows (the ledger shares their database)."""
        env, claim = self.env, self.claim
        self._release()
        try:
            result = await self._write(self.rows, outcome, urgent=env.urgent(self.stage))
        except (asyncio.CancelledError, LeaseLost):
            raise
        except Exception as exc:
            # The destination itself failed (retries of busy moments are done): stop the
            # run; this partition goes back to the pool.
            env.control.fail_first(classify(exc, self.stage))
            return Outcome(claim.id, Status.PENDING, attempts=self.number)
        if result.error is not None:
            error = result.error
            return dataclasses.replace(
                self._outcome(
                    Status.FAILED,
                    error_category=error.category,
                    error_message=env.clean(error.message),
                ),
                requests=self.tally.requests,
            )
        if result.lost:
            raise LeaseLost(claim.key)
        if result.recorded:
            env.outcomes.let_go(claim.id)
            env.totals.finished(outcome)
            env.signal_progress()
            self._emit_finished(outcome)
            return None
        return outcome

    # -- events --------------------------------------------------------------------------

    def _emit_given_back(self) -> None:
        self.env.bus.emit(
            PartitionFinished(self.stage.name, self.claim.key, Status.PENDING, 0, 0.0, self.number)
        )

    def _emit_finished(self, outcome: Outcome) -> None:
        self.env.bus.emit(
            PartitionFinished(
                self.stage.name,
                self.claim.key,
                outcome.status,
                outcome.records,
                outcome.duration,
                outcome.attempts,
                outcome.error_category,
                outcome.error_message,
                self.tally.requests,
                self.tally.rate_limited,
            )
        )
