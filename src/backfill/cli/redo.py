"""`backfill retry`, `reset` and `resume-resource`: doing again, forgetting, letting go."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from backfill import repair
from backfill.cli._common import (
    Command,
    FromOpt,
    JobArg,
    LogDirOpt,
    LogFormatOpt,
    PartitionOpt,
    StageOpt,
    StateOpt,
    ToOpt,
    VerboseOpt,
    WhereOpt,
    app,
    check_run_options,
    configure_cli_logging,
    execute,
    fail,
    handle_errors,
    load_selection,
    out,
    report_end,
    shown,
)
from backfill.engine.entry import default_log_dir
from backfill.job import load_job
from backfill.ledger import (
    DEFAULT_STATE_URL,
    NoState,
    SharedLimits,
    Status,
    open_ledger,
    open_reader,
)
from backfill.progress import format_duration
from backfill.report import stage_counts
from backfill.runner import ExitCode, RunOptions
from backfill.textsafe import visible


@app.command(cls=Command)
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
    configure_cli_logging(verbose, log_format)
    check_run_options(progress, log_dir, state)
    if not (failed or empty):
        raise fail("say what to re-run: --failed, --empty, or both")
    job, stages, selection = load_selection(job_path, stage, start, end, partition, where)
    configure_cli_logging(verbose, log_format, job.masker(state))
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
    report_end(result, log_dir or default_log_dir(state))
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


@app.command(cls=Command)
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
    job, stages, selection = load_selection(job_path, stage, start, end, partition, where)
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
            keep=[s.name for s in stages if s.discovered_from is not None],
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
