"""The ledger's algorithm, once for every database: :class:`SQLLedger`.

A database's ledger (``sqlite.py``, ``postgres.py``) adds only how it connects, creates
and migrates its schema and runs a transaction; everything it spells differently is its
:class:`~backfill.ledger.dialect.Dialect`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from backfill.ledger import _deps
from backfill.ledger.identity import DatabaseIdentity
from backfill.ledger.models import Dependency, ResetCounts, Status
from backfill.ledger.protocols import Completer, Fence
from backfill.ledger.reads import ReadOps
from backfill.ledger.work import WorkOps
from backfill.partitions import Selection

__all__ = ["SQLLedger"]


class SQLLedger(WorkOps, ReadOps):
    """The :class:`~backfill.ledger.Ledger` on a SQL database, given its dialect.

    ``identity``: the database it lives in (None where no other connection can reach
    it, as SQLite's ``:memory:``); a sink of the same identity gets a
    :meth:`completer` and a :meth:`fence`, so its rows and the done-marks commit
    together (see :class:`~backfill.ledger.SharedCompletion`).
    """

    identity: DatabaseIdentity | None = None

    # -- the exactly-once path -------------------------------------------------------

    def completer(self, database: DatabaseIdentity) -> Completer | None:
        """Record outcomes inside a sink's transaction when the sink is in this ledger's
        own database (the same tables). Then a partition's rows and its done-mark commit
        together: exactly once."""
        if self.identity is None or database != self.identity:
            return None
        return self.dialect.complete_in_sink

    def fence(self, database: DatabaseIdentity) -> Fence | None:
        """Prove leases inside a sink's transaction when the sink is in this database."""
        if self.identity is None or database != self.identity:
            return None
        return self.dialect.begin_in_sink

    # -- maintenance ---------------------------------------------------------------

    def requeue(
        self,
        job: str,
        stages: Sequence[str],
        statuses: Sequence[Status] = (Status.FAILED,),
        selection: Selection | None = None,
    ) -> int:
        if any(s not in (Status.FAILED, Status.EMPTY, Status.DONE) for s in statuses):
            raise ValueError("only finished partitions can be requeued")
        values = self.dialect.list_value([s.value for s in statuses])
        return self._per_stage("requeue", job, stages, selection, statuses=values)

    def reset(
        self,
        job: str,
        stages: Sequence[str],
        selection: Selection | None = None,
        *,
        downstream: Mapping[str, Sequence[Dependency]] | None = None,
        keep: Collection[str] = (),
    ) -> ResetCounts:
        where, params = self.dialect.selection_sql(selection)
        unfinished = self.dialect.list_value(
            [s.value for s in (Status.PENDING, Status.DONE, Status.EMPTY, Status.FAILED)]
        )

        def forget(conn: Any) -> ResetCounts:
            removed = stale = 0
            ids = [self._stage_id(conn, job, stage, create=False) for stage in stages]
            known = [stage_id for stage_id in ids if stage_id is not None]
            if downstream:
                for stage_id in known:
                    sql = self._q["redo"].format(where=where)
                    conn.execute(sql, dict(params, stage_id=stage_id))
                for name, needs in downstream.items():
                    query = self._inputs_query(
                        conn, "mark_stale", job, name, needs, None, _deps.NEWER
                    )
                    if query is not None:
                        sql, args = query
                        stale += conn.execute(sql, dict(args, message=_deps.STALE_MESSAGE)).rowcount
            for stage, held in zip(stages, ids, strict=True):
                if held is None:
                    continue
                if stage in keep:
                    # Only its discoverer could plan it again: kept, as pending.
                    sql = self._q["requeue"].format(where=where)
                    args = dict(params, stage_id=held, statuses=unfinished)
                    removed += conn.execute(sql, args).rowcount
                    continue
                sql = self._q["reset"].format(where=where)
                removed += conn.execute(sql, dict(params, stage_id=held)).rowcount
                # The next plan must put the forgotten partitions back.
                conn.execute(self._q["forget_plan"], {"stage_id": held})
            return ResetCounts(removed, stale)

        return self._run(forget)
