"""Partition specs: keys, order, lookup, validation, selections, and calendar properties."""

from __future__ import annotations

import itertools
import math
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.errors import ConfigError
from backfill.partitions import (
    Grain,
    Order,
    Partition,
    PartitionSpec,
    daily,
    monthly,
    parse_date,
    weekly,
    yearly,
)


def keys(spec: PartitionSpec, **kwargs: object) -> list[str]:
    return [p.key for p in spec.partitions(**kwargs)]  # type: ignore[arg-type]


def config_error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    """The message of a ConfigError, checked to be a single line."""
    message = str(excinfo.value)
    assert message
    assert "\n" not in message
    return message


# --- keys -------------------------------------------------------------------------------


def test_daily_keys_are_iso_dates():
    """A daily spec yields one `YYYY-MM-DD` key per day, inclusive of both ends."""
    assert keys(daily("2013-01-01", "2013-01-03")) == ["2013-01-01", "2013-01-02", "2013-01-03"]


def test_single_day_range_has_one_partition():
    """A range whose start equals its end is one partition, not an error."""
    spec = daily("2013-01-01", "2013-01-01")
    assert keys(spec) == ["2013-01-01"]
    assert len(spec) == 1


def test_weekly_keys_are_iso_weeks_and_clipped_edges_name_their_days():
    """Whole ISO weeks read `2013-W02`; weeks cut by the range read `start..end`."""
    assert keys(weekly("2013-01-01", "2013-01-31")) == [
        "2013-01-01..2013-01-06",
        "2013-W02",
        "2013-W03",
        "2013-W04",
        "2013-01-28..2013-01-31",
    ]


def test_weekly_key_uses_iso_year_across_new_year():
    """A week starting Monday 2012-12-31 is `2013-W01`, and 2015 has a `2015-W53`."""
    assert keys(weekly("2012-12-31", "2013-01-13")) == ["2013-W01", "2013-W02"]
    assert keys(weekly("2015-12-28", "2016-01-03")) == ["2015-W53"]


def test_monthly_keys_and_clipped_months():
    """Whole months read `2013-02`; the partial first and last months name their days."""
    assert keys(monthly("2013-01-15", "2013-03-10")) == [
        "2013-01-15..2013-01-31",
        "2013-02",
        "2013-03-01..2013-03-10",
    ]


def test_monthly_whole_months():
    """A range of whole months yields `YYYY-MM` keys, including leap February."""
    spec = monthly("2012-01-01", "2012-03-31")
    assert keys(spec) == ["2012-01", "2012-02", "2012-03"]
    feb = spec.get("2012-02")
    assert feb is not None
    assert (feb.start, feb.end, feb.days) == (date(2012, 2, 1), date(2012, 2, 29), 29)


def test_yearly_keys_and_clipped_years():
    """Whole years read `2013`; a partial year names its days."""
    assert keys(yearly("2012-06-01", "2014-12-31")) == ["2012-06-01..2012-12-31", "2013", "2014"]


def test_partition_fields_describe_the_window():
    """A partition carries its inclusive window, grain, `date` (first day) and day count."""
    (p,) = list(weekly("2013-01-07", "2013-01-13"))
    assert p == Partition("2013-W02", date(2013, 1, 7), date(2013, 1, 13), Grain.WEEK)
    assert p.date == date(2013, 1, 7)
    assert p.days == 7


def test_dims_are_crossed_in_declaration_order():
    """Dimensions follow the window in declaration order, values varying fastest last."""
    spec = daily("2013-01-01", "2013-01-02", tour=["atp", "wta"], region=["gb", "us"])
    assert keys(spec)[:5] == [
        "2013-01-01/tour=atp/region=gb",
        "2013-01-01/tour=atp/region=us",
        "2013-01-01/tour=wta/region=gb",
        "2013-01-01/tour=wta/region=us",
        "2013-01-02/tour=atp/region=gb",
    ]
    assert len(spec) == 8


def test_partition_dimension_accessors():
    """`p[dim]`, `p.get(dim)` and `p.dim_map` expose dimension values; unknown raise KeyError."""
    p = next(iter(daily("2013-01-01", "2013-01-01", tour=["atp"], region=["gb"])))
    assert p["tour"] == "atp"
    assert p.get("region") == "gb"
    assert p.get("nope", "x") == "x"
    assert p.dim_map == {"tour": "atp", "region": "gb"}
    with pytest.raises(KeyError):
        p["nope"]


def test_single_string_dimension_value_is_one_value():
    """A dimension given as a bare string is one value, not a sequence of characters."""
    spec = daily("2013-01-01", "2013-01-01", tour="atp")
    assert keys(spec) == ["2013-01-01/tour=atp"]


@pytest.mark.parametrize(
    "spec",
    [
        daily("2013-01-01", "2013-03-31", tour=["atp", "wta"]),
        weekly("2013-01-02", "2013-06-30", tour=["atp", "wta", "itf"]),
        monthly("2012-11-15", "2014-02-03"),
        yearly("2001-02-03", "2013-04-05", a=["1"], b=["x", "y"]),
    ],
    ids=["day", "week", "month", "year"],
)
def test_len_equals_the_number_of_partitions_iterated(spec: PartitionSpec):
    """`len(spec)` is exactly the number of partitions the spec yields."""
    assert len(spec) == sum(1 for _ in spec)


@pytest.mark.parametrize("factory", [daily, weekly, monthly, yearly])
def test_newest_first_is_the_reverse_of_oldest_first(factory):
    """Without dimensions, newest-first order is exactly oldest-first reversed."""
    oldest = keys(factory("2012-11-15", "2014-02-03"))
    newest = keys(factory("2012-11-15", "2014-02-03", order="newest"))
    assert newest == oldest[::-1]
    assert len(newest) > 1


def test_newest_first_reverses_windows_and_keeps_dims_in_declaration_order():
    """With dimensions, newest-first walks windows backwards; within one, dims keep order."""
    spec = daily("2013-01-01", "2013-01-02", tour=["atp", "wta"])
    assert keys(spec, order=Order.NEWEST) == [
        "2013-01-02/tour=atp",
        "2013-01-02/tour=wta",
        "2013-01-01/tour=atp",
        "2013-01-01/tour=wta",
    ]
    assert list(spec.windows(Order.NEWEST)) == list(spec.windows(Order.OLDEST))[::-1]


def test_spec_order_option_sets_the_default_iteration_order():
    """`order="newest"` on the spec makes plain iteration start from the end."""
    spec = daily("2013-01-01", "2013-01-03", order="newest")
    assert spec.order is Order.NEWEST
    assert keys(spec) == ["2013-01-03", "2013-01-02", "2013-01-01"]
    assert keys(spec, order=Order.OLDEST) == ["2013-01-01", "2013-01-02", "2013-01-03"]


# --- get --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        daily("2013-01-01", "2013-02-10", tour=["atp", "wta"]),
        weekly("2013-01-02", "2013-06-30", tour=["atp"], region=["gb", "us"]),
        monthly("2012-11-15", "2014-02-03"),
        yearly("2001-02-03", "2013-04-05"),
    ],
    ids=["day", "week", "month", "year"],
)
def test_get_round_trips_every_key(spec: PartitionSpec):
    """`spec.get(p.key)` returns a partition equal to `p` for every partition."""
    for p in spec:
        assert spec.get(p.key) == p


@pytest.mark.parametrize(
    "key",
    [
        "2012-12-31/tour=atp",  # before the range
        "2013-02-01/tour=atp",  # after the range
        "2013-01-05/tour=itf",  # unknown value
        "2013-01-05/surface=clay",  # unknown dimension
        "2013-01-05",  # missing dimension
        "2013-01-05/tour=atp/tour=wta",  # dimension twice
        "2013-01-05/tour",  # no `=`
        "2013-01-05/",  # empty dimension part
        "2013-1-5/tour=atp",  # not zero-padded
        "20130105/tour=atp",  # basic ISO format
        "2013-01-32/tour=atp",  # impossible date
        "2013-01/tour=atp",  # a month key in a daily spec
        "2013-01-05..2013-01-05/tour=atp",  # a whole day written as a range
        "2013-01-05..2013-01-06/tour=atp",  # a made-up range
        "",
        "yesterday/tour=atp",
    ],
)
def test_get_rejects_foreign_and_malformed_keys_in_daily_spec(key: str):
    """Keys the daily spec would never produce resolve to None rather than raising."""
    spec = daily("2013-01-01", "2013-01-31", tour=["atp", "wta"])
    assert spec.get(key) is None


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        (weekly("2013-01-01", "2013-01-31"), "2013-W01"),  # clipped: must use the range form
        (weekly("2013-01-01", "2013-01-31"), "2013-W1"),
        (weekly("2013-01-01", "2013-01-31"), "2013-W54"),
        (weekly("2013-01-01", "2013-12-31"), "2013-W53"),  # 2013 has 52 ISO weeks
        (weekly("2013-01-01", "2013-01-31"), "2013-01-07..2013-01-13"),  # must be `2013-W02`
        (weekly("2013-01-01", "2013-01-31"), "2013-01-02..2013-01-06"),  # wrong clip
        (monthly("2013-01-15", "2013-03-10"), "2013-01"),  # clipped month
        (monthly("2013-01-15", "2013-03-10"), "2013-13"),
        (monthly("2013-01-15", "2013-03-10"), "2013-2"),
        (monthly("2013-01-15", "2013-03-10"), "2013-02-01..2013-02-28"),  # must be `2013-02`
        (yearly("2012-06-01", "2014-12-31"), "2012"),  # clipped year
        (yearly("2012-06-01", "2014-12-31"), "2015"),
        (yearly("2012-06-01", "2014-12-31"), "13"),
        (yearly("2012-06-01", "2014-12-31"), "2013-01-01..2013-12-31"),  # must be `2013`
    ],
)
def test_get_rejects_malformed_keys_in_coarser_grains(spec: PartitionSpec, key: str):
    """Week, month and year specs accept only their own canonical key for each window."""
    assert spec.get(key) is None


# --- validation -------------------------------------------------------------------------


def test_start_after_end_is_a_config_error():
    """A range that ends before it starts is refused, saying to move the start."""
    with pytest.raises(ConfigError) as excinfo:
        daily("2013-02-01", "2013-01-01")
    message = config_error(excinfo)
    assert "2013-02-01" in message
    assert "2013-01-01" in message
    assert "on or before" in message


def test_unknown_grain_is_a_config_error():
    """An unknown grain is refused with the list of valid grains."""
    with pytest.raises(ConfigError) as excinfo:
        PartitionSpec("hourly", "2013-01-01", "2013-01-02")
    message = config_error(excinfo)
    assert "'hourly'" in message
    for grain in ("day", "week", "month", "year"):
        assert grain in message


def test_grain_and_order_are_case_insensitive():
    """Grain and order names are accepted in any case."""
    spec = PartitionSpec("MONTH", "2013-01-01", "2013-02-28", order="Newest")
    assert spec.grain is Grain.MONTH
    assert spec.order is Order.NEWEST


def test_unknown_order_is_a_config_error():
    """An unknown order is refused, naming the valid ones."""
    with pytest.raises(ConfigError) as excinfo:
        daily("2013-01-01", "2013-01-02", order="random")
    message = config_error(excinfo)
    assert "oldest" in message
    assert "newest" in message


@pytest.mark.parametrize("bad", ["2013-13-01", "2013/01/01", "yesterdayish", "2013-02-30", ""])
def test_malformed_dates_are_config_errors(bad: str):
    """A date that is not a real `YYYY-MM-DD` day is refused with the expected format."""
    with pytest.raises(ConfigError) as excinfo:
        daily(bad, "2014-01-01")
    message = config_error(excinfo)
    assert "start" in message
    assert "YYYY-MM-DD" in message


def test_malformed_end_date_names_the_end():
    """The error for a bad end date says it is the end that is wrong."""
    with pytest.raises(ConfigError) as excinfo:
        daily("2013-01-01", "2013/01/31")
    assert config_error(excinfo).startswith("end ")


def test_parse_date_accepts_dates_and_relative_words():
    """`parse_date` accepts ISO strings (trimmed), date objects, `today` and `yesterday`."""
    assert parse_date(" 2013-01-05 ") == date(2013, 1, 5)
    assert parse_date(date(2013, 1, 5)) == date(2013, 1, 5)
    assert parse_date("yesterday") == parse_date("today") - timedelta(days=1)


def test_empty_dimension_values_are_a_config_error():
    """A dimension with no values is refused, asking for at least one."""
    with pytest.raises(ConfigError) as excinfo:
        daily("2013-01-01", "2013-01-02", tour=[])
    message = config_error(excinfo)
    assert "'tour'" in message
    assert "at least one" in message


@pytest.mark.parametrize("name", ["", "to ur", "a/b", "a=b", "ünïcode"])
def test_bad_dimension_names_are_config_errors(name: str):
    """Dimension names that would break keys (`/`, `=`, spaces, empty) are refused."""
    with pytest.raises(ConfigError) as excinfo:
        PartitionSpec("day", "2013-01-01", "2013-01-02", {name: ["x"]})
    assert "letters, digits" in config_error(excinfo)


@pytest.mark.parametrize("value", ["", "a/b", "a=b", "a b"])
def test_bad_dimension_values_are_config_errors(value: str):
    """Dimension values that would break keys are refused, naming the dimension."""
    with pytest.raises(ConfigError) as excinfo:
        daily("2013-01-01", "2013-01-02", tour=["atp", value])
    assert "'tour'" in config_error(excinfo)


def test_duplicate_dimension_values_are_a_config_error():
    """Listing a dimension value twice is refused (it would duplicate keys)."""
    with pytest.raises(ConfigError) as excinfo:
        daily("2013-01-01", "2013-01-02", tour=["atp", "atp"])
    assert "twice" in config_error(excinfo)


# --- selection --------------------------------------------------------------------------

TOURS = daily("2013-01-01", "2013-01-10", tour=["atp", "wta", "itf"])


def test_empty_selection_is_everything():
    """A selection with no criteria selects every partition."""
    selection = TOURS.selection()
    assert selection.is_everything
    assert selection.describe() == "everything"
    assert len(list(TOURS.partitions(selection))) == len(TOURS)


def test_selection_from_to_keeps_days_in_range():
    """`--from/--to` select the daily partitions inside the inclusive range."""
    selection = TOURS.selection(start="2013-01-03", end="2013-01-04", where=["tour=atp"])
    assert keys(TOURS, selection=selection) == ["2013-01-03/tour=atp", "2013-01-04/tour=atp"]


def test_selection_from_to_selects_windows_that_overlap():
    """A window is selected when it overlaps `--from/--to`, even partly."""
    spec = monthly("2013-01-01", "2013-06-30")
    selection = spec.selection(start="2013-02-15", end="2013-03-01")
    assert keys(spec, selection=selection) == ["2013-02", "2013-03"]


def test_selection_open_ended_range():
    """Only `--from` given selects from that day to the end of the spec."""
    spec = daily("2013-01-01", "2013-01-10")
    selection = spec.selection(start="2013-01-09")
    assert keys(spec, selection=selection) == ["2013-01-09", "2013-01-10"]
    assert not selection.is_everything


def test_selection_from_after_to_is_a_config_error():
    """`--from` after `--to` is refused."""
    with pytest.raises(ConfigError) as excinfo:
        TOURS.selection(start="2013-01-05", end="2013-01-04")
    assert "--from" in config_error(excinfo)


def test_selection_bad_from_date_names_the_option():
    """A malformed `--from` date is refused, naming `--from`."""
    with pytest.raises(ConfigError) as excinfo:
        TOURS.selection(start="2013/01/05")
    assert config_error(excinfo).startswith("--from ")


def test_selection_by_keys():
    """Given keys select exactly those partitions."""
    selection = TOURS.selection(keys=["2013-01-02/tour=wta", "2013-01-05/tour=itf"])
    assert keys(TOURS, selection=selection) == ["2013-01-02/tour=wta", "2013-01-05/tour=itf"]


def test_selection_unknown_key_is_a_config_error_with_an_example():
    """An unknown key is refused, showing what a key of this job looks like."""
    with pytest.raises(ConfigError) as excinfo:
        TOURS.selection(keys=["2013-01-02"])
    message = config_error(excinfo)
    assert "'2013-01-02'" in message
    assert "2013-01-01/tour=atp" in message


def test_selection_where_one_value():
    """`--where tour=atp` keeps only that value."""
    selection = TOURS.selection(where=["tour=atp"])
    selected = list(TOURS.partitions(selection))
    assert len(selected) == 10
    assert {p["tour"] for p in selected} == {"atp"}


@pytest.mark.parametrize(
    "where", [["tour=atp,wta"], ["tour=atp", "tour=wta"], [" tour = atp, wta"]]
)
def test_selection_where_several_values(where: list[str]):
    """Comma lists and repeated `--where` both add values to the dimension."""
    selection = TOURS.selection(where=where)
    assert selection.dims == {"tour": frozenset({"atp", "wta"})}
    assert {p["tour"] for p in TOURS.partitions(selection)} == {"atp", "wta"}


def test_selection_where_unknown_dimension_is_a_config_error():
    """An unknown dimension in `--where` is refused, listing the job's dimensions."""
    with pytest.raises(ConfigError) as excinfo:
        TOURS.selection(where=["surface=clay"])
    message = config_error(excinfo)
    assert "'surface'" in message
    assert "tour" in message


def test_selection_where_on_a_spec_without_dims_is_a_config_error():
    """`--where` on a job without dimensions says it has none."""
    with pytest.raises(ConfigError) as excinfo:
        daily("2013-01-01", "2013-01-02").selection(where=["tour=atp"])
    assert "none" in config_error(excinfo)


def test_selection_where_unknown_value_is_a_config_error():
    """An unknown value in `--where` is refused, listing the valid values."""
    with pytest.raises(ConfigError) as excinfo:
        TOURS.selection(where=["tour=atp,challenger"])
    message = config_error(excinfo)
    assert "'challenger'" in message
    assert "atp, wta, itf" in message


@pytest.mark.parametrize("item", ["tour", "=atp", "tour=", "tour=  ", ""])
def test_selection_where_malformed_is_a_config_error(item: str):
    """A `--where` item that is not `DIMENSION=VALUE[,VALUE...]` is refused."""
    with pytest.raises(ConfigError) as excinfo:
        TOURS.selection(where=[item])
    assert "DIMENSION=VALUE" in config_error(excinfo)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": "2014-01-01"},
        {"end": "2012-12-31"},
        {"keys": ["2013-01-02/tour=atp"], "where": ["tour=wta"]},
        {"keys": ["2013-01-02/tour=atp"], "start": "2013-01-05"},
    ],
)
def test_selection_matching_nothing_is_a_config_error(kwargs: dict[str, object]):
    """A selection no partition satisfies is refused, showing the job's range."""
    with pytest.raises(ConfigError) as excinfo:
        TOURS.selection(**kwargs)  # type: ignore[arg-type]
    message = config_error(excinfo)
    assert "no partition matches" in message
    assert "2013-01-01..2013-01-10" in message


# --- properties -------------------------------------------------------------------------

grains = st.sampled_from([g for g in Grain if g not in (Grain.ALL, Grain.HOUR)])
starts = st.dates(min_value=date(1990, 1, 1), max_value=date(2030, 12, 31))
spans = st.integers(min_value=0, max_value=800)
dim_values = st.lists(
    st.from_regex(r"[A-Za-z0-9_.:-]{1,4}", fullmatch=True), min_size=1, max_size=3, unique=True
)
dim_maps = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), dim_values, max_size=3
)


def period(day: date, grain: Grain) -> tuple[int, ...]:
    """An independent label of the calendar period of `grain` that contains `day`."""
    if grain is Grain.DAY:
        return (day.toordinal(),)
    if grain is Grain.WEEK:
        iso = day.isocalendar()
        return (iso.year, iso.week)
    if grain is Grain.MONTH:
        return (day.year, day.month)
    return (day.year,)


@settings(max_examples=100, deadline=None)
@given(grain=grains, start=starts, span=spans)
def test_windows_cover_the_range_exactly_one_period_each(grain: Grain, start: date, span: int):
    """Windows start at `start`, end at `end`, are contiguous, and each is one whole period."""
    end = start + timedelta(days=span)
    windows = list(PartitionSpec(grain, start, end).windows())
    assert windows[0][0] == start
    assert windows[-1][1] == end
    for (_, prev_end), (next_start, _) in itertools.pairwise(windows):
        assert next_start == prev_end + timedelta(days=1)  # contiguous, no overlap
        assert period(prev_end, grain) != period(next_start, grain)  # not split needlessly
    for wstart, wend in windows:
        assert wstart <= wend
        assert period(wstart, grain) == period(wend, grain)
    assert sum((wend - wstart).days + 1 for wstart, wend in windows) == span + 1


@settings(max_examples=100, deadline=None)
@given(grain=grains, start=starts, span=spans)
def test_partitions_have_unique_keys_that_round_trip(grain: Grain, start: date, span: int):
    """Keys are unique, `get(p.key) == p`, and newest-first is oldest-first reversed."""
    spec = PartitionSpec(grain, start, start + timedelta(days=span))
    parts = list(spec)
    assert len({p.key for p in parts}) == len(parts) == len(spec)
    for p in parts:
        assert spec.get(p.key) == p
    assert list(spec.partitions(order=Order.NEWEST)) == parts[::-1]


@settings(max_examples=100, deadline=None)
@given(grain=grains, start=starts, span=spans, dims=dim_maps)
def test_len_is_windows_times_dimension_values(
    grain: Grain, start: date, span: int, dims: dict[str, list[str]]
):
    """`len(spec)` is the window count times the product of dimension sizes; keys round-trip."""
    spec = PartitionSpec(grain, start, start + timedelta(days=span), dims)
    n_windows = sum(1 for _ in spec.windows())
    expected = n_windows * math.prod(len(v) for v in dims.values())
    assert len(spec) == expected
    parts = list(spec)
    assert len(parts) == expected
    assert len({p.key for p in parts}) == expected
    for p in parts[:50] + parts[-50:]:
        assert spec.get(p.key) == p
        assert [name for name, _ in p.dims] == list(dims)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"start": "2013-01-02"}, "from 2013-01-02"),
        ({"end": "2013-01-09"}, "until 2013-01-09"),
        ({"start": "2013-01-02", "end": "2013-01-09"}, "2013-01-02 to 2013-01-09"),
        ({"keys": ["2013-01-02/tour=atp"]}, "1 partition key"),
        ({"keys": ["2013-01-02/tour=atp", "2013-01-03/tour=wta"]}, "2 partition keys"),
        ({"where": ["tour=wta,atp"]}, "tour=atp,wta"),
        ({"start": "2013-01-02", "where": ["tour=itf"]}, "from 2013-01-02, tour=itf"),
    ],
)
def test_a_selection_describes_itself_in_words(kwargs: dict[str, Any], expected: str) -> None:
    """An open-ended range reads `from DAY` or `until DAY`, never dots glued to dots."""
    assert TOURS.selection(**kwargs).describe() == expected


def test_whole_tells_a_calendar_window_from_one_cut_by_the_range() -> None:
    """The first and last weeks of a range that starts on a Sunday and ends on a
    Thursday are cut; the weeks between are whole."""
    parts = list(weekly("2015-12-06", "2016-01-07"))
    assert [p.whole for p in parts] == [False, True, True, True, True, False]
    assert parts[-1].key == "2016-01-04..2016-01-07"
