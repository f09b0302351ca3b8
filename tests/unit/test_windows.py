"""WindowWatch: a fixed window a source keeps without a header, told from its answers."""

from __future__ import annotations

import pytest

from backfill.ratelimit.windows import WindowWatch


def _window(
    watch: WindowWatch, start: float, count: int, period: float, every: float
) -> tuple[float, list[float | None]]:
    """Requests every ``every`` seconds from ``start`` through one window of ``count`` per
    ``period`` that begins at ``start``: the first ``count`` accepted, the rest refused
    (each answered at once). The instant the next window begins, and what each accepted
    answer returned."""
    learned: list[float | None] = []
    t, taken = start, 0
    while t < start + period - 1e-9:
        if taken < count:
            learned.append(watch.accepted(t, t))
            taken += 1
        else:
            watch.refused(t)
        t += every
    return start + period, learned


def test_two_windows_that_agree_give_their_pace() -> None:
    """15 per 10 s asked at 2/s: 7.5 s of answers taken, then refusals until the next
    window. The run's start is no reset: the cycles are counted between returns, and at
    the fourth window's first answer two whole ones agree: the pace is about 15 per 10 s,
    and holds."""
    watch = WindowWatch()
    t = 0.0
    for _ in range(3):
        t, learned = _window(watch, t, 15, 10.0, 0.5)
        assert learned == [None] * 15 and watch.pace is None
    assert watch.accepted(t, t) == pytest.approx(1.5, rel=0.05)
    assert watch.holds(t + 5.0)


def test_the_cycle_at_a_return_counts_what_was_taken_since_the_return_before() -> None:
    """The first cycle is counted from the first answer taken: 15 over 9.5 s at the
    second window's return (the last refusal went 9.5 s after the first request)."""
    watch = WindowWatch()
    t, _ = _window(watch, 0.0, 15, 10.0, 0.5)
    assert watch.cycle is None
    watch.accepted(t, t)
    assert watch.cycle == pytest.approx(15 / 9.5)
    watch.accepted(t + 0.5, t + 0.5)
    assert watch.cycle is None  # said once, at the return


def test_an_outage_is_no_window() -> None:
    """Taken at 5/s for 20 s, refused for 30 s, taken again: one return, no pace; and a
    second outage as long as the first, 20 s later, at a different count: none either."""
    watch = WindowWatch()
    t = 0.0
    for _ in range(100):
        watch.accepted(t, t)
        t += 0.2
    for _ in range(30):
        watch.refused(t)
        t += 1.0
    watch.accepted(t, t)
    assert watch.pace is None
    for _ in range(40):
        watch.accepted(t, t)
        t += 0.2
    for _ in range(30):
        watch.refused(t)
        t += 1.0
    watch.accepted(t, t)
    assert watch.pace is None


def test_a_lone_refusal_or_refusals_within_a_second_make_no_return() -> None:
    """Refusals spanning under a second (a bucket's jitter, a burst's echo) are no run
    to come back from: no cycle, no pace, however many."""
    watch = WindowWatch()
    t = 0.0
    for _ in range(50):
        for _ in range(10):
            watch.accepted(t, t)
            t += 0.1
        watch.refused(t)
        watch.refused(t + 0.5)
        t += 0.6
        watch.accepted(t, t)
        assert watch.cycle is None
    assert watch.pace is None


def test_an_answer_sent_before_the_run_began_does_not_end_it() -> None:
    """An accepted answer of a request sent before the first refused one (answered late)
    is no return: the run goes on, and its return comes with the first request sent after
    it."""
    watch = WindowWatch()
    t, _ = _window(watch, 0.0, 15, 10.0, 0.5)
    watch.accepted(7.0, t - 0.2)  # sent before the first refusal (7.5 s)
    watch.accepted(t, t)
    assert watch.cycle is not None


def test_a_refusal_at_the_pace_forgets_it_and_it_expires_after_ten_periods() -> None:
    """A request sent while the pace holds and refused says it is wrong (or the window
    changed): forgotten, and learned again from two more cycles. Unrefused, it holds ten
    periods, then is learned again."""
    watch = WindowWatch()
    t = 0.0
    for _ in range(3):
        t, _ = _window(watch, t, 15, 10.0, 0.5)
    watch.accepted(t, t)
    assert watch.holds(t)
    assert not watch.refused(t - 0.1)  # sent before it was learned: says nothing of it
    assert watch.refused(t + 1.0)
    assert not watch.holds(t + 1.0)
    # (The next window comes after a quiet one: its first cycle spans both.)
    t += 10.0
    for _ in range(3):
        t, _ = _window(watch, t, 15, 10.0, 0.5)
    assert watch.accepted(t, t) == pytest.approx(1.5, rel=0.05)
    assert watch.holds(t + 99.0)
    assert not watch.holds(t + 101.0)
    assert watch.pace is None
