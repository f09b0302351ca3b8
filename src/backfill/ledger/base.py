"""What every part of the SQL ledger stands on: a dialect, one transaction at a time,
and the stage ids and dependency queries every operation starts from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from backfill.ledger import _deps
from backfill.ledger.dialect import Dialect
from backfill.ledger.models import Dependency
from backfill.partitions import Selection

__all__ = ["LedgerBase"]

T = TypeVar("T")


class LedgerBase(ABC):
    """The SQL ledger's foundation; a database's ledger supplies :meth:`_transact`."""

    url: str
    dialect: Dialect

    def __init__(self) -> None:
        self._q = self.dialect.queries
        self._stage_ids: dict[tuple[str, str], int] = {}

    @abstractmethod
    def _transact(self, body: Callable[[Any], T], write: bool) -> T:
        """Run ``body`` on a connection in one transaction (``write``: one that may
        write); driver errors become :class:`~backfill.errors.LedgerError` here only."""

    def _run(self, body: Callable[[Any], T], *, write: bool = True) -> T:
        try:
            return self._transact(body, write)
        except BaseException:
            if write:
                # Stage ids created in the lost transaction do not exist.
                self._stage_ids.clear()
            raise

    def _stage_id(self, conn: Any, job: str, stage: str, create: bool) -> int | None:
        cached = self._stage_ids.get((job, stage))
        if cached is not None:
            return cached
        params = {"job": job, "stage": stage}
        row = conn.execute(self._q["stage_id"], params).fetchone()
        if row is None and create:
            conn.execute(self._q["insert_stage"], params)
            row = conn.execute(self._q["stage_id"], params).fetchone()
        if row is None:
            return None
        self._stage_ids[(job, stage)] = int(row[0])
        return int(row[0])

    def _dep_ids(self, conn: Any, job: str, needs: Sequence[Dependency]) -> list[int | None]:
        return [self._stage_id(conn, job, dep.stage, create=False) for dep in needs]

    def _ready(
        self, conn: Any, job: str, needs: Sequence[Dependency]
    ) -> tuple[str, dict[str, Any]]:
        """The ``{ready}`` fragment: a partition's inputs are all finished."""
        return _deps.ready_filter(needs, self._dep_ids(conn, job, needs), self.dialect)

    def _inputs_query(
        self,
        conn: Any,
        name: str,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None,
        condition: str,
    ) -> tuple[str, dict[str, Any]] | None:
        """Named query ``name`` over the partitions of ``stage`` some of whose inputs
        meet ``condition``; None when the stage or its needs are unknown."""
        stage_id = self._stage_id(conn, job, stage, create=False)
        if stage_id is None or not needs:
            return None
        where, params = self.dialect.selection_sql(selection)
        sql, extra = _deps.inputs_query(
            self._q[name], where, needs, self._dep_ids(conn, job, needs), self.dialect, condition
        )
        return sql, {**params, **extra, "stage_id": stage_id}

    def _per_stage(
        self,
        query: str,
        job: str,
        stages: Sequence[str],
        selection: Selection | None,
        **extra: Any,
    ) -> int:
        """Run named query ``query`` once per known stage, in one transaction; rows changed."""
        where, params = self.dialect.selection_sql(selection)
        params.update(extra)

        def change(conn: Any) -> int:
            changed = 0
            for stage in stages:
                stage_id = self._stage_id(conn, job, stage, create=False)
                if stage_id is None:
                    continue
                sql = self._q[query].format(where=where)
                changed += int(conn.execute(sql, dict(params, stage_id=stage_id)).rowcount)
            return changed

        return self._run(change)
