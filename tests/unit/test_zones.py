"""Time zones of partitions: DST-correct days, hourly keys, today/yesterday in a zone,
and refresh windows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from backfill import ConfigError, Job, daily, hourly, table
from backfill.partitions.refresh import RefreshWindow, parse_refresh
from backfill.partitions.zones import NOW_ENV, day_bounds, hour_key, today

H = timedelta(hours=1)


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        ("Europe/London", date(2024, 3, 31), 23),
        ("Europe/London", date(2024, 10, 27), 25),
        ("Europe/London", date(2024, 6, 1), 24),
        ("America/New_York", date(2024, 3, 10), 23),
        ("America/New_York", date(2024, 11, 3), 25),
        ("America/New_York", date(2024, 7, 4), 24),
    ],
)
def test_a_day_lasts_23_24_or_25_hours_in_its_zone(tz: str, day: date, hours: int) -> None:
    """A daily partition's window runs from midnight to midnight in its zone."""
    (part,) = daily(day, day, tz=tz)
    assert part.ends - part.begins == hours * H
    assert part.begins == day_bounds(day, tz)[0]
    assert len(hourly(day, day, tz=tz)) == hours
    assert len(list(hourly(day, day, tz=tz))) == hours


def test_hourly_keys_in_london_spring_name_utc_hours_without_a_gap() -> None:
    """On 2024-03-31 London skips 01:00-02:00 local: 23 keys, consecutive UTC hours."""
    keys = [p.key for p in hourly("2024-03-31", "2024-03-31", tz="Europe/London")]
    assert keys[0] == "2024-03-31T00"
    assert keys[-1] == "2024-03-31T22"
    assert len(set(keys)) == 23
    assert "2024-03-31T02" in keys


def test_hourly_keys_in_london_autumn_never_repeat() -> None:
    """On 2024-10-27 London lives 01:00-02:00 local twice: 25 distinct keys."""
    parts = list(hourly("2024-10-27", "2024-10-27", tz="Europe/London"))
    keys = [p.key for p in parts]
    assert keys[0] == "2024-10-26T23"  # midnight BST is 23:00 UTC the day before
    assert keys[-1] == "2024-10-27T23"
    assert len(set(keys)) == 25
    assert all(p.start == date(2024, 10, 27) for p in parts)
    assert [p.ends - p.begins for p in parts] == [H] * 25


def test_hourly_keys_in_new_york_follow_its_clock_changes() -> None:
    """New York's spring day has 23 hours from 05:00 UTC, its autumn day 25 from 04:00."""
    spring = [p.key for p in hourly("2024-03-10", "2024-03-10", tz="America/New_York")]
    assert (spring[0], spring[-1], len(spring)) == ("2024-03-10T05", "2024-03-11T03", 23)
    autumn = [p.key for p in hourly("2024-11-03", "2024-11-03", tz="America/New_York")]
    assert (autumn[0], autumn[-1], len(autumn)) == ("2024-11-03T04", "2024-11-04T04", 25)


def test_hourly_keys_are_the_same_whatever_the_days_around_them() -> None:
    """A key names one UTC hour for ever: a spec over a week holds the day's keys."""
    week = {p.key for p in hourly("2024-03-28", "2024-04-03", tz="Europe/London")}
    day = {p.key for p in hourly("2024-03-31", "2024-03-31", tz="Europe/London")}
    assert day <= week
    assert len(week) == 7 * 24 - 1


def test_an_hourly_key_is_found_back_with_its_local_day() -> None:
    """``get`` reads a key back, with the day it falls on in the zone; outside is None."""
    spec = hourly("2024-11-03", "2024-11-03", tz="America/New_York")
    part = spec.get("2024-11-04T02")
    assert part is not None
    assert part.start == date(2024, 11, 3)
    assert part.begins == datetime(2024, 11, 4, 2, tzinfo=UTC)
    assert spec.get("2024-11-03T03") is None  # 23:00 on the 2nd in New York
    assert spec.get("2024-11-03T24") is None


def test_hourly_newest_first_walks_hours_backwards() -> None:
    """order='newest' gives the last hour first."""
    keys = [p.key for p in hourly("2024-03-31", "2024-04-01", tz="Europe/London", order="newest")]
    assert keys[0] == "2024-04-01T22"
    assert keys == sorted(keys, reverse=True)


def test_yesterday_follows_the_zone_and_the_injected_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 00:30 in London on 2 April (23:30 UTC on 1 April) yesterday is 1 April there,
    31 March in UTC."""
    monkeypatch.setenv(NOW_ENV, "2024-04-02T00:30:00+01:00")
    assert today("Europe/London") == date(2024, 4, 2)
    assert today() == date(2024, 4, 1)
    assert daily("2024-03-01", "yesterday", tz="Europe/London").end == date(2024, 4, 1)
    assert daily("2024-03-01", "yesterday").end == date(2024, 3, 31)


def test_a_job_tz_applies_to_specs_that_name_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Job(tz=...) reads the spec's yesterday in its zone; a spec's own tz wins."""
    monkeypatch.setenv(NOW_ENV, "2024-04-02T00:30:00+01:00")
    job = Job("j", partitions=daily("2024-03-01", "yesterday"), tz="Europe/London")
    assert job.partitions is not None
    assert job.partitions.end == date(2024, 4, 1)
    own = daily("2024-03-01", "yesterday", tz="UTC")
    assert Job("k", partitions=own, tz="Europe/London").partitions is own


def test_through_moves_the_open_end_in_the_spec_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """``through('yesterday')`` keeps start, dims and zone and moves the end."""
    spec = daily("2024-03-01", "2024-03-10", tz="America/New_York", tour=["atp"])
    monkeypatch.setenv(NOW_ENV, "2024-04-02T03:00:00+00:00")  # 1 April 23:00 in New York
    moved = spec.through("yesterday")
    assert (moved.start, moved.end, moved.tz, moved.dims) == (
        date(2024, 3, 1),
        date(2024, 3, 31),
        "America/New_York",
        {"tour": ("atp",)},
    )
    with pytest.raises(ConfigError, match="before the partitions' start"):
        spec.through("2024-02-01")


def test_bad_zone_and_bad_now_are_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown zone or an injected now without offset is a ConfigError saying what to do."""
    with pytest.raises(ConfigError, match="IANA name"):
        daily("2024-01-01", "2024-01-02", tz="Europe/Atlantis")
    monkeypatch.setenv(NOW_ENV, "2024-04-02T06:00")
    with pytest.raises(ConfigError, match="with an offset"):
        today()
    with pytest.raises(ConfigError, match="whole UTC hour"):
        hourly("2024-01-01", "2024-01-02", tz="Asia/Kolkata")


def test_hour_key_names_the_utc_hour() -> None:
    """A moment's key is its UTC hour, whatever its offset."""
    bst = datetime(2024, 6, 1, 9, 59, tzinfo=UTC) + timedelta(0)
    assert hour_key(bst) == "2024-06-01T09"


def test_refresh_windows_parse_days_and_durations() -> None:
    """refresh_last takes days or a duration; anything else is one sentence."""
    assert parse_refresh(3, what="s") == RefreshWindow(days=3)
    assert parse_refresh("2d", what="s") == RefreshWindow(days=2)
    assert parse_refresh("36h", what="s") == RefreshWindow(duration=timedelta(hours=36))
    assert parse_refresh(timedelta(minutes=90), what="s") == RefreshWindow(
        duration=timedelta(minutes=90)
    )
    for bad in (0, "soon", "-3h", True):
        with pytest.raises(ConfigError, match="refresh_last"):
            parse_refresh(bad, what="s")  # type: ignore[arg-type]


def test_refresh_window_of_days_counts_calendar_days_across_dst() -> None:
    """Two days back from 1 April in London hold 31 March (23 hours) and 1 April only."""
    spec = daily("2024-03-28", "2024-04-01", tz="Europe/London")
    parts = {p.key: p for p in spec}
    newest = parts["2024-04-01"]
    window = RefreshWindow(days=2)
    assert [k for k, p in parts.items() if window.holds(p, newest)] == [
        "2024-03-31",
        "2024-04-01",
    ]
    hours = RefreshWindow(duration=timedelta(hours=30))
    assert [k for k, p in parts.items() if hours.holds(p, newest)] == [
        "2024-03-31",
        "2024-04-01",
    ]


def test_hourly_stage_refuses_replacing_by_a_date_column(tmp_path: Path) -> None:
    """Hourly partitions replaced by a date column would lose the day's other hours:
    refused in one sentence; replacing by the partition key is fine."""
    job = Job("h", partitions=hourly("2024-01-01", "2024-01-01"))
    url = f"sqlite:///{tmp_path / 'out.db'}"
    by_day = table(url, "rows", mode="replace-partition", partition_column="day")
    with pytest.raises(ConfigError, match="whole day"):
        job.stage(name="by_day", sink=by_day)(lambda ctx, p: None)
    job.stage(name="keyed", sink=table(url, "keyed", mode="replace-partition"))(lambda ctx, p: None)
    assert "keyed" in job.stages
