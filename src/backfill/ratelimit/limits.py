"""What a resource's limits are written as: ``"5/s"``, ``"10000/day"``, and the outcomes
requests report back to it."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from backfill.errors import ConfigError

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip
_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/|per)\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Limit:
    """``count`` requests per ``period`` seconds."""

    count: float
    period: float

    @property
    def rate(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        whole = math.isfinite(self.count) and self.count == int(self.count)
        count = f"{self.count:.0f}" if whole else f"{self.count:g}"
        for unit, seconds in (("day", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
            if self.period == seconds:
                return f"{count}/{unit}"
        return f"{count}/{self.period:g}s"


# The longest wait a source may impose (Retry-After, RateLimit-Reset) unless a resource
# says otherwise: longer is a broken or hostile server, not a plan.
DEFAULT_MAX_WAIT = 3600.0
# The wait a 429 asks for when it does not say (no Retry-After).
REFUSED_WAIT = 1.0
# The longest Retry-After a lone 429 is taken as meant for its own request (see
# Resource.observe): one second, the least the header can say in whole seconds.
EASE_LONGEST = 1.0
# How long after a lone 429 another (of a request sent since) says the source insists,
# and within how many requests started in between (one refused after more went through
# is a busy source's jitter).
EASE_MEMORY = 5.0
EASE_MEMORY_REQUESTS = 50
# How long after a lone 429's echoes one more refusal only slows the rate (see
# Resource._eases).
EASE_SETTLE = 0.25
# A rate slower than one request a week means nothing a backfill can use (and one that
# rounds to zero would never let a request through).
_SLOWEST_INTERVAL = 7 * 86400.0
# Limits over longer periods than this are quotas, counted exactly over a sliding window;
# shorter ones are rates, smoothed by virtual scheduling with the resource's burst.
QUOTA_PERIOD = 1.0


def describe_seconds(seconds: float) -> str:
    """``86400``, ``0.5``, ``1e+30``: a number of seconds as a message shows it."""
    if seconds.is_integer() and seconds < 1e12:
        return f"{seconds:.0f}"
    return f"{seconds:.3g}"


def _unit(word: str) -> float | None:
    """Seconds in a unit as written (``s``, ``min``, ``hours``, ``days``): a plural is
    the unit with an ``s``, but ``ms`` is no plural of ``m`` (nor a unit here)."""
    seconds = _UNITS.get(word)
    if seconds is None and len(word) > 2 and word.endswith("s"):
        seconds = _UNITS.get(word[:-1])
    return seconds


def parse_limit(value: str | float | Limit) -> Limit:
    """``"5/s"``, ``"100/min"``, ``"10000/day"``, ``"30 per 5 min"`` or a number per second."""
    if isinstance(value, Limit):
        limit, shown = value, str(value)
    elif isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(
            f"rate {value!r} is not understood; write it like '5/s', '100/min' or '10000/day'"
        )
    elif isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"rate {value!r} must be a positive number of requests per second")
        limit, shown = Limit(float(value), 1.0), f"{value!r}/s"
    else:
        match = _LIMIT.match(value.lower())
        unit = match and _unit(match[3])
        if not match or not unit:
            raise ConfigError(
                f"rate {value!r} is not understood; write it like '5/s', '100/min' or '10000/day'"
            )
        count, multiple = float(match[1]), float(match[2] or 1)
        if count <= 0 or multiple <= 0:
            raise ConfigError(f"rate {value!r} must be positive")
        limit, shown = Limit(count, multiple * unit), repr(value)
    finite = math.isfinite(limit.count) and math.isfinite(limit.period)
    if not finite or limit.count <= 0 or limit.period <= 0:
        raise ConfigError(f"rate {shown} must be a positive, finite number of requests")
    if limit.period / limit.count > _SLOWEST_INTERVAL:
        raise ConfigError(
            f"rate {shown} allows one request every {limit.period / limit.count / 86400:,.0f} "
            "days; a rate must allow at least one request a week"
        )
    return limit


class Outcome(StrEnum):
    """How a request ended, as far as the resource's health is concerned."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    ERROR = "error"  # 5xx, timeout, connection failure: counts against the breaker
    CLIENT_ERROR = "client_error"  # 4xx other than 429: the source is healthy


# listener(resource name, what happened (a sentence), seconds it lasts, kind): kind is
# "paused", "quota", "circuit_open", "circuit_closed" or "rate".
Listener = Callable[[str, str, float, str], None]
# What a resource's collaborators tell its listeners through: (what, seconds, kind).
Tell = Callable[[str, float, str], None]
