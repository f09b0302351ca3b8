"""A worker's standing in the ledger: registration, heartbeat, lease renewal and proof,
reaping dead workers, the fleet's shares of resources, and leases that passed on."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backfill.clock import Clock
from backfill.engine.db import LedgerThread
from backfill.engine.outcomes import Outcomes
from backfill.errors import BackfillError
from backfill.events import EventBus, ResourceChanged, WorkerLost
from backfill.fleet import LedgerRate, concurrency_share
from backfill.job import Job
from backfill.leases import LeaseBook, LeaseLost
from backfill.ledger import Claim, Ledger, SharedLimits, WorkerRecord

__all__ = ["LeaseKeeper", "LeaseLosses", "host", "learned_states", "pid_alive", "worker_is_dead"]

log = logging.getLogger("backfill.engine.lease")


def host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
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
    if worker.host == host() and not pid_alive(worker.pid):
        return True
    return now - worker.heartbeat_at > lease_seconds


# The longest record of resources' states read back (a few hundred bytes a resource).
_MAX_STATES = 1 << 20
# How long what a run learned of a source holds for the runs after it.
_LEARNED_FOR = 7 * 86400.0


def learned_states(
    ledger: Ledger, job: Job, names: Iterable[str], *, now: float
) -> dict[str, dict[str, Any]]:
    """Per resource of ``names``, the latest state a worker of ``job`` left for it that
    it may start from (see :meth:`Resource.resumable`; of the twenty latest workers, in
    the last week): what the last run using it learned. A run that learned nothing (one
    that ended as the source was down, or a worker of a fleet) leaves what the runs
    before learned; what is older than a week is not taken (the source may have changed
    since, and nothing later said it had not)."""
    wanted = [name for name in names if name in job.resources]
    latest: dict[str, dict[str, Any]] = {}
    for at, record in ledger.resource_states(job.name):
        if (
            type(at) not in (int, float)  # (a ledger edited by hand)
            or not now - at <= _LEARNED_FOR
            or not isinstance(record, str)
            or len(record) > _MAX_STATES
        ):
            continue
        try:
            states = json.loads(record)
        except (ValueError, RecursionError):  # not JSON, or nested past the decoder
            continue
        if not isinstance(states, dict):
            continue
        for name in wanted:
            state = states.get(name)
            if (
                name not in latest
                and isinstance(state, dict)
                and job.resources[name].resumable(state) is not None
            ):
                latest[name] = state
    return latest


class LeaseLosses:
    """Leases that passed to another worker: warned of the first time only, since after
    a stall every partition the worker held goes the same way."""

    def __init__(self) -> None:
        self.count = 0

    def lost(self, what: str) -> None:
        self.count += 1
        if self.count == 1:
            log.warning(
                "%s: its lease had passed to another worker (this one was stalled for "
                "longer than a lease); it writes nothing more for the partitions it lost",
                what,
            )
        else:
            log.debug("%s: its lease had passed to another worker", what)


class LeaseKeeper:
    """Keeps one worker's leases and record alive in the ledger while it runs."""

    def __init__(
        self,
        job: Job,
        ledger: Ledger,
        db: LedgerThread,
        worker_id: str,
        clock: Clock,
        bus: EventBus,
        resources: list[str],
    ) -> None:
        self._job = job
        self._ledger = ledger
        self._db = db
        self.worker_id = worker_id
        self._clock = clock
        self._bus = bus
        # The resources this run's stages use: their state goes on record.
        self._resources = resources
        # A fleet's ledger: its workers share the resources' rates and concurrency.
        self._fleet = bool(getattr(ledger, "fleet", False))
        # Until when each begun partition's lease is certainly ours (see backfill.leases).
        self.book = LeaseBook(job.lease_seconds)
        self.losses = LeaseLosses()
        # Set when a resource pauses, opens its circuit, waits for a quota...: its state
        # goes on record (at once, at the first one: status shows the run's resources).
        self._resources_changed = asyncio.Event()
        self._resources_changed.set()

    def on_resource(self, name: str, what: str, seconds: float, kind: str) -> None:
        """A resource's subscriber: shown at once, put on record soon."""
        self._bus.emit(ResourceChanged(name, what, seconds, kind))
        self._resources_changed.set()

    def resources_json(self, *, final: bool = False) -> str | None:
        """What the resources this run's stages use are doing, as the ledger keeps it.
        What they learned of their sources (``settled``, see learned_states) only as the
        run ends (``final``: when it ran alone, see alone): each worker of a fleet
        learns a share of a source, nothing a run of any size may start from (one killed
        mid-run leaves the record before it standing)."""
        if not self._resources:
            return None
        states = {name: self._job.resources[name].state() for name in self._resources}
        if not final:
            for state in states.values():
                state["settled"] = None
        return json.dumps(states, separators=(",", ":"))

    async def join(self, now: float) -> list[WorkerLost]:
        """Register this worker and release the partitions of workers that are gone."""
        await self._db.call(
            self._ledger.register_worker,
            WorkerRecord(self.worker_id, self._job.name, host(), os.getpid(), now, now, None),
        )
        return await self.reap_dead_workers()

    async def resume_resources(self) -> None:
        """Each resource of the run starts at the rate the last run using it learned
        (see :func:`learned_states`); not in a fleet on PostgreSQL, whose workers each
        learn a share (a fleet on a SQLite file leaves no record: see resources_json)."""
        if not self._resources or self._fleet:
            return
        states = await self._db.call(
            learned_states, self._ledger, self._job, self._resources, now=self._clock.time()
        )
        for name, state in states.items():
            self._job.resources[name].resume(state)

    async def reap_dead_workers(self) -> list[WorkerLost]:
        """Release partitions held by workers of this job that are certainly gone."""
        lost: list[WorkerLost] = []
        now = self._clock.time()
        for worker in await self._db.call(self._ledger.workers, self._job.name):
            if worker.id == self.worker_id:
                continue
            if not worker_is_dead(worker, now=now, lease_seconds=2 * self._job.lease_seconds):
                continue
            released = await self._db.call(self._ledger.release_owner, worker.id, lost=True)
            await self._db.call(self._ledger.stop_worker, worker.id, now=now)
            if released:
                log.info("released %d partition(s) of dead worker %s", released, worker.id)
            lost.append(WorkerLost(worker.id, released))
        return lost

    async def alone(self, since: float) -> bool:
        """Whether no other worker of the job worked beside this one since ``since`` (its
        start): none whose life may reach past it. A worker's life ends when it stopped,
        and, stopped or not, a lease after its last beat at the latest (it beats every
        third of one; a crashed one, or one the reaper stopped later, ran no longer).
        Judged by its last beat alone, a worker still running whose last beat came before
        ``since`` was missed: a run between two of its beats took its own share of the
        source for the whole. Never in a fleet's ledger; no, when the ledger fails the
        read. Asked as the run ends (see resources_json)."""
        if self._fleet:
            return False
        try:
            workers = await self._db.call(self._ledger.workers, self._job.name, active_only=False)
        except BackfillError as exc:
            log.debug("could not tell whether another worker worked beside this one: %s", exc)
            return False
        lease = self._job.lease_seconds
        return not any(
            w.id != self.worker_id
            and min(w.heartbeat_at + lease, math.inf if w.stopped_at is None else w.stopped_at)
            > since
            for w in workers
        )

    async def heartbeat(self) -> None:
        """Renew our leases on a fixed tick that does not drift."""
        interval = self._job.lease_seconds / 3
        clock = self._clock
        next_tick = clock.monotonic() + interval
        while True:
            await clock.sleep(max(0.0, next_tick - clock.monotonic()))
            next_tick += interval
            now = clock.time()
            since = clock.monotonic()
            try:
                await self._db.call(
                    self._ledger.renew,
                    self.worker_id,
                    lease_seconds=self._job.lease_seconds,
                    now=now,
                )
                self.book.renewed(since=since, done=clock.monotonic())
                await self._db.call(
                    self._ledger.heartbeat, self.worker_id, now=now, resources=self.resources_json()
                )
            except BackfillError as exc:
                log.warning("could not renew leases: %s", exc)

    async def publish_resources(self) -> None:
        """Put on record what this worker's resources are doing as soon as one pauses,
        opens or closes its circuit, changes its rate or waits for a quota (at most once
        a second; the heartbeat does it too), so status and the dashboard can say why
        nothing moves."""
        while True:
            await self._resources_changed.wait()
            self._resources_changed.clear()
            try:
                await self._db.call(
                    self._ledger.heartbeat,
                    self.worker_id,
                    now=self._clock.time(),
                    resources=self.resources_json(),
                )
            except BackfillError as exc:
                log.warning("could not record the state of resources: %s", exc)
            # Not a wait the run's clock should see: only spacing the writes out.
            await asyncio.sleep(1.0)

    async def fleet(self, ledger: SharedLimits) -> None:
        """Keep resource schedules in the ledger: quotas always (they hold across
        restarts); rates where others may share them (a fleet's ledger, or a resource
        declared shared=True); and, in a fleet, a concurrency share per worker
        rebalanced every couple of seconds."""
        job, clock = self._job, self._clock
        pool = ThreadPoolExecutor(1, thread_name_prefix="backfill-fleet")
        try:
            for resource in job.resources.values():
                rate = bool(resource.rate_interval) and (ledger.fleet or resource.shared)
                if rate or resource.quotas:
                    resource.share_with(
                        LedgerRate(ledger, job.name, resource, pool, clock, rate=rate),
                        rate=rate,
                    )
            shared = [
                r for r in job.resources.values() if r.concurrency is not None and ledger.fleet
            ]
            while shared:
                try:
                    workers = await self._db.call(self._ledger.workers, job.name)
                except BackfillError as exc:
                    log.warning("could not rebalance concurrency: %s", exc)
                else:
                    now = clock.time()
                    alive = [
                        w.id
                        for w in workers
                        if not worker_is_dead(w, now=now, lease_seconds=job.lease_seconds)
                    ]
                    for resource in shared:
                        assert resource.concurrency is not None
                        share = concurrency_share(resource.concurrency, alive, self.worker_id)
                        await resource.set_share(share)
                await clock.sleep(min(2.0, job.lease_seconds / 3))
            await asyncio.Event().wait()
        finally:
            pool.shutdown(wait=False)

    async def begin(self, claims: list[Claim], *, outcomes: Outcomes | None = None) -> set[int]:
        """Begin these partitions in one ledger call: the ids whose leases are still
        ours, proven from the moment the call started. With ``outcomes``, those
        buffered are written first, on the same trip to the ledger's thread."""
        since = self._clock.monotonic()
        leases = [(c.id, c.claims) for c in claims]
        held: set[int]
        if outcomes is not None:
            held = await outcomes.flush_with(self._ledger.begin, self.worker_id, leases)
        else:
            held = await self._db.call(self._ledger.begin, self.worker_id, leases)
        self.book.proven(held, since=since)
        return held

    async def prove(self, claim: Claim) -> None:
        """Before a write the ledger cannot fence in its own transaction: make sure the
        lease is still ours, asking the ledger only when it may have run out."""
        if self.book.certain(claim.id, now=self._clock.monotonic()):
            return
        if claim.id not in await self.begin([claim]):
            raise LeaseLost(claim.key)
