"""`backfill run` and `backfill worker`: the commands that run a job."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from backfill import repair
from backfill.cli._common import (
    Command,
    FromOpt,
    JobArg,
    LogDirOpt,
    LogFormatOpt,
    NotifyOpt,
    PartitionOpt,
    SkipOpt,
    StageOpt,
    StartFromOpt,
    StateOpt,
    ThroughOpt,
    ToOpt,
    VerboseOpt,
    WhereOpt,
    app,
    check_run_options,
    configure_cli_logging,
    fail,
    handle_errors,
    keep_current,
    load_selection,
    out,
    run_and_exit,
)
from backfill.cli.current import run_current
from backfill.engine.entry import is_shared
from backfill.job import Job, Stage
from backfill.ledger import (
    DEFAULT_STATE_URL,
    open_ledger,
)
from backfill.notify import DEFAULT_MIN_INTERVAL, DEFAULT_TIMEOUT
from backfill.partitions import Selection, parse_order
from backfill.runner import ExitCode, RunOptions


@app.command(cls=Command)
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
    through: ThroughOpt = None,
    notify: NotifyOpt = None,
    notify_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds the notifications may take at the end before the run's result "
            "is given anyway.",
        ),
    ] = DEFAULT_TIMEOUT,
    notify_interval: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds between two notifications of one kind, across runs (a flapping "
            "source sends one, not one per run).",
        ),
    ] = DEFAULT_MIN_INTERVAL,
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
      backfill run jobs/results.py --through yesterday --notify ntfy://backfill-alerts

    A second run of a job while one is live on the same SQLite state exits 75 at once
    and names the run holding it; on PostgreSQL it joins that run as a worker.
    """
    configure_cli_logging(verbose, log_format)
    check_run_options(progress, log_dir, state)
    job, stages, selection = load_selection(
        job_path, stage, start, end, partition, where, start_from=start_from, skip=skip
    )
    job, stages = keep_current(job, stages, through, notify)
    configure_cli_logging(verbose, log_format, job.masker(state))
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
    run_current(
        job,
        stages,
        selection,
        state,
        options,
        through=through,
        notify_timeout=notify_timeout,
        notify_interval=notify_interval,
        progress=progress,
        log_dir=log_dir,
        verbose=verbose,
    )


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


@app.command(cls=Command)
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
    configure_cli_logging(verbose, log_format)
    check_run_options(progress, log_dir, state or DEFAULT_STATE_URL)
    if state is None:
        # A default would quietly give each machine a fleet of its own.
        raise fail(
            "backfill worker needs the state its workers share: pass --state "
            "postgresql://USER@HOST/DB (or a SQLite file, for workers on this machine "
            "only), or set BACKFILL_STATE"
        )
    job, stages, selection = load_selection(
        job_path, stage, start, end, partition, where, start_from=start_from, skip=skip
    )
    configure_cli_logging(verbose, log_format, job.masker(state))
    options = RunOptions(
        stages=tuple(s.name for s in stages),
        selection=selection,
        concurrency=concurrency,
        grace=grace,
        command="worker",
        argv=tuple(sys.argv[1:]),
        wait_for_leases=True,
    )
    run_and_exit(job, state, options, progress=progress, log_dir=log_dir, verbose=verbose)
