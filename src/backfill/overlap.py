"""Overlapping runs of one job on one state: which live run holds it.

A second ``backfill run`` started while another is live on a SQLite state (a cron job
that outlasted its period, a person trying by hand) stops at once, says which run holds
the job, and changes nothing: exit code :data:`BUSY` (75, ``EX_TEMPFAIL``: try again
later). On PostgreSQL it joins the live run as one more worker instead.

Two runs started in the same instant would both find no live run on record: the run lock
(an advisory lock on a file beside the SQLite state, one per job, held for the whole run)
lets only one of them through.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backfill.engine.result import ExitCode
from backfill.job import Job
from backfill.ledger.protocols import Ledger
from backfill.report import run_reports

__all__ = ["BUSY", "Holder", "live_holder", "run_lock"]

BUSY = ExitCode.BUSY


@dataclass(frozen=True, slots=True)
class Holder:
    """The live run that holds a job."""

    run_id: str
    host: str
    pid: int
    command: str
    started_at: float

    def describe(self, job: str) -> str:
        return (
            f"job {job!r} is held by live run {self.run_id} ({self.command} on "
            f"{self.host}, pid {self.pid}); nothing was done: try again when it has ended"
        )


def live_holder(job: Job, ledger: Ledger) -> Holder | None:
    """The newest run of ``job`` whose worker is still alive, or None."""
    for report in run_reports(job, ledger, limit=20):
        if report.status == "running":
            run = report.record
            return Holder(run.id, run.host, run.pid, run.command, run.started_at)
    return None


@contextmanager
def run_lock(job: str, database: str | Path) -> Iterator[bool]:
    """Hold job ``job``'s run lock beside the SQLite file ``database`` while the context
    lasts; yield False (holding nothing) when another process holds it."""
    if str(database) == ":memory:":
        yield True
        return
    state = Path(database)
    path = state.with_name(f"{state.name}.{job}.run.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
