"""Retry policy: how often a stage retries, and its backoff (full jitter, a cap, and the
source's hint), which :class:`backfill.backoff.Backoff` computes.

The policy returns a *value* (how long to wait, or ``None`` for "give up"); exceptions
only carry the facts the decision needs (the error class and a ``retry_after`` hint).

Example::

    >>> policy = RetryPolicy(attempts=5, base=0.5, cap=30.0)
    >>> policy.delay(1, retry_after=None, rng=random.Random(1)) <= 0.5
    True
    >>> policy.delay(5, retry_after=None) is None  # the fifth attempt was the last
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from backfill.backoff import Backoff
from backfill.errors import ConfigError

__all__ = ["RECONNECT_SECONDS", "RetryPolicy"]

# How long a lost database connection (the ledger's, a sink's, or the transaction the two
# share) is retried with backoff before the run stops: long enough for a server restart
# or a failover, short enough that a database gone for good is reported.
RECONNECT_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a stage retries transient failures.

    ``attempts`` counts every try, the first included (``attempts=1`` never retries).
    The wait before try ``n + 1`` is uniform in ``[0, min(cap, base * 2 ** (n - 1))]``
    ("full jitter", so a crowd of failing partitions does not retry in lockstep), and
    never shorter than a ``retry_after`` hint from the source, which may exceed the cap.
    """

    attempts: int = 5
    base: float = 0.5
    cap: float = 60.0
    jitter: bool = True
    # The waits between tries, as the one backoff primitive computes them.
    strategy: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"retry attempts must be at least 1, not {self.attempts}")
        if self.base < 0 or self.cap < 0:
            raise ConfigError("retry base and cap must not be negative")
        strategy = Backoff(first=self.base, cap=self.cap, jitter=1.0 if self.jitter else 0.0)
        object.__setattr__(self, "strategy", strategy)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The jittered exponential wait after failed try number ``attempt`` (1-based)."""
        return self.strategy.delay(attempt, rng=rng)

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait before the next try after failed try ``attempt``, or None."""
        if attempt >= self.attempts:
            return None
        return self.strategy.delay(attempt, hint=retry_after, rng=rng)


NO_RETRY = RetryPolicy(attempts=1)
