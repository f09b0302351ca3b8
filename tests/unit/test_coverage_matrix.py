"""The coverage model and matrix on their own: gaps from a hand-made report, buckets and
the worst state of a cell, without a ledger."""

from __future__ import annotations

from datetime import date, timedelta

from backfill import Context, Job, Partition, daily
from backfill.coverage import Coverage, PartitionState, State, column_labels, pick_bucket, rows
from backfill.coverage.model import window_label


def report(days: int, states: dict[int, State]) -> Coverage:
    """A report of one daily stage from 2020-01-01: day i in ``states[i]``, else done."""
    job = Job("j", partitions=daily("2020-01-01", date(2020, 1, 1) + timedelta(days=days - 1)))

    @job.stage
    def fetch(ctx: Context, partition: Partition) -> None:
        return None

    coverage = Coverage("j", list(job.stages.values()))
    coverage.partitions["fetch"] = [
        PartitionState(
            "fetch",
            p.key,
            p.start,
            p.end,
            p.dims,
            states.get(i, State.DONE),
            "never run" if states.get(i) is State.MISSING else "",
            "never" if states.get(i) is State.MISSING else "",
        )
        for i, p in enumerate(job.stages["fetch"].partitions)
    ]
    return coverage


def test_consecutive_partitions_in_one_state_make_one_gap() -> None:
    """Three missing days in a row are one gap; a done day between starts another."""
    coverage = report(10, {2: State.MISSING, 3: State.MISSING, 4: State.MISSING, 6: State.MISSING})
    assert [g.describe() for g in coverage.gaps()] == [
        "fetch 2020-01-03..2020-01-05 missing: never run (3)",
        "fetch 2020-01-07 missing: never run (1)",
    ]
    assert coverage.gap_keys() == {
        "fetch": {"2020-01-03", "2020-01-04", "2020-01-05", "2020-01-07"}
    }


def test_a_window_label_drops_the_dimension_values() -> None:
    """The label of a partition is its window, whatever its dimensions."""
    p = PartitionState(
        "s", "2013-01/tour=atp", date(2013, 1, 1), date(2013, 1, 31), (("tour", "atp"),), State.DONE
    )
    assert window_label(p) == "2013-01"


def test_the_bucket_follows_the_span() -> None:
    """Days up to about a year, months beyond."""
    assert pick_bucket(report(300, {})) == "day"
    assert pick_bucket(report(800, {})) == "month"


def test_a_cell_shows_the_worst_state_of_its_partitions() -> None:
    """By month, January holds a failed day among done ones: its cell is failed; February,
    all done, is done; months without partitions are empty cells."""
    coverage = report(40, {5: State.FAILED})
    [(name, period, cells)] = rows(coverage, "month")
    assert (name, period) == ("fetch", "2020")
    assert cells[:3] == [State.FAILED, State.DONE, None]
    assert column_labels(coverage, "month")[0] == "J"
