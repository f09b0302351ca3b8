"""`backfill plan`, `status` and `coverage`: what a job would do, is doing, has done."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from backfill import coverage, keepcurrent
from backfill.cli._common import (
    Command,
    FromOpt,
    JobArg,
    PartitionOpt,
    SkipOpt,
    StageOpt,
    StartFromOpt,
    StateOpt,
    ThroughOpt,
    ToOpt,
    WhereOpt,
    app,
    fail,
    handle_errors,
    keep_current,
    load_selection,
    open_to_read,
    out,
    shown,
)
from backfill.engine.lease import host, learned_states
from backfill.estimate import estimate
from backfill.freshness import freshness
from backfill.job import Job
from backfill.ledger import (
    DEFAULT_STATE_URL,
    FailureGroup,
    Ledger,
    LedgerEntry,
    SharedLimits,
    Status,
)
from backfill.progress import format_duration
from backfill.report import build_report, stage_counts
from backfill.runner import ExitCode
from backfill.secrets import Masker
from backfill.textsafe import visible


@app.command(cls=Command)
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
    through: ThroughOpt = None,
) -> None:
    """Dry run: how many partitions per stage a run would execute. Nothing runs or changes.

    With --through (a keep-current run) it also says which finished partitions the
    stages' refresh_last= would redo.

    [bold]Examples[/]

      backfill plan jobs/results.py
      backfill plan jobs/results.py --from 2021-01-01 --where tour=atp,wta
      backfill plan jobs/results.py --through yesterday
    """
    job, stages, selection = load_selection(
        job_path, stage, start, end, partition, where, start_from=start_from, skip=skip
    )
    job, stages = keep_current(job, stages, through, None)
    ledger = open_to_read(state)
    try:
        refresh = keepcurrent.to_refresh(job, ledger, stages) if selection is None else None
        rows = stage_counts(job, ledger, stages, selection)
        history = {s.name: ledger.request_stats(job.name, s.name) for s in stages}
        spent = _quota_use(ledger, job)
        # The rates the next run starts at: what the last one learned of each source
        # (a fleet's workers each learn a share: they start afresh).
        if not getattr(ledger, "fleet", False):
            learned = learned_states(ledger, job, job.resources, now=time.time())
            for name, found in learned.items():
                job.resources[name].resume(found)
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
    if through is not None:
        ends = sorted({s.partitions.end for s in stages if not s.reference})
        out.print(shown(f"keep current: through {', '.join(str(e) for e in ends)}"))
    if refresh is not None:
        for redo in refresh.stages:
            out.print(shown(f"refresh: {redo.describe()}"), soft_wrap=True)
        total_to_run += refresh.count
    scope = selection.describe() if selection else "everything"
    out.print(
        shown(
            f"selection: {scope} · {total_to_run:,} partition(s) to run · "
            "failed ones rerun with `backfill retry`"
        )
    )
    to_run_by_stage = {s.name: rows[s.name][0].pending + rows[s.name][1] for s in stages}
    for e in estimate(job, stages, to_run_by_stage, history, spent):
        if not e.partitions:
            out.print(shown(f"{e.resource}: nothing to run"))
            continue
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


@app.command(cls=Command)
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
    job, stages, selection = load_selection(
        job_path, stage, start, end, partition, where, start_from=start_from, skip=skip
    )
    masker = job.masker(state)
    ledger = open_to_read(state)
    try:
        report = build_report(job, ledger, stages, selection, runs=1)
        fresh = freshness(job, ledger, stages)
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
    if fresh:
        out.print(shown("freshness: " + " · ".join(f.describe() for f in fresh)), soft_wrap=True)
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
            # One of this host, its process gone, is reaped by the next run to start here.
            this_host = host()
            here = any(w.dead and w.host == this_host for w in report.workers)
            out.print(
                f"{report.dead_workers} dead worker(s): their partitions return to the pool "
                f"when their leases expire ({job.lease_seconds:g} s after the last heartbeat)"
                + (", or at once when a run starts on this host" if here else ""),
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


@app.command("coverage", cls=Command)
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
    through: ThroughOpt = None,
) -> None:
    """Which partitions are done, empty, thin, failed, stale, running or missing.

    A matrix of stages x days (or months, or years), worst state per cell; --gaps lists
    the ranges that are not done and why. Read-only: nothing changes.

    [bold]Examples[/]

      backfill coverage jobs/results.py
      backfill coverage jobs/results.py --gaps --where tour=atp
      backfill coverage jobs/results.py --format json > coverage.json
      backfill coverage jobs/results.py --format html -o coverage.html
      backfill coverage jobs/results.py --fail-on-gaps --through yesterday  (a check)
    """
    if by not in ("auto", "day", "month", "year"):
        raise fail(f"unknown --by {by!r}; use day, month, year or auto")
    if output_format not in ("table", "json", "html"):
        raise fail(f"unknown --format {output_format!r}; use table, json or html")
    job, stages, selection = load_selection(
        job_path, stage, start, end, partition, where, start_from=start_from, skip=skip
    )
    job, stages = keep_current(job, stages, through, None)
    ledger = open_to_read(state)
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
