"""Helpers for testing jobs without a database or a network.

Example::

    from backfill.testing import MemorySink, run_job

    from my_jobs.results import job     # the production job file

    sink = MemorySink(key=["id"])
    result = run_job(job, sink=sink)     # in memory: no database, no files
    assert result.exit_code == 0 and len(sink.rows) == 31
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

from backfill.errors import PermanentError
from backfill.job import Job
from backfill.ledger import Ledger, open_ledger
from backfill.partitions import Partition
from backfill.runner import Runner, RunOptions, RunResult
from backfill.sinks import Record, Sink

__all__ = ["MemorySink", "run_job"]


class MemorySink:
    """A sink that upserts into a dict keyed by ``key``; counts every write call."""

    def __init__(self, key: Sequence[str]) -> None:
        self.key = tuple(key)
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.writes = 0
        self.opened = False
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return "memory sink"

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.opened = False

    def write(self, partition: Partition, records: Sequence[Record]) -> int:
        with self._lock:
            self.writes += 1
            for record in records:
                missing = [k for k in self.key if record.get(k) is None]
                if missing:
                    raise PermanentError(
                        f"a record of partition {partition.key} has no key field {missing[0]!r}",
                        category="missing_key",
                    )
                self.rows[tuple(record[k] for k in self.key)] = dict(record)
            return len(records)


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
