"""What `backfill run` does beyond running: a keep-current run (``--through``, the
stages' ``refresh_last=``), the refusal of a second run on a live SQLite state, and the
notifications of the run's end (``notify=`` on the job, ``--notify`` on the command)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import typer

from backfill import coverage, keepcurrent
from backfill.cli._common import err, error_line, execute, out, report_end, shown
from backfill.engine.entry import default_log_dir
from backfill.job import Job, Stage
from backfill.ledger import open_ledger
from backfill.ledger.protocols import Ledger
from backfill.ledger.sqlite import SQLiteLedger
from backfill.notify import (
    DEFAULT_MIN_INTERVAL,
    DEFAULT_TIMEOUT,
    Notice,
    Notifier,
    run_notice,
)
from backfill.overlap import BUSY, Holder, live_holder, run_lock
from backfill.partitions import Selection
from backfill.runner import RunOptions, RunResult

__all__ = ["gaps_notice", "run_current"]

log = logging.getLogger("backfill.cli")

# How long a run refused by the run lock waits for the run holding it to be on record.
_NAMING_WAIT = 5.0


def gaps_notice(job: Job, ledger: Ledger, stages: Sequence[Stage]) -> Notice | None:
    """The notice of the gaps (missing, failed, stale) a keep-current run left, if any."""
    found = coverage.collect(job, ledger, stages, None, thin=0)
    gaps = {stage: keys for stage, keys in found.gap_keys().items() if keys}
    if not gaps:
        return None
    lines = []
    for stage, keys in gaps.items():
        shown_keys = sorted(keys)
        more = f" and {len(keys) - 3:,} more" if len(keys) > 3 else ""
        lines.append(f"{stage}: {len(keys):,} gap(s): {', '.join(shown_keys[-3:])}{more}")
    lines.append("`backfill coverage` lists them; `backfill run --missing-only` fills them")
    through = max(s.partitions.end for s in stages if not s.reference) if stages else None
    title = f"backfill {job.name}: gaps remain through {through}"
    return Notice("gaps", title, "\n".join(lines), failure=True)


def run_current(
    job: Job,
    stages: Sequence[Stage],
    selection: Selection | None,
    state: str,
    options: RunOptions,
    *,
    through: str | None,
    notify_timeout: float = DEFAULT_TIMEOUT,
    notify_interval: float = DEFAULT_MIN_INTERVAL,
    progress: str,
    log_dir: Path | None,
    verbose: int,
) -> NoReturn:
    """Run the job as ``backfill run`` does, first refusing to double a live run on a
    SQLite state and redoing the refresh windows; notify at the end; exit."""
    memory = (log_dir or default_log_dir(state)).parent / f"notify-{job.name}.json"
    notifier = (
        Notifier(
            job.notify,
            job=job.name,
            masker=job.masker(state),
            timeout=notify_timeout,
            min_interval=notify_interval,
            memory=memory,
        )
        if job.notify
        else None
    )
    ledger = open_ledger(state)
    with contextlib.ExitStack() as held:
        held.callback(ledger.close)
        holder = live_holder(job, ledger)
        if isinstance(ledger, SQLiteLedger):
            free = held.enter_context(run_lock(job.name, ledger.path))
            if not free or holder is not None:
                holder = holder or _named_holder(job, ledger)
                text = (
                    holder.describe(job.name)
                    if holder is not None
                    else f"job {job.name!r} is held by another run starting on this machine; "
                    "nothing was done: try again when it has ended"
                )
                err.print(error_line(job.masker(state).mask(text)), soft_wrap=True)
                raise typer.Exit(BUSY)
        if holder is None and selection is None:
            # A run joining a live one (PostgreSQL) leaves the refresh to the run it joins.
            refresh = keepcurrent.to_refresh(job, ledger, stages)
            if refresh.count:
                refresh.apply(ledger)
                for s in refresh.stages:
                    out.print(shown(f"refresh: {s.describe()}"), soft_wrap=True)
        subscribers = [notifier] if notifier is not None else []
        result = execute(
            job,
            ledger,
            options,
            progress=progress,
            log_dir=log_dir,
            verbose=verbose,
            subscribers=subscribers,
        )
        if notifier is not None:
            _notify_end(notifier, job, ledger, stages, result, through=through)
    report_end(result, log_dir or default_log_dir(state))
    raise typer.Exit(result.exit_code)


def _named_holder(job: Job, ledger: Ledger) -> Holder | None:
    """The run holding the lock, once it is on record (it may be starting): a few
    seconds at most."""
    deadline = time.monotonic() + _NAMING_WAIT
    while time.monotonic() < deadline:
        holder = live_holder(job, ledger)
        if holder is not None:
            return holder
        time.sleep(0.1)
    return None


def _notify_end(
    notifier: Notifier,
    job: Job,
    ledger: Ledger,
    stages: Sequence[Stage],
    result: RunResult,
    *,
    through: str | None,
) -> None:
    """The run's end, and the gaps a keep-current run left; bounded in time, and never
    a change to the result."""
    try:
        names = [s.name for s in stages]
        failures = ledger.failure_groups(job.name, names) if result.exit_code else []
        notifier.post(run_notice(job.name, result, failures))
        if through is not None:
            gaps = gaps_notice(job, ledger, stages)
            if gaps is not None:
                notifier.post(gaps)
    except Exception:
        log.exception("notifications: could not say how the run ended")
    finally:
        notifier.close()
