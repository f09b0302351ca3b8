"""The engine's side of the SQL ledger (see :class:`~backfill.ledger.WorkLedger`):
plan, claim with the lease-loss policy, begin, complete, leases and the run's record."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from operator import itemgetter
from typing import Any

from backfill.ledger import _deps, limits
from backfill.ledger.base import LedgerBase
from backfill.ledger.models import (
    MAX_LOST_LEASES,
    Claim,
    Dependency,
    Outcome,
    RunRecord,
    WorkerRecord,
)
from backfill.partitions import Order, Partition, Selection
from backfill.ratelimit.fleetpace import Report

__all__ = ["WorkOps"]

_PLAN_CHUNK = 20_000
_MEMO_LIMIT = 4096


class WorkOps(LedgerBase):
    """Partitions through their lifecycle: planned, claimed, begun, finished."""

    def plan(
        self,
        job: str,
        stage: str,
        partitions: Iterable[Partition],
        *,
        fingerprint: str | None = None,
    ) -> int:
        if fingerprint is not None:

            def planned(conn: Any) -> str | None:
                stage_id = self._stage_id(conn, job, stage, create=True)
                row = conn.execute(self._q["planned"], {"stage_id": stage_id}).fetchone()
                return None if row is None else row[0]

            if self._run(planned) == fingerprint:
                return 0
        inserted = 0
        iterator = iter(partitions)
        # Partitions share a handful of dims and, per window, dates: the dialect encodes
        # each once per plan, not once per row.
        memo: dict[Any, Any] = {}
        while chunk := list(itertools.islice(iterator, _PLAN_CHUNK)):

            def insert(conn: Any, chunk: list[Partition] = chunk) -> int:
                stage_id = self._stage_id(conn, job, stage, create=True)
                assert stage_id is not None
                return self.dialect.plan(conn, stage_id, chunk, memo)

            inserted += self._run(insert)
            if len(memo) > _MEMO_LIMIT:
                # Dates repeat within a chunk (a window's dims), not across a plan: kept
                # whole, a daily spec's memo grew by some 190 bytes a partition.
                memo.clear()
        if fingerprint is not None:

            def record(conn: Any) -> None:
                stage_id = self._stage_id(conn, job, stage, create=True)
                conn.execute(self._q["set_planned"], {"stage_id": stage_id, "planned": fingerprint})

            self._run(record)
        return inserted

    def claim(
        self,
        job: str,
        stage: str,
        owner: str,
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        run_id: str,
        selection: Selection | None = None,
        order: Order = Order.OLDEST,
        needs: Sequence[Dependency] = (),
        suspects: bool = False,
        scan: int | None = None,
    ) -> list[Claim]:
        where, params = self.dialect.selection_sql(selection)
        direction = "ASC" if order is Order.OLDEST else "DESC"
        lost = "= 1" if suspects else "= 0"
        params.update(
            owner=owner,
            expires=now + lease_seconds,
            run_id=run_id,
            now=now,
            limit=limit,
            max_lost=MAX_LOST_LEASES,
            scan=scan,
        )

        def take(conn: Any) -> list[tuple[Any, ...]]:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return []
            ready, ready_params = self._ready(conn, job, needs)
            q = dict(params, stage_id=stage_id, **ready_params)
            # Only a readiness check can make the scan longer than the claim itself.
            query = self._q[
                "claim_pending_front" if scan is not None and ready else "claim_pending"
            ]

            def pending(lost: str) -> str:
                return query.format(where=where, direction=direction, ready=ready, lost=lost)

            rows: list[tuple[Any, ...]] = conn.execute(pending(lost), q).fetchall()
            if len(rows) < limit:
                # Expired leases through their own index: the pending branch above never
                # has to look at running or finished rows. They come back as suspects.
                conn.execute(self._q["fail_lost"].format(where=where), q)
                released = conn.execute(self._q["release_expired"].format(where=where), q)
                if released.rowcount:
                    q["limit"] = limit - len(rows)
                    rows += conn.execute(pending(lost), q).fetchall()
            if suspects and not rows:
                # Lost twice or more: one at a time (see Ledger.claim).
                rows = conn.execute(pending("> 1"), dict(q, limit=1)).fetchall()
            return rows

        rows = self._run(take)
        # RETURNING gives no order guarantee; the caller asked for window order. The raw
        # dates (ISO text, or dates) sort as the dates do.
        rows.sort(key=itemgetter(2, 0), reverse=order is Order.NEWEST)
        # Rows of one batch share a few dims values and dates: decode each once.
        date_of, dims_of = self.dialect.date_of, self.dialect.dims_of
        dates: dict[Any, date] = {}
        dims: dict[Any, tuple[tuple[str, str], ...]] = {}
        claims = []
        for row in rows:
            start = dates.get(row[2]) or dates.setdefault(row[2], date_of(row[2]))
            end = dates.get(row[3]) or dates.setdefault(row[3], date_of(row[3]))
            row_dims = dims.get(row[4])
            if row_dims is None:
                row_dims = dims[row[4]] = dims_of(row[4])
            # Each field by index: a sliced, starred call cost a fifth of the claim.
            claims.append(
                Claim(row[0], stage, row[1], start, end, row_dims, row[5], row[6], row[7], row[8])
            )
        return claims

    def mark_stale(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> int:
        def mark(conn: Any) -> int:
            query = self._inputs_query(
                conn, "mark_stale", job, stage, needs, selection, _deps.NEWER
            )
            if query is None:
                return 0
            sql, params = query
            params["message"] = _deps.STALE_MESSAGE
            return int(conn.execute(sql, params).rowcount)

        return self._run(mark)

    def unfinished(
        self,
        job: str,
        stage: str,
        selection: Selection | None = None,
        *,
        running_only: bool = False,
        needs: Sequence[Dependency] = (),
    ) -> bool:
        where, params = self.dialect.selection_sql(selection)

        def read(conn: Any) -> bool:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return False
            ready, ready_params = self._ready(conn, job, needs)
            q = dict(params, stage_id=stage_id, **ready_params)
            names = ("any_running",) if running_only else ("any_pending", "any_running")
            return any(
                conn.execute(self._q[name].format(where=where, ready=ready), q).fetchone()
                is not None
                for name in names
            )

        return self._run(read, write=False)

    def begin(self, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        if not leases:
            return set()
        return self._run(lambda conn: self.dialect.begin_on(conn, owner, leases))

    def complete(self, owner: str, outcomes: Sequence[Outcome], *, now: float) -> int:
        if not outcomes:
            return 0
        return self._run(lambda conn: self.dialect.complete(conn, owner, outcomes, now))

    def save_checkpoint(self, owner: str, claim_id: int, checkpoint: str | None) -> bool:
        params = {"id": claim_id, "owner": owner, "checkpoint": checkpoint}
        return self._run(
            lambda conn: bool(conn.execute(self._q["save_checkpoint"], params).rowcount == 1)
        )

    def renew(self, owner: str, *, lease_seconds: float, now: float) -> int:
        params = {"owner": owner, "expires": now + lease_seconds}
        return self._run(lambda conn: int(conn.execute(self._q["renew"], params).rowcount))

    def release_owner(self, owner: str, *, lost: bool = False) -> int:
        params = {"owner": owner, "max_lost": MAX_LOST_LEASES}

        def release(conn: Any) -> int:
            if not lost:
                return int(conn.execute(self._q["release_owner"], params).rowcount)
            failed = conn.execute(self._q["fail_lost_of_owner"], params).rowcount
            return int(failed + conn.execute(self._q["release_lost"], params).rowcount)

        return self._run(release)

    # -- runs and workers ----------------------------------------------------------

    def _execute(self, name: str, params: dict[str, Any]) -> None:
        """One named write in a transaction of its own."""
        self._run(lambda conn: conn.execute(self._q[name], params))

    def start_run(self, run: RunRecord) -> None:
        self._execute(
            "start_run",
            {
                "id": run.id,
                "job": run.job,
                "command": run.command,
                "host": run.host,
                "pid": run.pid,
                "options": json.dumps(dict(run.options), default=str),
                "started_at": run.started_at,
                "status": run.status,
            },
        )

    def finish_run(
        self,
        run_id: str,
        *,
        now: float,
        status: str,
        exit_code: int,
        counts: Mapping[str, Any],
    ) -> None:
        self._execute(
            "finish_run",
            {
                "id": run_id,
                "now": now,
                "status": status,
                "exit_code": exit_code,
                "counts": json.dumps(dict(counts), default=str),
            },
        )

    def register_worker(self, worker: WorkerRecord) -> None:
        self._execute(
            "register_worker",
            {
                "id": worker.id,
                "job": worker.job,
                "host": worker.host,
                "pid": worker.pid,
                "started_at": worker.started_at,
                "heartbeat_at": worker.heartbeat_at,
            },
        )

    def heartbeat(self, worker_id: str, *, now: float, resources: str | None = None) -> None:
        self._execute("heartbeat", {"id": worker_id, "now": now, "resources": resources})

    def stop_worker(self, worker_id: str, *, now: float) -> None:
        self._execute("stop_worker", {"id": worker_id, "now": now})

    # -- resource schedules --------------------------------------------------------

    def take_starts(
        self,
        job: str,
        resource: str,
        *,
        count: int,
        interval: float,
        tolerance: float,
        quotas: Sequence[tuple[int, float]] = (),
        max_pause: float = math.inf,
        margin: float = 0.0,
        horizon: float = math.inf,
        learn: Report | None = None,
    ) -> tuple[list[float], float, float, float]:
        """Book ``count`` starts of a resource (see :func:`backfill.ledger.limits.take_starts`);
        ``job`` is the schedule's scope."""
        return self._run(
            lambda conn: limits.take_starts(
                self.dialect.query(conn),
                job,
                resource,
                count=count,
                interval=interval,
                tolerance=tolerance,
                quotas=quotas,
                max_pause=max_pause,
                margin=margin,
                horizon=horizon,
                learn=learn,
            )
        )

    def pause_resource(self, job: str, resource: str, seconds: float) -> None:
        """Pause a resource's schedule for every run sharing it (a Retry-After, a quota)."""
        self._execute("pause_resource", {"job": job, "name": resource, "seconds": seconds})

    def resume_resource(self, job: str, resource: str) -> float | None:
        """End a resource's stored pause now (see :func:`backfill.ledger.limits.resume`)."""
        return self._run(lambda conn: limits.resume(self.dialect.query(conn), job, resource))
