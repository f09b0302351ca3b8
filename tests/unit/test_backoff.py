"""The backoff primitive: attempt -> delay, with jitter, a cap, a hint and a test switch."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from backfill.backoff import Backoff, is_testing, set_testing
from backfill.errors import ConfigError


class SleepLog:
    """A clock that records sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def time(self) -> float:
        return 0.0

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_ceiling_grows_by_the_factor_up_to_the_cap():
    """Ceilings start at `first`, multiply by `factor` per try, and stop at `cap`."""
    backoff = Backoff(first=0.1, cap=1.0, factor=3.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 5)] == pytest.approx([0.1, 0.3, 0.9, 1.0])


def test_jitter_draws_from_the_top_share_of_the_ceiling():
    """`jitter=0.5` waits between half the ceiling and the ceiling, spread over it."""
    backoff = Backoff(first=8.0, cap=60.0, jitter=0.5)
    rng = random.Random(5)
    waits = [backoff.delay(1, rng=rng) for _ in range(500)]
    assert all(4.0 <= w <= 8.0 for w in waits)
    assert min(waits) < 4.5 and max(waits) > 7.5


def test_full_jitter_draws_what_the_retry_policy_always_drew():
    """Full jitter consumes the generator as `uniform(0, ceiling)`: seeded waits are kept."""
    backoff = Backoff(first=0.5, cap=60.0)
    assert backoff.delay(3, rng=random.Random(11)) == random.Random(11).uniform(0.0, 2.0)


def test_a_longer_hint_wins_even_above_the_cap_and_a_shorter_one_changes_nothing():
    """A source's hint is a floor: honoured above the cap, ignored below the backoff."""
    backoff = Backoff(first=4.0, cap=10.0, jitter=0.0)
    assert backoff.delay(1, hint=120.0) == 120.0
    assert backoff.delay(2, hint=1.0) == 8.0
    assert backoff.delay(1, hint=math.nan) == 4.0


def test_huge_attempt_numbers_give_the_cap_without_overflow():
    """An attempt number far past 64 doublings still gives the cap."""
    assert Backoff(first=0.5, cap=30.0, jitter=0.0).delay(10**9) == 30.0


def test_wait_sleeps_the_delay_on_the_given_clock():
    """`wait` sleeps on the injected clock, so a test of backoff takes no time."""
    clock = SleepLog()
    waited = asyncio.run(Backoff(first=2.0, jitter=0.0).wait(2, clock))
    assert waited == 4.0 and clock.sleeps == [4.0]


def test_testing_switch_turns_every_wait_off_and_back_on():
    """`set_testing(True)` makes every delay 0 (hints too); as a context manager it restores."""
    backoff = Backoff(first=2.0, jitter=0.0)
    clock = SleepLog()
    with set_testing(True):
        assert is_testing()
        assert backoff.delay(3, hint=30.0) == 0.0
        assert asyncio.run(backoff.wait(3, clock)) == 0.0
    assert not is_testing()
    assert clock.sleeps == []
    assert backoff.delay(1) == 2.0


def test_waits_for_another_party_are_kept_under_the_testing_switch():
    """`switchable=False` (a database coming back, a lock) still waits while testing."""
    with set_testing(True):
        assert Backoff(first=0.5, jitter=0.0, switchable=False).delay(2) == 1.0


def test_testing_switch_set_without_a_block_stays_set():
    """`set_testing(True)` called plainly holds until `set_testing(False)`."""
    set_testing(True)
    try:
        assert Backoff(first=1.0, jitter=0.0).delay(1) == 0.0
    finally:
        set_testing(False)
    assert not is_testing()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"first": -1.0}, "first must be a non-negative"),
        ({"first": math.inf}, "first must be a non-negative"),
        ({"cap": math.nan}, "cap must be a non-negative"),
        ({"factor": 0.5}, "factor must be a number of at least 1"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1"),
    ],
)
def test_nonsense_is_refused_in_one_sentence(options: dict[str, float], says: str):
    """Negative, infinite or NaN waits, a shrinking factor and jitter past 1 are refused."""
    with pytest.raises(ConfigError, match=says) as excinfo:
        Backoff(**options)
    assert "\n" not in str(excinfo.value)


def test_an_infinite_cap_means_no_cap():
    """`cap=inf` lets the ceiling grow without bound."""
    assert Backoff(first=1.0, cap=math.inf, jitter=0.0).delay(11) == 1024.0
