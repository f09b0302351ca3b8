"""WindowWatch: what a source took over each cycle of its refusals (a fixed window kept
without a header takes its count per period)."""

from __future__ import annotations

import pytest

from backfill.ratelimit.windows import WindowWatch


def _window(watch: WindowWatch, start: float, count: int, period: float, every: float) -> float:
    """Requests every ``every`` seconds from ``start`` through one window of ``count`` per
    ``period`` that begins at ``start``: the first ``count`` accepted, the rest refused.
    The instant the next window begins."""
    t, taken = start, 0
    while t < start + period - 1e-9:
        if taken < count:
            watch.accepted(t)
            assert watch.cycle is None or taken == 0
            taken += 1
        else:
            watch.refused(t)
        t += every
    return start + period


def _taken_then_refused(
    watch: WindowWatch, start: float, taken: tuple[int, float], refused: tuple[int, float]
) -> float:
    """From ``start``, ``taken`` (count, seconds apart) accepted, then ``refused`` likewise
    refused; the instant after the last."""
    t = start
    for count, every, say in ((*taken, watch.accepted), (*refused, watch.refused)):
        for _ in range(count):
            say(t)
            t += every
    return t


def test_each_return_says_what_the_cycle_before_it_took() -> None:
    """15 per 10 s asked at 2/s: 7.5 s of answers taken, then refusals until the next
    window. At each window's first answer (a return) the cycle since the return before
    (since the first answer, for the first) took 15 over the time up to halfway between
    its last refusal and the return (9.75 s; the reset came between), said once."""
    watch = WindowWatch()
    t = _window(watch, 0.0, 15, 10.0, 0.5)
    assert watch.cycle is None
    for _ in range(3):
        watch.accepted(t)
        assert watch.cycle == pytest.approx(15 / 9.75)
        watch.accepted(t + 0.5)
        assert watch.cycle is None
        t = _window(watch, t + 1.0, 13, 9.0, 0.5)


def test_an_outage_s_return_says_what_the_source_took_before_it() -> None:
    """Taken at 5/s for 20 s, refused for 30 s (a request a second), taken again: the
    return says 100 over the 49.5 s up to halfway between the last refusal and it."""
    watch = WindowWatch()
    t = _taken_then_refused(watch, 0.0, (100, 0.2), (30, 1.0))
    watch.accepted(t)
    assert watch.cycle == pytest.approx(100 / (t - 0.5))


def test_refusals_within_a_second_make_no_return() -> None:
    """Refusals spanning under a second (a bucket's jitter, a burst's echo), or a lone
    one, are no run to come back from, however many times."""
    watch = WindowWatch()
    t = 0.0
    for _ in range(50):
        for _ in range(10):
            watch.accepted(t)
            t += 0.1
        watch.refused(t)
        watch.refused(t + 0.5)
        t += 0.6
        watch.accepted(t)
        assert watch.cycle is None
        watch.refused(t + 0.1)
        t += 0.2


def test_an_answer_sent_before_the_run_began_does_not_end_it() -> None:
    """An accepted answer of a request sent before the first refused one (answered late)
    is no return: the run goes on, and its return is the first request sent after it."""
    watch = WindowWatch()
    t = _window(watch, 0.0, 15, 10.0, 0.5)
    watch.accepted(7.0)  # sent before the first refusal (7.5 s), answered now
    assert watch.cycle is None
    watch.accepted(t)
    assert watch.cycle is not None


def test_a_cycle_with_fewer_than_two_taken_says_nothing() -> None:
    """One request taken between two runs of refusals (a source down but for a probe, a
    limit near zero): no figure to go back to."""
    watch = WindowWatch()
    t = 0.0
    watch.accepted(t)
    for _ in range(3):
        for _ in range(5):
            t += 1.0
            watch.refused(t)
        t += 1.0
        watch.accepted(t)
        assert watch.cycle is None


def test_a_cycle_like_the_one_before_is_steady_an_outage_s_is_not() -> None:
    """A window kept takes about the same over each cycle: from the second cycle counted
    on, a return whose cycle is within 15 % of the one before is steady (the rate is the
    window's to set); the first, and a return after an outage that took a different
    share, are not (the source refused, it did not say how fast it takes)."""
    watch = WindowWatch()
    t = _window(watch, 0.0, 15, 10.0, 0.5)
    watch.accepted(t)
    assert watch.cycle is not None and not watch.steady  # the first cycle: nothing to compare
    watch.accepted(t + 0.5)
    assert not watch.steady
    t = _window(watch, t + 1.0, 13, 9.0, 0.5)
    watch.accepted(t)
    assert watch.steady
    watch.accepted(t + 0.5)
    assert not watch.steady  # said at the return only
    # Then 10 s taken at 2/s, and ten seconds refused: a cycle of 21 over 15 s, not 15 over
    # 10 s: an outage, not the window.
    t = _taken_then_refused(watch, t + 1.0, (20, 0.5), (10, 1.0))
    watch.accepted(t)
    assert watch.cycle is not None and not watch.steady
