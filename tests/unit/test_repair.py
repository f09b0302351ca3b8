"""What to do again: the gaps `run --missing-only` fills and what `retry` re-runs, worked
out from a SQLite ledger in memory whose rows are made by hand."""

from __future__ import annotations

from test_report import NOW, pipeline, settle

from backfill.ledger import Status, open_ledger
from backfill.partitions import Selection
from backfill.repair import gaps_to_fill, to_retry
from backfill.report import RunSummary, stage_counts


def test_gaps_are_the_missing_and_failed_partitions_and_the_failed_go_back_to_pending() -> None:
    """Eight fetch days recorded (one failed), two never planned: the gaps are those three,
    tallied by state, and the failed day is pending again so a run takes it."""
    job = pipeline()
    ledger = open_ledger(":memory:")
    days = [p.key for p in job.stages["fetch"].partitions]
    ledger.plan(job.name, "fetch", job.stages["fetch"].partitions)
    statuses = {d: Status.DONE for d in days[:8]} | {days[3]: Status.FAILED}
    settle(ledger, job, "fetch", statuses, NOW)
    ledger.reset(job.name, ["fetch"], Selection(keys=frozenset(days[8:])))
    stage = job.stages["fetch"]
    redo = gaps_to_fill(job, ledger, [stage], None)
    assert redo is not None
    assert redo.selection.keys == frozenset({days[3], days[8], days[9]})
    assert redo.tally == {"failed": 1, "missing": 2}
    assert redo.describe() == "1 failed, 2 missing"
    assert stage_counts(job, ledger, [stage], None)["fetch"][0].failed == 1  # read only
    redo.apply(ledger)
    counts, missing = stage_counts(job, ledger, [stage], None)["fetch"]
    assert (counts.failed, counts.pending, missing) == (0, 1, 2)


def test_nothing_to_fill_when_every_partition_is_done() -> None:
    """A stage done everywhere has no gap."""
    job = pipeline()
    ledger = open_ledger(":memory:")
    days = [p.key for p in job.stages["fetch"].partitions]
    settle(ledger, job, "fetch", {d: Status.DONE for d in days}, NOW)
    assert gaps_to_fill(job, ledger, [job.stages["fetch"]], None) is None


def test_retry_takes_the_failed_and_the_later_partitions_that_wait_for_them() -> None:
    """One failed fetch day: retry re-runs it and the summary day blocked behind it, and
    returns the failed day to pending."""
    job = pipeline()
    ledger = open_ledger(":memory:")
    days = [p.key for p in job.stages["fetch"].partitions]
    settle(
        ledger, job, "fetch", {d: Status.FAILED if d == days[4] else Status.DONE for d in days}, NOW
    )
    settle(ledger, job, "summary", {d: Status.DONE for d in days[:3]}, NOW)
    stages = list(job.stages.values())
    redo = to_retry(job, ledger, stages, None, [Status.FAILED])
    assert redo is not None
    assert redo.selection.keys == frozenset({days[4]})
    assert redo.count == 1
    redo.apply(ledger)
    assert ledger.counts(job.name, ["fetch"], None)["fetch"].failed == 0
    assert to_retry(job, ledger, stages, None, [Status.FAILED]) is None


def test_a_run_summary_reads_any_stored_shape_without_failing() -> None:
    """A run's stored figures become typed values; garbage or missing figures are None."""
    good = RunSummary.of(
        {"elapsed": 12.5, "stats": {"run": {"partitions": 3, "records": 10, "p95": 0.25}}}
    )
    assert (good.partitions, good.records, good.p95, good.elapsed) == (3, 10, 0.25, 12.5)
    assert good.requests is None
    for junk in (None, [], {"stats": "x"}, {"stats": {"run": {"records": "ten"}}}):
        assert RunSummary.of(junk).records is None
    assert RunSummary.of({"stats": {"run": {"p50": float("nan"), "retries": True}}}) == RunSummary()
