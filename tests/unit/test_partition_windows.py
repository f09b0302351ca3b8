"""The calendar and the selection of partitions on their own: the window of a grain that
holds a day, the key of a window, and a selection built from command-line input."""

from __future__ import annotations

from datetime import date

import pytest

from backfill.errors import ConfigError
from backfill.partitions import Grain, Partition, daily
from backfill.partitions.selection import select
from backfill.partitions.windows import window_label, window_of


def test_the_window_of_a_day_follows_the_calendar() -> None:
    """ISO weeks start on Monday; a month ends on its last day, February included."""
    assert window_of(date(2024, 2, 14), Grain.WEEK) == (date(2024, 2, 12), date(2024, 2, 18))
    assert window_of(date(2024, 2, 14), Grain.MONTH) == (date(2024, 2, 1), date(2024, 2, 29))


def test_a_whole_window_is_named_by_its_grain_and_a_cut_one_by_its_days() -> None:
    """A whole ISO week reads 2024-W07; the same week cut to three days names them."""
    assert window_label(date(2024, 2, 12), date(2024, 2, 18), Grain.WEEK) == "2024-W07"
    assert window_label(date(2024, 2, 12), date(2024, 2, 14), Grain.WEEK) == (
        "2024-02-12..2024-02-14"
    )


def test_a_selection_from_command_line_input_matches_what_it_names() -> None:
    """--from and --where together keep the later days of one dimension value."""
    spec = daily("2024-01-01", "2024-01-10", tour=["atp", "wta"])
    chosen = select(spec, start="2024-01-09", where=["tour=wta"])
    assert [p.key for p in spec.partitions(chosen)] == [
        "2024-01-09/tour=wta",
        "2024-01-10/tour=wta",
    ]
    assert not chosen.matches(
        Partition(
            "2024-01-09/tour=atp", date(2024, 1, 9), date(2024, 1, 9), Grain.DAY, (("tour", "atp"),)
        )
    )


def test_a_selection_that_matches_nothing_is_refused() -> None:
    """A range outside the spec's is a ConfigError that says what the job covers."""
    with pytest.raises(ConfigError, match=r"this job covers 2024-01-01\.\.2024-01-10"):
        select(daily("2024-01-01", "2024-01-10"), start="2025-01-01")
