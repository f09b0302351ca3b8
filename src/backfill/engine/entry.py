"""Running a job from a program, the way ``backfill run`` does: a progress display, a
JSON log file per run, SIGINT/SIGTERM handled (first: graceful stop, second: at once),
and the run's result with its exit code. The CLI calls :func:`execute`; a user's own
program calls :func:`run` (or ``job.run(...)``), which opens and closes the state too.

Example::

    result = job.run(state="sqlite:///state.db", progress=True)
    if result.exit_code:
        print(result.message)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from rich.console import Console

from backfill.engine.result import RunOptions, RunResult
from backfill.engine.run import Runner
from backfill.errors import ConfigError, disk_full_message, is_disk_full
from backfill.estimate import limit_floors
from backfill.events import EventBus, Subscriber
from backfill.job import Job
from backfill.ledger import DEFAULT_STATE_URL, Ledger, open_ledger
from backfill.logs import EventLog, log_file_handler
from backfill.partitions import Selection
from backfill.progress import LiveProgress, PlainProgress

__all__ = [
    "PROGRESS_MODES",
    "check_run_options",
    "default_log_dir",
    "execute",
    "is_shared",
    "log_path",
    "run",
]

PROGRESS_MODES = ("auto", "live", "plain", "none")
_RUN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def log_path(log_dir: Path, run_id: str) -> Path:
    return log_dir / f"{run_id}.jsonl"


def default_log_dir(state_url: str) -> Path:
    """``logs/`` beside a SQLite state file; ``.backfill/logs`` for any other ledger."""
    scheme, sep, rest = state_url.partition("://")
    if not sep:
        return Path(state_url).parent / "logs"
    path = rest[1:] if rest.startswith("/") else rest
    if scheme == "sqlite" and path not in ("", ":memory:"):
        return Path(path).parent / "logs"
    return Path(".backfill/logs")


def is_shared(state: str) -> bool:
    """Whether the state is a ledger other machines may be working on too."""
    return state.startswith(("postgresql://", "postgres://"))


def check_run_options(progress: str, log_dir: Path | None, state: str) -> None:
    """Refuse a bad progress mode or a log directory that cannot be written before
    anything touches the state: bad options change nothing."""
    if progress not in PROGRESS_MODES:
        raise ConfigError(f"unknown --progress {progress!r}; use auto, live, plain or none")
    directory = log_dir or default_log_dir(state)
    # The nearest existing ancestor decides; the directory itself is made by the run.
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        reason = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"{existing} is not writable"
    else:
        return
    raise ConfigError(
        f"cannot write the run's log file in {directory} ({reason}); pass another --log-dir"
    )


def execute(
    job: Job,
    ledger: Ledger,
    options: RunOptions,
    *,
    progress: str = "auto",
    log_dir: Path | None = None,
    verbose: int = 0,
    console: Console | None = None,
    subscribers: Sequence[Subscriber] = (),
) -> RunResult:
    """Run ``job`` with a progress display (``live`` on ``console``), a per-run JSON log
    file (in ``log_dir``, by default beside the state) and signal handling; return the
    result. A bad option or an unwritable log file is a ConfigError, before any run.
    ``subscribers`` hear the run's events too (a notifier)."""
    log_dir = log_dir or default_log_dir(ledger.url)
    bus = EventBus()
    # A line per partition done only when asked (-v): summed up once a second otherwise.
    bus.subscribe(EventLog(each_partition=verbose >= 1))
    for subscriber in subscribers:
        bus.subscribe(subscriber)
    check_run_options(progress, log_dir, ledger.url)
    mode = progress
    console = console or Console(emoji=False)
    if mode == "auto":
        mode = "live" if console.is_terminal else "plain"
    live: LiveProgress | None = None
    display: LiveProgress | PlainProgress | None = None
    if mode == "live":
        display = live = LiveProgress(console)
    elif mode == "plain":
        display = PlainProgress(sys.stdout)
    if display is not None:
        display.state.floors = limit_floors(job)
        bus.subscribe(display)
    runner = Runner(job, ledger, options, bus=bus)
    try:
        file_handler = log_file_handler(
            log_path(log_dir, runner.run_id),
            level=logging.DEBUG if verbose >= 2 else logging.INFO,
            secrets=job.masker(ledger.url),
        )
    except OSError as exc:
        if is_disk_full(exc):
            raise ConfigError(disk_full_message(log_dir)) from None
        raise ConfigError(
            f"cannot write the run's log file in {log_dir} ({exc}); pass another --log-dir"
        ) from None
    logging.getLogger().addHandler(file_handler)
    try:
        return asyncio.run(_with_signals(runner))
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()
        if live is not None:
            live.close()


async def _with_signals(runner: Runner) -> RunResult:
    """The run, with SIGINT and SIGTERM taken over (first: graceful stop, second: at
    once), then given back to the handlers it found. Signals reach only the main thread:
    a run started from another one leaves them alone."""
    if threading.current_thread() is not threading.main_thread():
        return await runner.run()
    loop = asyncio.get_running_loop()
    before = {signum: signal.getsignal(signum) for signum in _RUN_SIGNALS}
    for signum in _RUN_SIGNALS:
        loop.add_signal_handler(signum, runner.interrupt)
    try:
        return await runner.run()
    finally:
        for signum, handler in before.items():
            loop.remove_signal_handler(signum)
            if handler is not None:
                signal.signal(signum, handler)


def run(
    job: Job,
    state: str = DEFAULT_STATE_URL,
    *,
    stages: Sequence[str] = (),
    start: date | str | None = None,
    end: date | str | None = None,
    concurrency: int | None = None,
    grace: float = 5.0,
    progress: bool | str = True,
    log_dir: str | Path | None = None,
    verbose: int = 0,
) -> RunResult:
    """Run ``job`` on the state store ``state`` as ``backfill run`` would, and return the
    result (its ``exit_code`` is the command's; nothing calls ``sys.exit``).

    ``progress``: True (a live table on a terminal, plain lines otherwise), False (none),
    or one of ``auto``, ``live``, ``plain``, ``none``. ``start``/``end`` narrow the run to
    the partitions overlapping those dates.
    """
    mode = ("auto" if progress else "none") if isinstance(progress, bool) else progress
    directory = Path(log_dir) if log_dir is not None else None
    check_run_options(mode, directory, state)
    selected = job.select_stages(list(stages))
    first, last = _day(start, "start"), _day(end, "end")
    options = RunOptions(
        stages=tuple(s.name for s in selected),
        selection=Selection(first, last) if first or last else None,
        concurrency=concurrency,
        grace=grace,
        command="run",
        wait_for_leases=is_shared(state),
    )
    ledger = open_ledger(state)
    try:
        return execute(job, ledger, options, progress=mode, log_dir=directory, verbose=verbose)
    finally:
        ledger.close()


def _day(value: date | str | None, name: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a date; use YYYY-MM-DD") from None
