"""Rate limits shared by everything that uses a source: resources.

A :class:`Resource` is a named limit: one or more rates (``"5/s"``, ``"10000/day"``), a
burst, a concurrency pool, optionally adaptive. Every request takes a *reservation*: the
earliest instant at which every rate allows one more request. Reservations are handed
out in order (GCRA, the "virtual scheduling" form of a token bucket), so in any window of
``t`` seconds at most ``burst + rate * t`` requests start, from the very first second on.

A ``Retry-After`` pauses the whole resource, once: later 429s from requests already in
flight only extend the pause to the latest instant any of them asked for. No pause lasts
longer than the resource's ``max_wait``: a source asking for more is cut to it.

Core knows no HTTP: the HTTP client reports outcomes through :meth:`Resource.observe`.
Nor does it know a database: workers on many machines share a resource through a
:class:`SharedRate` (the engine plugs in one backed by the ledger) and a concurrency
share the engine rebalances as workers join and leave (:meth:`Resource.set_share`).

One module per concern: ``limits`` (parsing, outcomes), ``schedule`` (GCRA, quota
windows, a fleet's bookings), ``adaptive`` (the learned rate), ``pace`` (both, for one
resource), ``circuit`` (the breaker), ``pauses``, ``pool`` (concurrency), ``sharing``
(a fleet's schedule), ``grants`` (starts on their way to the wire) and ``resource``.
"""

from backfill.ratelimit.adaptive import AdaptiveRate
from backfill.ratelimit.circuit import CircuitBreaker
from backfill.ratelimit.grants import Grant, LateStart, PauseGate, WireGap, take_grant
from backfill.ratelimit.limits import (
    DEFAULT_MAX_WAIT,
    REFUSED_WAIT,
    Limit,
    Outcome,
    describe_seconds,
    parse_limit,
)
from backfill.ratelimit.resource import Resource
from backfill.ratelimit.schedule import book_block
from backfill.ratelimit.sharing import SharedRate

__all__ = [
    "DEFAULT_MAX_WAIT",
    "REFUSED_WAIT",
    "AdaptiveRate",
    "CircuitBreaker",
    "Grant",
    "LateStart",
    "Limit",
    "Outcome",
    "PauseGate",
    "Resource",
    "SharedRate",
    "WireGap",
    "book_block",
    "describe_seconds",
    "parse_limit",
    "take_grant",
]
