"""The stage loops: per stage, claim batches of partitions and start an attempt for each.

Per stage, a loop claims a batch of partitions from the ledger and starts a task for
each under the stage's concurrency limit (a semaphore taken before the task starts and
released when it ends), so memory is bounded by the batch size, never by the number of
partitions. The claim policy lives here: batch sizing, bounded and full scans, suspects
run alone, and waits for upstream partitions and other workers' leases.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from backfill.engine.attempt import Attempt, AttemptEnv
from backfill.engine.plan import StageGraph
from backfill.engine.result import RunOptions
from backfill.errors import BackfillError, FatalError
from backfill.job import Stage
from backfill.ledger import Claim, Outcome, Status

__all__ = ["StageActivity", "StageLoop", "concurrency"]

_MAX_BATCH = 1000
_FIRST_LEASE_WAIT = 0.05  # seconds; doubles up to the lease poll
_MIN_SCAN = 1024  # pending partitions a bounded claim checks for readiness, at least
_FULL_SCAN_SPACING = 50  # a full scan is due after this many times its own cost
# How soon after their begin mark the partitions of one begin call all start, at most:
# a fast stage begins that many seconds' worth in one ledger call, not a slot's worth.
_BEGIN_AHEAD = 0.025

_T = TypeVar("_T")

log = logging.getLogger("backfill.engine.claims")


def concurrency(stage: Stage, options: RunOptions) -> int:
    """How many partitions of ``stage`` run at once in this run."""
    if options.concurrency is not None:
        return max(1, options.concurrency)
    return stage.concurrency


class StageActivity:
    """Which stages of the run still work: what a waiting downstream stage can expect
    progress from, and which ones are on their last partitions."""

    def __init__(self, included: frozenset[str]) -> None:
        self.active: set[str] = set(included)
        # Stages with nothing left to claim: the partitions they still run are their last.
        self.draining: set[str] = set()
        # Replaced each time it fires: a waiter holds the one it saw.
        self.progress = asyncio.Event()

    def signal(self) -> None:
        """Wake the stages waiting for upstream partitions to finish."""
        event, self.progress = self.progress, asyncio.Event()
        event.set()

    def ended(self, name: str) -> None:
        self.active.discard(name)
        self.signal()

    def urgent(self, stage: Stage) -> bool:
        """Whether the stage's rows and outcomes skip the writer's and the ledger's
        batching (a quarter of a second each): every stage that needs a reference table
        waits for it, and the last partitions of a stage have no others to wait for."""
        return stage.reference or stage.name in self.draining


class _Slot:
    """A partition's place under its stage's concurrency limit, given back once."""

    __slots__ = ("_semaphore", "given_back")

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self.given_back = False

    def give_back(self) -> None:
        if not self.given_back:
            self.given_back = True
            self._semaphore.release()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark the outcome of a task nobody awaits as seen."""
    if not task.cancelled():
        task.exception()


def _keep_slot() -> None:
    """An attempt's ``release`` under a runner: the slot stays the runner's."""


class StageLoop:
    """Claims and starts one stage's partitions until none is left to claim."""

    def __init__(
        self,
        stage: Stage,
        env: AttemptEnv,
        graph: StageGraph,
        activity: StageActivity,
        options: RunOptions,
    ) -> None:
        self.stage = stage
        self._env = env
        # Whether its partitions write rows: only those may join a batch the writer holds
        # (counted from _start to _finished; a stage without sinks runs its groups inline,
        # in _launch and _join, and never counts).
        self._writes = bool(stage.sinks)
        self._graph = graph
        self._node = graph.node(stage.name)
        self._activity = activity
        self._options = options
        self._limit = concurrency(stage, options)
        self._semaphore = asyncio.Semaphore(self._limit)
        self._batch_size = min(_MAX_BATCH, max(2 * self._limit, 16))
        # How many partitions one begin call marks: the free slots, or for a stage whose
        # partitions take moments, as many as start within _BEGIN_AHEAD (see _start_batch).
        self._begin_size = 1
        self._order = options.order or stage.partitions.order
        self._running: set[asyncio.Task[None]] = set()
        # A partition gives its slot back once its rows are handed to the sink writer,
        # not when they are durable: the next partition's requests need not wait for a
        # batch to fill.
        self._slots: dict[asyncio.Task[None], _Slot] = {}
        # Waiting for other workers' leases: poll soon at first (most end within moments
        # of each other), then back off to the lease poll.
        self._lease_wait = _FIRST_LEASE_WAIT
        # Whether a claim found nothing after nothing was seen leased elsewhere.
        self._settled = False
        # A stage with inputs that has caught up with them would scan every pending
        # partition for a ready one at each claim. It looks among the first ones instead
        # (Ledger.claim's scan) and among all of them only when a full scan is due: its
        # last one cost at most a fiftieth of the time since. Nothing is concluded (no
        # wait, no stop) on an empty bounded claim.
        self._full_due = 0.0
        # Whether the stage's writes prove their lease in the sink's own transaction (its
        # tables live in the ledger's database), so no ledger call is needed first.
        self._fenced = not stage.sinks or env.writer.shares_ledger(stage.sinks)
        # A stage without sinks ends each partition when its function returns: a fast
        # one's begun groups run under one runner per slot (see _run_group).
        self._inline = not self._writes
        # Ledger calls made ahead (a claim, a begin) and not yet awaited.
        self._ahead: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        try:
            await self._run()
        except BaseException:
            # A batch claimed or begun ahead that nobody will await now: its own error
            # (often the same, a full disk) is not left for asyncio to print.
            for task in self._ahead:
                if not task.done():
                    task.cancel()
                task.add_done_callback(_retrieve)
            raise

    async def _run(self) -> None:
        env, needs = self._env, self._node.needs
        clock, control = env.clock, env.control
        # The next batch, claimed while this one runs (see below).
        ahead: asyncio.Task[tuple[list[Claim], float]] | None = None
        while not control.stopped():
            batch_started = clock.monotonic()
            progress = self._activity.progress
            # The stages it needs that still worked when this claim began.
            working = self._node.upstream & self._activity.active
            full = not needs or batch_started >= self._full_due
            if ahead is not None:
                claims, claim_cost = await ahead
                self._ahead.discard(ahead)
                ahead = None
            else:
                claims, claim_cost = await self._take(self._batch_size, full=full)
            if needs and full:
                self._full_due = clock.monotonic() + _FULL_SCAN_SPACING * claim_cost
            alone = False
            if not claims and not self._running:
                # Partitions whose worker died holding them run with nothing else of the
                # stage, on record before the next claim: a death among them is blamed
                # on them only, and those lost twice come one at a time.
                claims, more = await self._take(self._batch_size, suspects=True)
                claim_cost += more
                alone = bool(claims)
            env.outcomes.hold(c.id for c in claims)
            if not claims:
                if await self._idle(progress, claim_cost, full, working):
                    continue
                break
            self._lease_wait = _FIRST_LEASE_WAIT
            self._settled = False
            if not alone and not needs and len(claims) == self._batch_size:
                # A full batch of a stage with no inputs: more are likely pending, and
                # the ledger claims them while these run, not after.
                ahead = self._call_ahead(self._take(self._batch_size))
            await self._start_batch(claims, alone)
            if alone:
                while self._running:
                    await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)
                    await env.outcomes.flush()
                continue
            # Size batches to roughly a second of work: fewer ledger round trips for fast
            # stages, small leases for slow ones.
            took = clock.monotonic() - batch_started
            if took < 0.5 and len(claims) == self._batch_size:
                self._batch_size = min(_MAX_BATCH, self._batch_size * 2)
            elif took > 5.0:
                self._batch_size = max(2 * self._limit, self._batch_size // 2)
        if ahead is not None:
            # Stopped with a batch claimed ahead: held, so the run's end gives it back.
            claims, _ = await ahead
            self._ahead.discard(ahead)
            env.outcomes.hold(c.id for c in claims)
        if self._running:
            # On a stop, the grace timer (or a second Ctrl+C) cancels what is left.
            await asyncio.wait(set(self._running))
        if self._node.has_downstream:
            # What this stage finished must be on record before its dependants decide
            # that nothing more will come from it.
            await env.outcomes.flush()
        self._activity.ended(self.stage.name)

    async def _take(
        self, limit: int, suspects: bool = False, full: bool = True
    ) -> tuple[list[Claim], float]:
        """Claim up to ``limit`` partitions; with the time the ledger call took."""
        env = self._env
        scan = None if full or suspects else max(2 * limit, _MIN_SCAN)
        result: tuple[list[Claim], float] = await env.db.timed(
            env.ledger.claim,
            env.job.name,
            self.stage.name,
            env.worker_id,
            limit=limit,
            lease_seconds=env.job.lease_seconds,
            now=env.clock.time(),
            run_id=env.run_id,
            selection=self._node.selection,
            order=self._order,
            needs=self._node.needs,
            suspects=suspects,
            scan=scan,
        )
        return result

    async def _idle(
        self, progress: asyncio.Event, claim_cost: float, full: bool, working: frozenset[str]
    ) -> bool:
        """A claim found nothing: wait for what may come, and say whether to claim again
        (False: the stage is done). ``working``: the stages it needs that still worked
        when the claim began."""
        env, upstream = self._env, self._node.upstream
        if not self._running:
            if upstream and await self._upstream_busy():
                # Wait for upstream partitions to finish; never claim more often than a
                # few times the cost of an empty claim.
                await self._wait_progress(progress, self._lease_poll())
                await env.control.sleep(min(1.0, 4 * claim_cost))
                return True
            if working - self._activity.active:
                # A stage it needs ended since the claim began: its last outcomes were
                # recorded after the claim looked (and found nothing ready). Nothing is
                # concluded from a claim older than the inputs it looked at.
                return True
            if not full:
                # Inputs are all finished: look at every pending partition before
                # concluding that none of them is ready.
                self._full_due = 0.0
                return True
            if self._options.wait_for_leases:
                # Our own last outcomes first: unrecorded, they would look like another
                # worker's leases and cost a lease poll of waiting.
                await env.outcomes.flush()
                if await self._leased_elsewhere():
                    self._settled = False
                    await env.control.sleep(self._lease_wait)
                    self._lease_wait = min(self._lease_poll(), 2 * self._lease_wait)
                    return True
                if not self._settled:
                    # A lease given back since the claim above is pending now: one more
                    # claim takes it rather than leaving it behind.
                    self._settled = True
                    return True
            return False
        name = self.stage.name
        if name not in self._activity.draining and not (upstream and await self._upstream_busy()):
            self._activity.draining.add(name)
        if self._running:  # the last ones may have ended while the ledger answered
            await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)
        return True

    async def _start_batch(self, claims: list[Claim], alone: bool) -> None:
        """Start every claimed partition as a slot frees up, or give them back on a stop."""
        env, semaphore = self._env, self._semaphore
        index = 0
        # When the last begin call's partitions were marked, and how many.
        began, size = 0.0, 0
        # The next group, its begin call made while the one before it starts (fast
        # stages only): the event loop does not sit idle for the ledger's answer.
        ahead: tuple[list[Claim], asyncio.Task[set[int]], float] | None = None
        while index < len(claims):
            await semaphore.acquire()
            if size:
                self._size_begins(size, time.perf_counter() - began)
            if alone:
                # Each suspect's outcome on record as it comes: a death later in the
                # group must not cost those that finished before it a suspicion.
                await env.outcomes.flush()
            if env.control.stopped():
                semaphore.release()
                if ahead is not None:
                    await ahead[1]
                    self._ahead.discard(ahead[1])
                await self._give_back(claims[index:])
                return
            # Every slot free now starts a partition, and one ledger call begins them
            # all: a death from here on counts against them (and not against the rest
            # of the batch), and their leases, taken a while ago, are proven still ours.
            # A stage whose partitions take moments begins those that start within
            # _BEGIN_AHEAD too, each taking a slot as one frees up: a ledger round trip
            # a slot's worth of partitions would cost more than the partitions.
            if ahead is not None:
                group, call, began = ahead
                ahead, slotted = None, 1
                held = await call
                self._ahead.discard(call)
            else:
                group = [claims[index]]
                while not alone and index + len(group) < len(claims) and not semaphore.locked():
                    await semaphore.acquire()
                    group.append(claims[index + len(group)])
                slotted = len(group)
                if not alone:
                    group = claims[index : index + max(slotted, self._begin_size)]
                held = await env.leases.begin(group, outcomes=env.outcomes)
                # Real time, whatever the run's clock: a death blames what was begun then.
                began = time.perf_counter()
            index += len(group)
            size = 0 if alone else len(group)
            if self._inline and len(group) > slotted:
                # One runner per free slot works through the group, partition after
                # partition in its own task: no task, no event-loop round per partition.
                queue = collections.deque(group)
                if index < len(claims):
                    following = claims[index : index + self._begin_size]
                    call = self._call_ahead(env.leases.begin(following, outcomes=env.outcomes))
                    ahead = (following, call, time.perf_counter())
                for _ in range(slotted):
                    self._launch(self._run_group(queue, held))
                # More runners join as slots free up, up to the stage's limit: a group
                # begun ahead must not be left to the one or two runners it started with
                # (a slow stage, or one held back by its resource, then ran it serially).
                for _ in range(min(len(group), self._limit) - slotted):
                    self._join(self._run_group_when_free(queue, held))
                continue
            for position, claim in enumerate(group):
                if position >= slotted:
                    await semaphore.acquire()
                    if not env.leases.book.certain(claim.id, now=env.clock.monotonic()):
                        # A stall (SIGSTOP, a VM pause) since the mark: none of them
                        # starts unless its lease is proven ours again.
                        held = await env.leases.begin(group[position:])
                if env.control.stopped():
                    # Stopped while the ledger answered or a slot was awaited: they go
                    # back unstarted (with the next group, begun or not).
                    for _ in range(max(slotted - position, 1)):
                        semaphore.release()
                    if ahead is not None:
                        await ahead[1]
                        self._ahead.discard(ahead[1])
                    await self._give_back(claims[index - len(group) + position :])
                    return
                if (
                    ahead is None
                    and position == len(group) // 2
                    and len(group) > slotted
                    and index < len(claims)
                ):
                    following = claims[index : index + self._begin_size]
                    call = self._call_ahead(env.leases.begin(following, outcomes=env.outcomes))
                    ahead = (following, call, time.perf_counter())
                if claim.id not in held:
                    semaphore.release()
                    # Another worker holds it now.
                    env.outcomes.let_go(claim.id)
                    env.leases.losses.lost(f"partition {claim.key} was not written")
                    continue
                self._start(claim)

    def _size_begins(self, size: int, spread: float) -> None:
        """A slot is free ``spread`` seconds after a begin call marked ``size``
        partitions: they all started, and one ended, by then. Begin more at a time
        while that is well within _BEGIN_AHEAD, fewer past it: a stage whose partitions
        take longer begins only those with a free slot, none before it can start."""
        if spread > _BEGIN_AHEAD:
            self._begin_size = max(1, self._begin_size // 2)
        elif spread < _BEGIN_AHEAD / 2 and size >= self._begin_size:
            self._begin_size = min(_MAX_BATCH, 2 * max(size, self._begin_size))

    async def _run_group(self, queue: collections.deque[Claim], held: set[int]) -> None:
        """A slot's runner: the group's begun partitions one after another, until none
        is left or the run stops (the rest go back unstarted)."""
        env = self._env
        # Every log line of this task is about the stage; each partition binds its key.
        structlog.contextvars.bind_contextvars(stage=self.stage.name)
        while queue:
            if env.control.stopped():
                rest = list(queue)
                queue.clear()
                await self._give_back(rest)
                return
            claim = queue.popleft()
            if not env.leases.book.certain(claim.id, now=env.clock.monotonic()):
                # A stall since the mark: none of them starts unless proven ours again.
                rest = [claim, *queue]
                held.intersection_update(await env.leases.begin(rest))
            if claim.id not in held:
                env.outcomes.let_go(claim.id)
                env.leases.losses.lost(f"partition {claim.key} was not written")
                continue
            # Its slot is the runner's: a stage without sinks has nothing to hand over
            # before its end, so nothing gives the slot back early.
            await Attempt(
                env, self.stage, claim, _keep_slot, fenced=self._fenced, stage_bound=True
            ).run()

    async def _run_group_when_free(self, queue: collections.deque[Claim], held: set[int]) -> None:
        """A runner that joins a group once a slot is free, if the group still has
        partitions nobody started; the slot is given back at its end."""
        if not queue:
            return
        await self._semaphore.acquire()
        try:
            if queue:
                await self._run_group(queue, held)
        finally:
            self._semaphore.release()

    def _call_ahead(self, call: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """A ledger call made while other work goes on, awaited later."""
        task = asyncio.create_task(call)
        self._ahead.add(task)
        return task

    def _join(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in a task that takes its own slot (see _run_group_when_free)."""
        task = asyncio.create_task(work)
        self._running.add(task)
        self._env.control.tasks.add(task)
        task.add_done_callback(self._joined)

    def _joined(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._env.control.tasks.discard(task)
        self._failed(task)

    def _failed(self, task: asyncio.Task[None]) -> None:
        """A partition's task, or a group runner's, that ended in an error of its own (the
        ledger refusing a runner's begin call: a full disk): the run's fatal error, as
        any other the run meets (nobody awaits these tasks)."""
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        if not isinstance(error, BackfillError):
            # Not one of ours: a defect, its traceback for the log.
            log.error("a partition's task failed", exc_info=error)
        self._env.control.fail_first(FatalError(str(error), category=type(error).__name__))

    def _launch(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in a task holding a slot already taken, given back at its end."""
        slot = _Slot(self._semaphore)
        task = asyncio.create_task(work)
        self._slots[task] = slot
        self._running.add(task)
        self._env.control.tasks.add(task)
        task.add_done_callback(self._finished)

    def _start(self, claim: Claim) -> None:
        slot = _Slot(self._semaphore)
        attempt = Attempt(self._env, self.stage, claim, slot.give_back, fenced=self._fenced)
        task = asyncio.create_task(attempt.run())
        self._slots[task] = slot
        self._running.add(task)
        self._env.control.tasks.add(task)
        if self._writes:
            self._env.writer.began()
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        # One callback, not three: each is a separate event-loop handle per partition.
        self._running.discard(task)
        self._env.control.tasks.discard(task)
        self._slots.pop(task).give_back()
        if self._writes:
            self._env.writer.ended()
        self._failed(task)

    async def _give_back(self, claims: list[Claim]) -> None:
        for claim in claims:
            await self._env.outcomes.record(Outcome(claim.id, Status.PENDING, attempts=0))

    async def _upstream_busy(self) -> bool:
        """Whether partitions of the stages this one needs may still finish: a stage of
        this run is still working on them, or (with other workers) some are leased, or
        ready to be claimed in a stage this run leaves to others."""
        upstream = self._node.upstream
        if upstream & self._activity.active:
            return True
        if not self._options.wait_for_leases:
            return False
        # Whatever anyone holds now ends, or its lease expires and it is claimable again.
        # Pending partitions count only where another worker could claim them: ready
        # ones, in this run's selection, of a stage this run does not include (a stage
        # it includes has claimed all it could before its loop ended). Those that wait
        # for a failed input, or for inputs outside the selection, nobody will run.
        env = self._env
        for name in sorted(upstream):
            node = self._graph.node(name)
            if name not in self._graph.included and await env.db.call(
                env.ledger.unfinished, env.job.name, name, node.selection, needs=node.needs
            ):
                return True
            if await env.db.call(
                env.ledger.unfinished, env.job.name, name, None, running_only=True
            ):
                return True
        return False

    async def _wait_progress(self, progress: asyncio.Event, seconds: float) -> None:
        """Until ``progress`` fires (outcomes were recorded), a stop, or ``seconds``."""
        waiters = {
            asyncio.ensure_future(progress.wait()),
            asyncio.ensure_future(self._env.control.stopping.wait()),
        }
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    def _lease_poll(self) -> float:
        """How often to look for partitions whose leases have expired."""
        return min(2.0, self._env.job.lease_seconds / 4)

    async def _leased_elsewhere(self) -> bool:
        """Whether partitions of the stage are leased by another worker. Its pending ones
        are not waited for: a claim just found none of them ready, and those waiting for
        inputs still being worked on are what ``_upstream_busy`` waits for."""
        env = self._env
        return bool(
            await env.db.call(
                env.ledger.unfinished,
                env.job.name,
                self.stage.name,
                self._node.selection,
                running_only=True,
            )
        )
