"""What every ``backfill`` command shares: the app, its options, loading a job, showing
text and errors, running a job and reporting its end.

Exit codes: 0 everything selected is done, 1 some partitions failed, 2 usage or
configuration error (nothing changed), 130 interrupted (state saved; run again to resume).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar, cast

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from backfill import __version__, keepcurrent
from backfill.engine import entry
from backfill.engine.entry import default_log_dir, log_path
from backfill.errors import BackfillError, ConfigError
from backfill.events import Subscriber
from backfill.job import Job, Stage, load_job
from backfill.job.graph import found_by_keys
from backfill.ledger import (
    Ledger,
    NoState,
    open_ledger,
    open_reader,
)
from backfill.logs import LogFormat, configure_logging
from backfill.partitions import Selection
from backfill.progress import format_duration
from backfill.report import RunReport
from backfill.runner import ExitCode, RunOptions, RunResult
from backfill.secrets import Masker, url_secrets
from backfill.textsafe import visible

P = ParamSpec("P")
R = TypeVar("R")


def _as_flags(params: list[Any]) -> list[Any]:
    """Flags (and counting flags such as -v) take no value: help shows none for them,
    where typer would print ``<bool>`` or ``<int>``."""
    for param in params:
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
    return params


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _as_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _as_flags(super().get_params(ctx))


app = typer.Typer(
    name="backfill",
    cls=_Group,
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        print(f"backfill {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Fast, resumable, observable historical data backfills.

    JOB is a Python file that defines a backfill.Job (path/to/job.py, path/to/job.py:NAME
    or package.module:NAME).
    """


# No emoji codes: ":x:" in a source's message is text, like any markup in it.
out = Console(emoji=False)
if not out.is_terminal:
    # Piped or logged output has no width to fit; don't squeeze tables into 80 columns.
    out = Console(width=200, emoji=False)
err = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 400, emoji=False)

# Options shared by the commands that work on a selection of partitions.
JobArg = Annotated[
    str, typer.Argument(metavar="JOB", help="Job file (path.py[:NAME]) or MODULE:NAME.")
]
StateOpt = Annotated[
    str,
    typer.Option(
        "--state",
        envvar="BACKFILL_STATE",
        help="State (ledger) URL: sqlite:///PATH, a file path, or postgresql://USER@HOST/DB.",
        show_default=True,
    ),
]
StageOpt = Annotated[
    list[str] | None, typer.Option("--stage", "-s", help="Only this stage (repeatable).")
]
StartFromOpt = Annotated[
    list[str] | None,
    typer.Option("--start-from", help="This stage and every stage downstream of it (repeatable)."),
]
SkipOpt = Annotated[
    list[str] | None, typer.Option("--skip", help="Leave out this stage (repeatable).")
]
FromOpt = Annotated[
    str | None, typer.Option("--from", help="First day of the selection (YYYY-MM-DD).")
]
ToOpt = Annotated[str | None, typer.Option("--to", help="Last day of the selection (YYYY-MM-DD).")]
ThroughOpt = Annotated[
    str | None,
    typer.Option(
        "--through",
        help="Keep current: move the partitions' end to this day (yesterday, today or "
        "YYYY-MM-DD, in the job's time zone) and plan the new ones.",
    ),
]
NotifyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--notify",
        help="An Apprise URL told how the run ended (repeatable; adds to the job's notify=).",
    ),
]
PartitionOpt = Annotated[
    list[str] | None,
    typer.Option("--partition", "-p", help="Only this partition key (repeatable)."),
]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option("--where", "-w", help="Dimension filter DIM=VALUE[,VALUE] (repeatable)."),
]
LogFormatOpt = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="BACKFILL_LOG_FORMAT",
        help="Log lines on stderr: console (readable) or json (one object per line).",
    ),
]
LogDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--log-dir",
        envvar="BACKFILL_LOG_DIR",
        # \\[ : a literal bracket, not Rich markup.
        help="Where each run writes its JSON log file RUN_ID.jsonl "
        "\\[default: logs/ beside a SQLite state file; .backfill/logs in the working "
        "directory for a PostgreSQL state].",
        show_default=False,
    ),
]
VerboseOpt = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        show_default=False,
        help="More log lines on stderr: -v info, -vv debug (repeat the flag).",
    ),
]


def shown(text: object) -> Text:
    """Text from outside (a source's message, a ledger row, a partition key, an argument)
    for rich: never parsed as markup, its control characters shown as escapes."""
    return Text(visible(str(text)))


def error_line(message: str) -> Text:
    return Text.assemble(("error:", "bold red"), " ", visible(message))


def fail(message: str, code: int = ExitCode.USAGE) -> typer.Exit:
    err.print(error_line(message), soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BackfillError as exc:
            state = kwargs.get("state")
            masker = Masker(url_secrets(state, "state") if isinstance(state, str) else ())
            raise fail(masker.mask(str(exc))) from None

    return wrapper


def load_selection(
    target: str,
    stage_names: list[str] | None,
    start: str | None,
    end: str | None,
    keys: list[str] | None,
    where: list[str] | None,
    *,
    start_from: list[str] | None = None,
    skip: list[str] | None = None,
) -> tuple[Job, list[Stage], Selection | None]:
    """Load the job and validate the stage names and the selection, before any state."""
    job = load_job(target)
    stages = job.select_stages(stage_names, start_from=start_from or (), skip=skip or ())
    if not (start or end or keys or where):
        return job, stages, None
    # Validated against the first selected partitioned stage: the stages of one job share
    # their dimensions and range in all but unusual jobs (reference stages always run whole).
    partitioned = [s for s in stages if not s.reference] or [
        s for s in job.stages.values() if not s.reference
    ]
    if not partitioned:
        raise BackfillError(
            f"job {job.name!r} has only reference stages; they take no --from/--to/--partition/"
            "--where"
        )
    spec = partitioned[0].partitions
    given = sorted(set(keys or ()))
    # A key may be any selected stage's (an archive page's, or a tournament it found).
    by_stage = {s.name: [k for k in given if s.partitions.get(k) is not None] for s in partitioned}
    for key in given:
        if not any(key in mine for mine in by_stage.values()):
            shapes = " or ".join(
                dict.fromkeys(repr(s.partitions.example_key()) for s in partitioned)
            )
            raise ConfigError(f"unknown partition {key!r}; keys of this job look like {shapes}")
    own = by_stage[partitioned[0].name]
    selection = spec.selection(start=start, end=end, keys=own, where=where or ())
    if given:
        # Keys the first stage does not know, and what the archive pages named find.
        found = found_by_keys(job.stages, stages, by_stage)
        selection = Selection(
            selection.start, selection.end, frozenset(given), selection.dims, found
        )
    return job, stages, selection


def keep_current(
    job: Job, stages: list[Stage], through: str | None, notify: list[str] | None
) -> tuple[Job, list[Stage]]:
    """The job moved on to ``--through`` (its stages too) and told of the ``--notify``
    URLs, whose tokens become secrets of the job."""
    if through is not None:
        job = keepcurrent.through(job, through)
        stages = [job.stages[s.name] for s in stages]
    if notify:
        job.notify = (*job.notify, *notify)
    return job, stages


def open_to_read(state: str) -> Ledger:
    """The state, read-only; where nothing has run yet (said on stderr) an empty ledger
    stands in, so the report shows everything missing."""
    try:
        return open_reader(state)
    except NoState as exc:
        err.print(shown(exc), soft_wrap=True)
        return open_ledger(":memory:")


def check_run_options(progress: str, log_dir: Path | None, state: str) -> None:
    """Refuse a bad --progress or a log directory that cannot be written before anything
    touches the state: bad options change nothing."""
    try:
        entry.check_run_options(progress, log_dir, state)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def run_and_exit(
    job: Job, state: str, options: RunOptions, *, progress: str, log_dir: Path | None, verbose: int
) -> NoReturn:
    """Work the job on the state store, report, and exit with the run's code."""
    ledger = open_ledger(state)
    try:
        result = execute(job, ledger, options, progress=progress, log_dir=log_dir, verbose=verbose)
    finally:
        ledger.close()
    report_end(result, log_dir or default_log_dir(state))
    raise typer.Exit(result.exit_code)


def configure_cli_logging(
    verbose: int, log_format: str = "console", secrets: Sequence[str] | Masker = ()
) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if log_format not in ("console", "json"):
        raise fail(f"unknown --log-format {log_format!r}; use console or json")
    configure_logging(cast(LogFormat, log_format), level=level, secrets=secrets)


def execute(
    job: Job,
    ledger: Ledger,
    options: RunOptions,
    *,
    progress: str = "auto",
    log_dir: Path | None = None,
    verbose: int = 0,
    subscribers: Sequence[Subscriber] = (),
) -> RunResult:
    """Run ``job`` as ``backfill.engine.entry.execute`` does (progress on the command's
    console, a log file, signal handling); its refusals end the command with exit 2."""
    try:
        return entry.execute(
            job,
            ledger,
            options,
            progress=progress,
            log_dir=log_dir,
            verbose=verbose,
            console=out,
            subscribers=subscribers,
        )
    except ConfigError as exc:
        raise fail(str(exc)) from None


def report_end(result: RunResult, log_dir: Path | None = None) -> None:
    counts = result.counts
    done = sum(c.done for c in counts.values())
    empty = sum(c.empty for c in counts.values())
    failed = sum(c.failed for c in counts.values())
    pending = sum(c.pending + c.running for c in counts.values())
    line = (
        f"run {result.run_id}: {result.status.value} in {format_duration(result.elapsed)} · "
        f"{result.executed:,} partition(s) run this time, {result.records:,} records, "
        f"{result.retries:,} retries · selection: {done:,} done, {empty:,} empty, "
        f"{failed:,} failed, {pending:,} left"
    )
    out.print(shown(line), soft_wrap=True)
    if result.status.value == "interrupted":
        out.print("interrupted: state saved; run the same command again to resume.")
    elif result.message:
        # The message may quote a source (a fatal error's text).
        if result.exit_code == ExitCode.USAGE:
            err.print(error_line(result.message), soft_wrap=True)
        else:
            out.print(shown(result.message), soft_wrap=True)
    if log_dir is not None:
        out.print(shown(f"log: {log_path(log_dir, result.run_id)}"), soft_wrap=True)


def when(timestamp: float | None) -> str:
    """A UTC time to show, or "-" when there is none."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def run_status(run: RunReport) -> Text:
    """A run's status; a lost one says when its worker last showed a sign of life."""
    if run.status != "lost":
        return shown(run.status)
    beat = run.heartbeat_at
    ago = f", last heartbeat {when(beat)}" if beat is not None else ""
    return Text(f"lost (its worker died{ago})", style="bold red")
