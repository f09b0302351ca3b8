"""Static dimensions whose values carry date ranges of their own."""

from __future__ import annotations

import re
from datetime import date

import pytest

from backfill import ConfigError
from backfill.partitions import PartitionSpec, daily, yearly


def test_a_value_with_a_later_start_plans_no_partition_before_it() -> None:
    """The cross product skips windows before a value's own start."""
    spec = yearly("1966-01-01", "1975-12-31", tour={"atp": "1968-01-01", "wta": "1973-01-01"})
    keys = [p.key for p in spec]
    assert keys[:2] == ["1968/tour=atp", "1969/tour=atp"]
    assert "1972/tour=wta" not in keys
    assert "1973/tour=wta" in keys
    assert len(spec) == len(keys) == 8 + 3


def test_a_value_with_an_end_stops_there() -> None:
    """A (start, end) pair bounds both sides; None keeps the spec's own bound."""
    spec = yearly("2000-01-01", "2004-12-31", tour={"atp": None, "itf": (None, "2001-06-30")})
    keys = {p.key for p in spec}
    assert {"2000/tour=itf", "2001/tour=itf"} <= keys
    assert "2002/tour=itf" not in keys
    assert sum(1 for k in keys if k.endswith("atp")) == 5


def test_a_window_overlapping_a_range_is_planned_whole_under_its_key() -> None:
    """A value starting mid-year keeps that year's partition and its calendar key."""
    spec = yearly("1972-01-01", "1973-12-31", tour={"wta": "1972-06-15"})
    parts = list(spec)
    assert [p.key for p in parts] == ["1972/tour=wta", "1973/tour=wta"]
    assert parts[0].start == date(1972, 1, 1)


def test_get_refuses_a_key_outside_its_values_range() -> None:
    """A key the cross product would not plan is not one of the spec's partitions."""
    spec = yearly("1966-01-01", "1975-12-31", tour={"atp": "1968-01-01", "wta": "1973-01-01"})
    assert spec.get("1972/tour=wta") is None
    assert spec.get("1973/tour=wta") is not None
    assert spec.get("1968/tour=atp") is not None


def test_ranges_mix_with_plain_dimensions() -> None:
    """A ranged dimension crosses with a plain list as usual."""
    spec = daily("2020-01-01", "2020-01-03", tour={"atp": "2020-01-02"}, kind=["s", "d"])
    assert [p.key for p in spec] == [
        "2020-01-02/tour=atp/kind=s",
        "2020-01-02/tour=atp/kind=d",
        "2020-01-03/tour=atp/kind=s",
        "2020-01-03/tour=atp/kind=d",
    ]


def test_the_ranges_are_part_of_the_plan_fingerprint() -> None:
    """A changed range changes the spec's repr, so a planned ledger plans again."""
    a = yearly("1966-01-01", "1975-12-31", tour={"atp": "1968-01-01"})
    b = yearly("1966-01-01", "1975-12-31", tour={"atp": "1969-01-01"})
    assert repr(a) != repr(b)
    assert "1968-01-01..1975-12-31" in repr(a)
    assert repr(yearly("2000-01-01", "2001-12-31", tour=["atp"])).endswith("tour=['atp'])")


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ("1968-13-01", "not a valid date"),
        (("1970-01-01", "1969-01-01"), "after its end"),
        (("1970-01-01", "1971-01-01", "x"), "start date or a (start, end) pair"),
    ],
)
def test_a_bad_range_is_one_sentence(bounds: object, message: str) -> None:
    """A malformed range names the dimension value and what to write."""
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        PartitionSpec("year", "1966-01-01", "1975-12-31", {"tour": {"atp": bounds}})  # type: ignore[dict-item]
    assert "tour=atp" in str(info.value)
