"""The reports' side of the SQL ledger (see :class:`~backfill.ledger.ReportLedger`):
counts, coverage, failures, entries, runs and workers. Nothing here writes."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

from backfill.ledger import _deps, limits
from backfill.ledger.base import LedgerBase
from backfill.ledger.models import (
    CoverageRow,
    Dependency,
    FailureGroup,
    LedgerEntry,
    RunRecord,
    StageCounts,
    Status,
    WindowCount,
    WorkerRecord,
)
from backfill.partitions import Selection

__all__ = ["ReadOps"]


class ReadOps(LedgerBase):
    """What status, coverage, the dashboard and /metrics read."""

    def counts(
        self,
        job: str,
        stages: Sequence[str],
        selection: Selection | None = None,
        *,
        recent: bool = True,
    ) -> dict[str, StageCounts]:
        where, params = self.dialect.selection_sql(selection)

        def read(conn: Any) -> dict[str, StageCounts]:
            result: dict[str, StageCounts] = {}
            for stage in stages:
                stage_id = self._stage_id(conn, job, stage, create=False)
                result[stage] = (
                    StageCounts(stage)
                    if stage_id is None
                    else self._stage_counts(conn, stage, stage_id, where, params, recent)
                )
            return result

        return self._run(read, write=False)

    def _stage_counts(
        self,
        conn: Any,
        stage: str,
        stage_id: int,
        where: str,
        params: dict[str, Any],
        recent: bool,
    ) -> StageCounts:
        q = dict(params, stage_id=stage_id)
        by_status: dict[str, int] = {}
        records = 0
        for status, n, recs in conn.execute(self._q["counts"].format(where=where), q):
            by_status[status] = n
            records += int(recs)
        recent_n, span, latest = 0, 0.0, None
        last = conn.execute(self._q["last_run_of_stage"], q).fetchone() if recent else None
        if last is not None and last[0] is not None:
            q["run_id"] = last[0]
            n, first, final = conn.execute(self._q["recent"].format(where=where), q).fetchone()
            if n and first is not None and final is not None:
                recent_n, span = int(n), float(final) - float(first)
                latest = float(final)
        return StageCounts(
            stage,
            pending=by_status.get("pending", 0),
            running=by_status.get("running", 0),
            done=by_status.get("done", 0),
            empty=by_status.get("empty", 0),
            failed=by_status.get("failed", 0),
            records=records,
            recent_finished=recent_n,
            recent_span=span,
            last_finished_at=latest,
        )

    def stale_keys(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> set[str]:
        def read(conn: Any) -> set[str]:
            query = self._inputs_query(
                conn, "stale_keys", job, stage, needs, selection, _deps.NEWER
            )
            if query is None:
                return set()
            return {row[0] for row in conn.execute(*query)}

        return self._run(read, write=False)

    def blocked_keys(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> dict[str, str]:
        def read(conn: Any) -> dict[str, str]:
            query = self._inputs_query(
                conn, "blocked_keys", job, stage, needs, selection, _deps.FAILED
            )
            if query is None:
                return {}
            return {row[0]: row[1] for row in conn.execute(*query)}

        return self._run(read, write=False)

    def _stage_rows(
        self,
        job: str,
        stage: str,
        name: str,
        selection: Selection | None = None,
        **extra: Any,
    ) -> list[tuple[Any, ...]]:
        """The rows of named query ``name`` for one stage (none if it is unknown)."""
        where, params = self.dialect.selection_sql(selection)
        if extra.get("status") is not None:
            where += f" AND status = {self.dialect.param('status')}"

        def read(conn: Any) -> list[tuple[Any, ...]]:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return []
            sql = self._q[name].format(where=where)
            rows: list[tuple[Any, ...]] = conn.execute(
                sql, dict(params, stage_id=stage_id, **extra)
            ).fetchall()
            return rows

        return self._run(read, write=False)

    def coverage_rows(
        self, job: str, stage: str, selection: Selection | None = None
    ) -> Iterator[CoverageRow]:
        rows = self._stage_rows(job, stage, "coverage_rows", selection)
        date_of, dims_of = self.dialect.date_of, self.dialect.dims_of
        # Rows share a few dims values and, per window, dates: decode each once.
        dates: dict[Any, date] = {}
        dims: dict[Any, tuple[tuple[str, str], ...]] = {}

        def convert(row: tuple[Any, ...]) -> CoverageRow:
            start = dates.get(row[1]) or dates.setdefault(row[1], date_of(row[1]))
            end = dates.get(row[2]) or dates.setdefault(row[2], date_of(row[2]))
            row_dims = dims.get(row[3])
            if row_dims is None:
                row_dims = dims[row[3]] = dims_of(row[3])
            return CoverageRow(row[0], start, end, row_dims, Status(row[4]), *row[5:])

        return (convert(r) for r in rows)

    def window_counts(self, job: str, stage: str) -> list[WindowCount]:
        date_of = self.dialect.date_of
        return [
            WindowCount(date_of(start), date_of(end), Status(status), n, bool(stale))
            for start, end, status, stale, n in self._stage_rows(job, stage, "window_counts")
        ]

    def failure_groups(
        self, job: str, stages: Sequence[str], selection: Selection | None = None
    ) -> list[FailureGroup]:
        groups: list[FailureGroup] = []
        for stage in stages:
            # The example's key and message are the last two columns in every dialect.
            groups.extend(
                FailureGroup(stage, row[0], int(row[1]), row[-2], row[-1])
                for row in self._stage_rows(job, stage, "failure_groups", selection)
            )
        return groups

    def entries(
        self,
        job: str,
        stage: str,
        *,
        status: Status | None = None,
        selection: Selection | None = None,
        limit: int = 100,
    ) -> list[LedgerEntry]:
        rows = self._stage_rows(
            job,
            stage,
            "entries",
            selection,
            status=None if status is None else status.value,
            limit=limit,
        )
        return [
            LedgerEntry(
                stage=stage,
                key=r[0],
                status=Status(r[1]),
                attempts=r[2],
                records=r[3],
                duration=r[4],
                error_category=r[5],
                error_message=r[6],
                run_id=r[7],
                finished_at=r[8],
            )
            for r in rows
        ]

    def request_stats(self, job: str, stage: str) -> tuple[int, float | None]:
        rows = self._stage_rows(job, stage, "request_stats")
        if not rows:
            return 0, None
        n, avg = rows[0]
        return int(n), (float(avg) if avg is not None else None)

    def runs(self, job: str, limit: int = 20) -> list[RunRecord]:
        rows = self._run(
            lambda conn: conn.execute(self._q["runs"], {"job": job, "limit": limit}).fetchall(),
            write=False,
        )
        return [
            RunRecord(
                id=r[0],
                job=r[1],
                started_at=r[2],
                host=r[3],
                pid=r[4],
                command=r[5],
                options=json.loads(r[6]),
                finished_at=r[7],
                status=r[8],
                exit_code=r[9],
                counts=json.loads(r[10]),
            )
            for r in rows
        ]

    def workers(self, job: str, *, active_only: bool = True) -> list[WorkerRecord]:
        where = " AND stopped_at IS NULL" if active_only else ""
        sql = self._q["workers"].format(where=where)
        rows = self._run(lambda conn: conn.execute(sql, {"job": job}).fetchall(), write=False)
        return [WorkerRecord(*r) for r in rows]

    def resource_states(self, job: str, *, limit: int = 20) -> list[tuple[float, str]]:
        rows = self._run(
            lambda conn: conn.execute(
                self._q["resource_states"], {"job": job, "limit": limit}
            ).fetchall(),
            write=False,
        )
        return [(r[0], r[1]) for r in rows]

    def quota_use(
        self, job: str, resource: str, quotas: Sequence[tuple[int, float]]
    ) -> dict[str, limits.QuotaUse]:
        """What each quota's current window has spent (see :func:`limits.quota_use`)."""
        return self._run(
            lambda conn: limits.quota_use(self.dialect.query(conn), job, resource, quotas),
            write=False,
        )
