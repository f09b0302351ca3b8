"""Retry policy: full-jitter exponential backoff, a cap, the source's hint, and give-up."""

from __future__ import annotations

import math
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.errors import ConfigError
from backfill.retry import NO_RETRY, RetryPolicy


@settings(max_examples=100, deadline=None)
@given(
    attempts=st.integers(min_value=2, max_value=80),
    base=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=120.0),
    data=st.data(),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_lies_within_zero_and_the_capped_exponential(
    attempts: int, base: float, cap: float, data: st.DataObject, seed: int
):
    """Before the last try, `delay(n)` is in `[0, min(cap, base * 2 ** (n - 1))]`."""
    n = data.draw(st.integers(min_value=1, max_value=attempts - 1))
    policy = RetryPolicy(attempts=attempts, base=base, cap=cap)
    wait = policy.delay(n, rng=random.Random(seed))
    assert wait is not None
    assert 0.0 <= wait <= min(cap, base * 2.0 ** (n - 1))


def test_delay_is_jittered_across_the_whole_range():
    """Full jitter spreads waits over `[0, ceiling]` rather than clustering at the ceiling."""
    policy = RetryPolicy(attempts=10, base=1.0, cap=60.0)
    rng = random.Random(1234)
    waits = [policy.delay(4, rng=rng) for _ in range(500)]
    assert all(w is not None and 0.0 <= w <= 8.0 for w in waits)
    assert min(w for w in waits if w is not None) < 1.0
    assert max(w for w in waits if w is not None) > 7.0


def test_seeded_rng_makes_delays_reproducible():
    """The same seed gives the same sequence of jittered delays."""
    policy = RetryPolicy(attempts=6)
    first = [policy.delay(n, rng=random.Random(7)) for n in range(1, 6)]
    again = [policy.delay(n, rng=random.Random(7)) for n in range(1, 6)]
    assert first == again


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_delay_gives_up_once_attempts_are_used(attempts: int):
    """`delay(n)` is None once `n >= attempts`, even with a `retry_after` hint."""
    policy = RetryPolicy(attempts=attempts)
    assert policy.delay(attempts) is None
    assert policy.delay(attempts + 1) is None
    assert policy.delay(attempts, retry_after=1.0) is None
    if attempts > 1:
        assert policy.delay(attempts - 1) is not None


def test_single_attempt_never_retries():
    """`attempts=1` (and `NO_RETRY`) never asks for a retry."""
    assert RetryPolicy(attempts=1).delay(1) is None
    assert NO_RETRY.attempts == 1
    assert NO_RETRY.delay(1, retry_after=0.5) is None


def test_retry_after_larger_than_backoff_is_honoured_above_the_cap():
    """A `retry_after` hint longer than the backoff wins, even when it exceeds the cap."""
    policy = RetryPolicy(attempts=5, base=0.5, cap=10.0)
    assert policy.delay(1, retry_after=120.0, rng=random.Random(0)) == 120.0


def test_retry_after_smaller_than_backoff_does_not_shorten_it():
    """A hint shorter than the backoff leaves the backoff in place."""
    policy = RetryPolicy(attempts=5, base=4.0, cap=60.0, jitter=False)
    assert policy.delay(3, retry_after=1.0) == 16.0


def test_no_jitter_gives_the_exact_capped_ceiling():
    """With `jitter=False` the wait is exactly `min(cap, base * 2 ** (n - 1))`."""
    policy = RetryPolicy(attempts=10, base=0.5, cap=5.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 10)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0]


@pytest.mark.parametrize("attempts", [0, -1])
def test_invalid_attempts_are_a_config_error(attempts: int):
    """Fewer than one attempt is refused with a one-line message saying the minimum."""
    with pytest.raises(ConfigError) as excinfo:
        RetryPolicy(attempts=attempts)
    message = str(excinfo.value)
    assert "at least 1" in message
    assert "\n" not in message


@pytest.mark.parametrize(("base", "cap"), [(-0.1, 60.0), (0.5, -1.0)])
def test_negative_base_or_cap_is_a_config_error(base: float, cap: float):
    """A negative base or cap is refused."""
    with pytest.raises(ConfigError, match="must not be negative"):
        RetryPolicy(base=base, cap=cap)


@pytest.mark.parametrize("attempt", [64, 65, 1_000, 10**6, sys.maxsize - 1])
def test_huge_attempt_numbers_do_not_overflow(attempt: int):
    """Very large attempt numbers give the cap (or less), never an OverflowError."""
    exact = RetryPolicy(attempts=sys.maxsize, base=0.5, cap=30.0, jitter=False)
    assert exact.delay(attempt) == 30.0
    jittered = RetryPolicy(attempts=sys.maxsize, base=0.5, cap=30.0)
    wait = jittered.delay(attempt, rng=random.Random(3))
    assert wait is not None
    assert math.isfinite(wait)
    assert 0.0 <= wait <= 30.0
