"""`backfill runs`: past runs with their figures."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from backfill.cli._common import (
    Command,
    JobArg,
    StateOpt,
    app,
    fail,
    handle_errors,
    open_to_read,
    out,
    run_status,
    shown,
    when,
)
from backfill.job import load_job
from backfill.ledger import (
    DEFAULT_STATE_URL,
)
from backfill.progress import format_duration
from backfill.report import run_reports
from backfill.runstats import stage_stats


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.2f}s" if value >= 0.1 else f"{value * 1000:.1f}ms"


def _number(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


@app.command(cls=Command)
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
    ledger = open_to_read(state)
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
            when(r.started_at),
            shown(r.command),
            shown(r.host),
            run_status(status_of[r.id]),
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
