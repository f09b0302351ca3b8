"""Backoff: how long to wait before the next try, as a value.

One strategy for every loop that retries (a stage's retry policy, an HTTP client's own
retries, a sink's or a ledger's reconnects): the wait after failed try ``n`` is drawn
from the top ``jitter`` share of ``min(cap, first * factor ** (n - 1))``, and never
shorter than a hint the source gave (``Retry-After``). The strategy only returns the
number; the caller waits it on its clock (:meth:`Backoff.wait` on an injectable one).

Example::

    >>> RECONNECT = Backoff(first=0.1, cap=5.0, jitter=0.5)
    >>> [RECONNECT.ceiling(n) for n in (1, 2, 7)]
    [0.1, 0.2, 5.0]
    >>> 0.05 <= RECONNECT.delay(1) <= 0.1
    True

Users' own tests turn every backoff wait off with :func:`set_testing` (as stamina's
switch of the same name): a job whose source fails twice then answers is tested in
milliseconds, its retries still counted.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from types import TracebackType

from backfill.clock import Clock
from backfill.errors import ConfigError

__all__ = ["Backoff", "is_testing", "set_testing"]

_RNG = random.Random()
# Past this many doublings every ceiling is the cap; the power itself must not overflow.
_MAX_EXPONENT = 64


class _Testing:
    """Whether backoff waits are turned off (see :func:`set_testing`)."""

    on = False


class _Switch:
    """What :func:`set_testing` returns: the switch is already set; used as a context
    manager, it is set back on exit."""

    def __init__(self, before: bool) -> None:
        self._before = before

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _Testing.on = self._before


def set_testing(on: bool = True) -> _Switch:
    """Turn every backoff wait off (``on``) or back on, for the tests of your own jobs.

    Retries still happen and are still counted; they just do not wait. Limits still hold:
    a resource's rate, a source's pause (``Retry-After`` on a resource) and its circuit
    are what a job is tested against, not backoff. Used as a context manager, the switch
    is set back on exit::

        with backfill.testing.set_testing(True):
            result = run_job(job, sink=sink)
    """
    before = _Testing.on
    _Testing.on = on
    return _Switch(before)


def is_testing() -> bool:
    """Whether backoff waits are turned off (see :func:`set_testing`)."""
    return _Testing.on


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter and a cap: try number -> seconds to wait.

    ``jitter`` is the share of each ceiling drawn at random: 1 is "full jitter" (uniform
    in ``[0, ceiling]``, so a crowd of failures does not retry in lockstep), 0.5 draws
    from ``[ceiling / 2, ceiling]``, 0 waits exactly the ceiling. ``switchable=False``
    keeps the waits under :func:`set_testing`: waits for another party to come back (a
    database restarting, another process's lock) that a loop must not spin through.
    """

    first: float = 0.5
    cap: float = 60.0
    factor: float = 2.0
    jitter: float = 1.0
    switchable: bool = True

    def __post_init__(self) -> None:
        for name, value, finite in (("first", self.first, True), ("cap", self.cap, False)):
            # The cap may be infinite (no cap); the first wait must be a real one.
            number = isinstance(value, int | float) and value >= 0
            if not number or (finite and value == math.inf):
                raise ConfigError(
                    f"backoff {name} must be a non-negative number of seconds, not {value!r}"
                )
        if not (isinstance(self.factor, int | float) and 1 <= self.factor < math.inf):
            raise ConfigError(f"backoff factor must be a number of at least 1, not {self.factor!r}")
        if not (isinstance(self.jitter, int | float) and 0 <= self.jitter <= 1):
            raise ConfigError(f"backoff jitter must be between 0 and 1, not {self.jitter!r}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed try ``attempt`` (1-based), before jitter."""
        exponent = min(max(0, attempt - 1), _MAX_EXPONENT)
        return float(min(self.cap, self.first * self.factor**exponent))

    def delay(
        self, attempt: int, *, hint: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed try ``attempt``: jittered, capped, never shorter
        than ``hint`` (which may exceed the cap); 0 while testing (see set_testing)."""
        if _Testing.on and self.switchable:
            return 0.0
        ceiling = self.ceiling(attempt)
        wait = ceiling
        if self.jitter:
            wait = (rng or _RNG).uniform(ceiling * (1.0 - self.jitter), ceiling)
        if hint is not None and hint > wait:
            wait = hint
        return wait

    async def wait(
        self,
        attempt: int,
        clock: Clock,
        *,
        hint: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Wait :meth:`delay` on ``clock`` (tests pass one that does not sleep); return
        the seconds waited."""
        seconds = self.delay(attempt, hint=hint, rng=rng)
        if seconds > 0:
            await clock.sleep(seconds)
        return seconds
