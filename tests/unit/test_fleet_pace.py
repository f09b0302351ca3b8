"""The pace a fleet learns for a resource, kept with its schedule (see fleet_pace)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.ratelimit.fleetpace import ALONE, FLOOR, IDLE, FleetPace, fleet_pace


def learned(rate: float, at: float = 0.0, **fields: object) -> FleetPace:
    """A pace learned before ``at`` (and booked at since: not idle)."""
    return dataclasses.replace(FleetPace(rate, at, at, counted=at), **fields)  # type: ignore[arg-type]


def test_a_fresh_pace_starts_a_hair_under_a_strict_declared_rate() -> None:
    assert fleet_pace(FleetPace(), now=5.0, declared=20.0, burst=1).rate == pytest.approx(19.4)
    assert fleet_pace(FleetPace(), now=5.0, declared=20.0, burst=4).rate == 20.0


def test_a_refusal_a_hair_early_steps_down_once_and_its_echoes_change_nothing() -> None:
    """The first refusal in front of a strict source takes 10 % off, the next 3 %; a
    refusal of a start booked before the last step (its echo) changes nothing."""
    first = fleet_pace(learned(19.4), now=10.0, declared=20.0, burst=1, early=[9.9], tat=10.05)
    assert first.rate == pytest.approx(19.4 * 0.9)
    assert first.down == 10.05  # starts booked up to the schedule's next instant: the old pace
    echo = fleet_pace(first, now=10.2, declared=20.0, burst=1, early=[10.04], tat=10.25)
    assert echo.rate == first.rate
    second = fleet_pace(echo, now=10.5, declared=20.0, burst=1, early=[10.3], tat=10.55)
    assert second.rate == pytest.approx(first.rate * 0.97)
    assert second.creep_every > first.creep_every


def test_a_pace_held_without_a_refusal_creeps_up() -> None:
    down = fleet_pace(learned(20.0), now=10.0, declared=20.0, burst=4, early=[9.9], tat=10.0)
    held = fleet_pace(down, now=10.0 + down.creep_every - 0.1, declared=20.0, burst=4, tat=21.0)
    assert held.rate == down.rate
    crept = fleet_pace(down, now=10.0 + down.creep_every, declared=20.0, burst=4, tat=22.0)
    assert crept.rate == pytest.approx(down.rate + 0.2)


def answered(pattern: str, start: float = 1.0, step: float = 0.1) -> list[tuple[float, bool]]:
    """Answers in order, one every ``step`` s from ``start``: "o" accepted, "x" refused."""
    return [(start + i * step, c == "o") for i, c in enumerate(pattern)]


def test_refusals_spread_among_acceptances_bring_it_down_to_what_got_through() -> None:
    """Declared 15/s where a third gets through: just under 5/s, halving at most at once
    (a strict source refuses half of a rate a hair over its limit), then a search back
    up, never past a hair under the rate that came down."""
    over = fleet_pace(
        learned(15.0), now=3.0, declared=15.0, burst=1, answers=answered("oxx" * 5), tat=3.0
    )
    assert (over.rate, over.bad) == (7.5, 15.0)
    again = fleet_pace(
        over, now=6.0, declared=15.0, burst=1, answers=answered("oox" * 5, start=3.1), tat=6.0
    )
    assert (again.rate, again.bad) == (pytest.approx(0.97 * 7.5 / 1.5), 7.5)
    near = dataclasses.replace(again, rate=7.2, changed=6.0)
    top = fleet_pace(
        near, now=7.5, declared=15.0, burst=1, answers=answered("oooo", start=6.1), tat=7.5
    )
    assert (top.rate, top.bad) == (pytest.approx(0.97 * 7.5), 0.0)


@pytest.mark.parametrize(
    "pattern", ["o" * 8 + "x" * 16, "x" * 16 + "o" * 8, "oooxxxxxxxxxxxxxxxxooo"]
)
def test_a_source_down_or_back_says_nothing_of_its_limit(pattern: str) -> None:
    """Every request refused from some instant on (down), or accepted from some instant
    on (back): the pace stays."""
    pace = fleet_pace(
        learned(20.0), now=4.0, declared=20.0, burst=4, answers=answered(pattern), tat=4.0
    )
    assert pace.rate == 20.0


def test_a_search_steps_up_on_its_own_answers_and_a_refused_step_goes_back() -> None:
    over = fleet_pace(
        learned(15.0), now=3.0, declared=15.0, burst=1, answers=answered("oxx" * 5), tat=3.0
    )
    # Held a second, but its own starts not answered yet: no step.
    held = fleet_pace(over, now=4.1, declared=15.0, burst=1, tat=4.1)
    assert held.rate == over.rate
    up = fleet_pace(
        held, now=4.2, declared=15.0, burst=1, answers=answered("oooo", start=3.1), tat=4.2
    )
    assert up.rate == pytest.approx(over.rate * 1.1)
    assert up.good == over.rate
    refused = fleet_pace(
        up, now=4.6, declared=15.0, burst=1, answers=answered("ox", start=4.3), tat=4.6
    )
    assert refused.rate == over.rate
    assert refused.bad == 0.0  # the search ends at the step before


def test_a_refusal_before_the_search_took_a_step_is_a_step_of_the_margin() -> None:
    over = fleet_pace(
        learned(15.0), now=3.0, declared=15.0, burst=1, answers=answered("oxx" * 5), tat=3.0
    )
    after = fleet_pace(over, now=3.5, declared=15.0, burst=1, early=[3.2], tat=3.5)
    assert after.rate == pytest.approx(over.rate * 0.97)
    assert after.bad == over.bad


def test_a_limit_a_header_says_is_taken_at_once_and_learned_under() -> None:
    """Said anew under the pace, a figure sets it a hair under (a search ends there);
    said again, it changes nothing (the margin learned under it stands), and the pace
    never creeps past it while the source says it; a figure said over the pace is
    searched up to, not taken at once (one that flaps would throw away what 429s
    taught); not said for a minute, it is forgotten and searched past."""
    searching = learned(12.0, bad=15.0)
    told = fleet_pace(searching, now=1.0, declared=15.0, burst=1, told=10.0, tat=1.0)
    assert (told.rate, told.bad, told.told) == (pytest.approx(9.8), 0.0, 10.0)
    stepped = fleet_pace(told, now=2.0, declared=15.0, burst=1, early=[1.5], tat=2.0)
    assert stepped.rate == pytest.approx(9.8 * 0.97)
    crept = fleet_pace(stepped, now=2.5, declared=15.0, burst=1, told=10.0, tat=2.5)
    assert crept.rate == stepped.rate
    for second in range(3, 2000, 5):
        crept = fleet_pace(crept, now=second, declared=15.0, burst=1, told=10.0, tat=second)
    assert crept.rate == pytest.approx(9.8)
    raised = fleet_pace(crept, now=2000.0, declared=15.0, burst=1, told=12.0, tat=2000.0)
    assert (raised.rate, raised.bad) == (pytest.approx(9.8), pytest.approx(11.76))
    up = fleet_pace(
        raised, now=2001.5, declared=15.0, burst=1, told=12.0, answers=answered("oooo", 2000.1)
    )
    assert up.rate == pytest.approx(9.8 * 1.1)
    gone = fleet_pace(up, now=2062.0, declared=15.0, burst=1, tat=2062.0)
    assert (gone.told, gone.bad) == (0.0, 15.0)
    further = fleet_pace(
        gone, now=2063.5, declared=15.0, burst=1, answers=answered("oooo", start=2062.5)
    )
    assert further.rate == pytest.approx(9.8 * 1.1 * 1.1)


def test_a_worker_booking_alone_takes_up_the_pace_then_the_fleet_follows_it() -> None:
    """Alone, a worker sees every answer: the fleet's pace follows the rate it learned,
    once it first booked at the pace as it is (which it takes up as its own): neither
    the rate a run starts at nor one learned from its share of the answers while others
    booked too is the fleet's. Once another books, the fleet learns from there."""
    kept = learned(9.4, at=-100.0)
    first = fleet_pace(kept, now=1.0, declared=30.0, burst=1, worker="a", own=29.1)
    assert first.rate == 9.4  # a run's first booking: the pace a run before left
    alone = fleet_pace(first, now=1.2, declared=30.0, burst=1, worker="a", own=9.0)
    assert alone.rate == 9.0
    pair = fleet_pace(alone, now=1.5, declared=30.0, burst=1, worker="b", own=29.1)
    assert pair.rate == 9.0
    shared = fleet_pace(pair, now=2.0, declared=30.0, burst=1, worker="a", own=2.2)
    assert shared.rate == 9.0  # (a's own rate is its share's, not the fleet's)
    left = fleet_pace(shared, now=1.5 + ALONE + 0.1, declared=30.0, burst=1, worker="a", own=2.2)
    assert left.rate == 9.0
    assert [w for w, _ in left.workers] == ["a"]
    follows = fleet_pace(left, now=7.0, declared=30.0, burst=1, worker="a", own=9.2)
    assert follows.rate == 9.2


def test_a_rate_learned_alone_searches_up_once_others_book_too() -> None:
    """A run's first worker books alone and one 429 halves its rate (as one process's
    does, then searches up): when the others join, the fleet goes on from it searching
    up, not creeping (four workers at a correct 20/s sat at 10/s for twenty seconds)."""
    first = fleet_pace(FleetPace(), now=1.0, declared=20.0, burst=1, worker="a", own=19.4)
    halved = fleet_pace(first, now=1.5, declared=20.0, burst=1, worker="a", own=9.7)
    assert halved.rate == 9.7
    joined = fleet_pace(halved, now=2.0, declared=20.0, burst=1, worker="b", own=19.4)
    assert (joined.rate, joined.bad, joined.alone) == (9.7, 20.0, "")
    again = fleet_pace(joined, now=2.2, declared=20.0, burst=1, worker="a", own=9.7)
    assert (again.bad, again.alone) == (20.0, "")


def test_a_pace_never_books_over_the_declared_rate_nor_trusts_a_clock_gone_back() -> None:
    """A search's step kept from before a declared rate was lowered is cut to it; kept
    instants ahead of now (a database clock stepped back) count from now, so refusals
    still bring the pace down."""
    stepped = learned(38.0, bad=40.0, good=36.0)
    refused = fleet_pace(
        stepped, now=1.0, declared=20.0, burst=4, answers=answered("oooox", start=0.2)
    )
    assert refused.rate <= 20.0
    ahead = learned(20.0, at=5000.0)
    down = fleet_pace(ahead, now=10.0, declared=20.0, burst=4, early=[9.9], tat=10.0)
    assert down.rate == pytest.approx(19.4)


def test_a_pace_a_run_before_left_low_searches_back_up() -> None:
    """Nobody booked for a minute (a new run): what the pace learned may be stale."""
    left = learned(10.0, at=100.0)
    now = 100.0 + IDLE + 1.0
    fresh = fleet_pace(left, now=now, declared=20.0, burst=1, tat=100.0)
    assert fresh.bad == 20.0
    up = fleet_pace(
        fresh, now=now + 1.0, declared=20.0, burst=1, answers=answered("oooo", start=now), tat=now
    )
    assert up.rate == pytest.approx(11.0)
    busy = fleet_pace(
        learned(10.0, at=now - 1.0, workers=(("b", now - 1.0),)),
        now=now,
        declared=20.0,
        burst=1,
        tat=now - 0.1,
    )
    assert busy.bad == 0.0
    restarted = fleet_pace(
        learned(10.0, at=now - 6.0, workers=(("b", now - 6.0),)),
        now=now,
        declared=20.0,
        burst=1,
        tat=now - 0.1,
    )
    assert restarted.bad == 20.0  # nobody booked for 5 s: a run restarted


def test_a_pause_every_worker_waited_out_is_no_new_run() -> None:
    """A Retry-After of 8 s holds every worker: nobody booked meanwhile, but the run
    goes on, and what the answers said before it still counts. (Taken for a new run, it
    threw them away at every pause, and three workers declared 30/s in front of a 10/s
    source kept 29/s for ten minutes: 212-222 through where 4,000 went.)"""
    before = learned(12.0, at=90.0, workers=(("a", 91.0), ("b", 91.0)))
    before = dataclasses.replace(before, answers=tuple(answered("oxoxoxox", start=90.0)))
    after = fleet_pace(before, now=100.0, declared=30.0, burst=1, tat=92.0, paused=99.0)
    assert (after.bad, after.answers) == (0.0, before.answers)
    over = fleet_pace(
        after, now=100.2, declared=30.0, burst=1, answers=answered("oxoxox", start=99.1)
    )
    assert over.rate < 12.0


def test_a_pace_held_far_under_its_ceiling_searches_up_and_waits_longer_when_refused() -> None:
    """A limit back after a dip, or risen: the creep alone takes many minutes."""
    low = learned(5.0, at=100.0, workers=(("b", 128.5),))
    held = fleet_pace(low, now=129.0, declared=20.0, burst=4, tat=129.0, worker="b")
    assert held.bad == 0.0
    probing = fleet_pace(held, now=131.0, declared=20.0, burst=4, tat=131.0, worker="b")
    assert probing.bad == 20.0
    up = fleet_pace(
        probing, now=132.5, declared=20.0, burst=4, answers=answered("oooo", 131.1), tat=132.5
    )
    assert up.rate == pytest.approx(held.rate * 1.1)
    refused = fleet_pace(
        up, now=133.0, declared=20.0, burst=4, answers=answered("ox", 132.6), tat=133.0
    )
    assert (refused.rate, refused.bad, refused.probe_every) == (held.rate, 0.0, 60.0)


def test_a_pace_is_kept_as_text_and_anything_else_reads_as_none() -> None:
    pace = learned(
        12.5,
        at=7.0,
        answers=((7.5, True), (7.6, False)),
        bad=20.0,
        good=11.0,
        told=13.0,
        workers=(("a", 7.0), ("b", 6.5)),
    )
    assert FleetPace.loads(pace.dumps()) == pace
    for text in (
        None,
        "",
        "garbage",
        "[1, 2]",
        '{"rate": 5}',
        '[1e999, 0, 0, 0, 0, 0, 0, 0, 0, "", [], []]',
        '[20, 0, 0, 0, 0, 0, -3, 0, 0, "", [], []]',
        "[20, 0, 0, 0, 0, 0, 0, 0, 0, 7, [], []]",
    ):
        assert FleetPace.loads(text) == FleetPace(), text


@settings(max_examples=300, deadline=None)
@given(
    declared=st.floats(0.1, 1000.0),
    burst=st.integers(1, 10),
    steps=st.lists(
        st.tuples(
            st.floats(0.0, 5.0),  # seconds since the booking before
            st.lists(st.booleans(), max_size=20),  # answers since, in order
            st.booleans(),  # one of the refusals came a hair early
            st.one_of(st.none(), st.floats(0.01, 2000.0)),  # a header's figure
        ),
        max_size=40,
    ),
)
def test_the_pace_stays_between_its_floor_and_the_declared_rate(
    declared: float, burst: int, steps: list[tuple[float, list[bool], bool, float | None]]
) -> None:
    pace, now = FleetPace(), 0.0
    for gap, answers, early, told in steps:
        sent = [(now + i * gap / 20, ok) for i, ok in enumerate(answers)]
        now += gap
        refused = [t for t, ok in sent if not ok][:1] if early else []
        pace = fleet_pace(
            pace, now=now, declared=declared, burst=burst, answers=sent, early=refused, told=told
        )
        assert FLOOR * declared * (1 - 1e-9) <= pace.rate <= declared
        assert FleetPace.loads(pace.dumps()) == pace
