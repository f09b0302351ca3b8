"""Helpers for testing jobs without a database or a network.

Example::

    from backfill.testing import MemorySink, run_job

    from my_jobs.results import job     # the production job file

    sink = MemorySink(key=["id"])
    result = run_job(job, sink=sink)     # in memory: no database, no files
    assert result.exit_code == 0 and len(sink.rows) == 31

A source that fails before it answers is retried with backoff; ``set_testing(True)``
turns those waits off (retries still happen and are counted)::

    with set_testing(True):
        result = run_job(job, sink=sink)
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

from backfill.backoff import is_testing, set_testing
from backfill.errors import PermanentError
from backfill.job import Job
from backfill.ledger import DatabaseIdentity, Ledger, open_ledger
from backfill.runner import Runner, RunOptions, RunResult
from backfill.sinks import Rows, Sink, SinkConnection

__all__ = ["MemorySink", "is_testing", "run_job", "set_testing"]


class _MemoryConnection:
    """Stages writes until commit, so a rolled-back batch leaves nothing behind."""

    def __init__(self, sink: MemorySink) -> None:
        self.raw = sink
        self.staged: dict[tuple[Any, ...], dict[str, Any]] | None = None

    def begin(self) -> None:
        self.staged = {}

    def commit(self) -> None:
        if self.staged is not None:
            with self.raw.lock:
                self.raw.rows.update(self.staged)
        self.staged = None

    def rollback(self) -> None:
        self.staged = None

    def close(self) -> None:
        self.raw.opened = False


class MemorySink:
    """A sink that upserts into a dict keyed by ``key``; counts every write call."""

    def __init__(self, key: Sequence[str], name: str = "memory") -> None:
        self.key = tuple(key)
        self.name = name
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.writes = 0
        self.opened = False
        self.lock = threading.Lock()

    @property
    def database(self) -> str:
        return f"memory:{id(self)}"

    @property
    def identity(self) -> DatabaseIdentity:
        return DatabaseIdentity("memory", str(id(self)))

    @property
    def description(self) -> str:
        return f"memory sink {self.name}"

    def connect(self) -> _MemoryConnection:
        self.opened = True
        return _MemoryConnection(self)

    def write(self, conn: SinkConnection, batch: Sequence[Rows]) -> int:
        assert isinstance(conn, _MemoryConnection) and conn.staged is not None
        self.writes += 1
        count = 0
        for rows in batch:
            for record in rows.records:
                missing = [k for k in self.key if record.get(k) is None]
                if missing:
                    raise PermanentError(
                        f"a record of partition {rows.partition.key} has no key field "
                        f"{missing[0]!r}",
                        category="missing_key",
                    )
                conn.staged[tuple(record[k] for k in self.key)] = dict(record)
                count += 1
        return count


def run_job(
    job: Job,
    ledger: Ledger | None = None,
    options: RunOptions | None = None,
    *,
    sink: Sink | None = None,
    **kwargs: Any,
) -> RunResult:
    """Run ``job`` to the end on ``ledger`` (a fresh in-memory one by default).

    ``sink`` replaces every stage's sink for this run only (e.g. a :class:`MemorySink`
    in place of the production table), leaving ``job`` itself unchanged.
    """
    store = ledger if ledger is not None else open_ledger(":memory:")
    if sink is not None:
        original = job
        job = copy.copy(job)
        job.stages = {
            name: dataclasses.replace(stage, sink=sink) for name, stage in original.stages.items()
        }
    return asyncio.run(Runner(job, store, options, **kwargs).run())
