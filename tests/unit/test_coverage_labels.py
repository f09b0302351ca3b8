"""Coverage on windows cut by the range's ends: gap labels that read cleanly, and the
thin rule measured per day of window."""

from __future__ import annotations

from typing import Any

from backfill import Context, Job, Partition, daily, weekly, yearly
from backfill.coverage import Gap, State, collect
from backfill.ledger import Ledger, open_ledger
from backfill.partitions import Selection, parse_date
from backfill.testing import run_job


def gaps_of(job: Job, ledger: Ledger, selection: Selection | None = None) -> list[str]:
    report = collect(job, ledger, list(job.stages.values()), selection)
    return [g.describe() for g in report.gaps()]


def test_a_range_of_years_ending_in_a_cut_year_names_its_days_once() -> None:
    """Eight yearly partitions, the last cut to a quarter: one range from the first day
    to the last, never a range glued to another range."""
    job = Job("prices", partitions=yearly("2003-01-01", "2010-03-31", sym=["AAPL"]))

    @job.stage
    def yearly_avg(ctx: Context, partition: Partition) -> None:
        return None

    assert gaps_of(job, open_ledger(":memory:")) == [
        "yearly_avg AAPL 2003-01-01..2010-03-31 missing: never run (8)"
    ]


def test_a_single_cut_year_is_its_days() -> None:
    """The one partition of a year cut to Q1 reads as its days, after its dimension."""
    job = Job("prices", partitions=yearly("2003-01-01", "2010-03-31", sym=["AAPL"]))

    @job.stage
    def yearly_avg(ctx: Context, partition: Partition) -> None:
        return None

    spec = job.stages["yearly_avg"].partitions
    selection = spec.selection(start="2010-01-01")
    assert gaps_of(job, open_ledger(":memory:"), selection) == [
        "yearly_avg AAPL 2010-01-01..2010-03-31 missing: never run (1)"
    ]


def test_a_range_of_weeks_ending_in_a_cut_week_reads_as_dates() -> None:
    """ISO weeks from W12 to a last week cut to four days: one clean date range."""
    job = Job("climate", partitions=weekly("2013-03-18", "2015-12-31"))

    @job.stage
    def weather(ctx: Context, partition: Partition) -> None:
        return None

    assert gaps_of(job, open_ledger(":memory:")) == [
        "weather 2013-03-18..2015-12-31 missing: never run (146)"
    ]


def test_a_range_of_whole_windows_keeps_their_labels() -> None:
    """Uncut windows keep their calendar labels: weeks as ISO weeks."""
    job = Job("climate", partitions=weekly("2013-03-18", "2013-04-07"))

    @job.stage
    def weather(ctx: Context, partition: Partition) -> None:
        return None

    assert gaps_of(job, open_ledger(":memory:")) == [
        "weather 2013-W12..2013-W14 missing: never run (3)"
    ]


def test_gap_json_carries_the_first_and_last_days() -> None:
    """A gap's JSON form names its first and last partitions and its first and last days."""
    gap = Gap(
        "weather",
        (),
        "2013-W12",
        "2015-12-28..2015-12-31",
        State.MISSING,
        "never run",
        146,
        parse_date("2013-03-18"),
        parse_date("2015-12-31"),
    )
    assert gap.as_dict()["start"] == "2013-03-18"
    assert gap.as_dict()["end"] == "2015-12-31"
    assert gap.as_dict()["last"] == "2015-12-28..2015-12-31"


def per_day_job(first: str, last: str, records_per_day: dict[str, int] | None = None) -> Job:
    """A weekly job writing 7 records per day of its window (or as many as given)."""
    job = Job("weather", partitions=weekly(first, last))
    counts = records_per_day or {}

    @job.stage
    def readings(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        n = counts.get(partition.key, 7 * partition.days)
        return [{"n": i} for i in range(n)]

    return job


def test_a_first_iso_week_cut_to_one_day_is_not_thin() -> None:
    """A week cut to its Sunday holds a seventh of a full week's records: that is what
    its one day should hold, so it is done, not thin."""
    job = per_day_job("2013-01-06", "2013-03-31")
    ledger = open_ledger(":memory:")
    run_job(job, ledger)
    report = collect(job, ledger, list(job.stages.values()))
    states = {p.key: p.state for p in report.partitions["readings"]}
    assert states["2013-01-06..2013-01-06"] is State.DONE
    assert set(states.values()) == {State.DONE}
    assert report.gaps() == []


def test_a_cut_window_with_too_few_records_for_its_days_is_thin() -> None:
    """A one-day window with 1 record where its neighbours hold 10 a day is thin, and
    the reason names what its days should hold."""
    first = "2013-01-06..2013-01-06"
    job = per_day_job("2013-01-06", "2013-03-31", {first: 1})
    ledger = open_ledger(":memory:")
    run_job(job, ledger)
    report = collect(job, ledger, list(job.stages.values()))
    (gap,) = report.gaps()
    assert gap.describe() == (
        "readings 2013-01-06..2013-01-06 thin: 1 record in 1 day, neighbours have ~7 "
        "for as many days (1)"
    )


def test_grouped_thin_days_keep_their_numbers() -> None:
    """Three consecutive thin days with different counts form one gap whose reason
    still gives the records and what the neighbours have."""
    job = Job("results", partitions=daily("2013-01-01", "2013-01-31"))
    few = {"2013-01-10": 2, "2013-01-11": 3, "2013-01-12": 5}

    @job.stage
    def matches(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"n": i} for i in range(few.get(partition.key, 40))]

    ledger = open_ledger(":memory:")
    run_job(job, ledger)
    (gap,) = collect(job, ledger, list(job.stages.values())).gaps()
    assert gap.describe() == (
        "matches 2013-01-10..2013-01-12 thin: 2–5 records, neighbours have ~40 (3)"
    )


def test_a_single_thin_day_reads_as_before() -> None:
    """One thin day among full ones: its count and the neighbours' median."""
    job = Job("results", partitions=daily("2013-01-01", "2013-01-31"))

    @job.stage
    def matches(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"n": i} for i in range(2 if partition.key == "2013-01-10" else 40)]

    ledger = open_ledger(":memory:")
    run_job(job, ledger)
    (gap,) = collect(job, ledger, list(job.stages.values())).gaps()
    assert gap.describe() == "matches 2013-01-10 thin: 2 records, neighbours have ~40 (1)"
