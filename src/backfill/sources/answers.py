"""What a source's answer means: its JSON body, its status as a classified error, its
``Retry-After`` and rate-limit headers (garbage in any of them is ignored, not trusted)."""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from backfill.errors import FatalError, PermanentError, StageError, TransientError
from backfill.ratelimit import Outcome, describe_seconds

log = logging.getLogger("backfill.http")

_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")

# orjson decodes a page several times faster than json, but it is stricter (no NaN,
# Infinity, byte-order mark or UTF-16/32) and turns integers beyond 64 bits into floats.
# What it refuses, and any body with a run of 19 digits or more (a number that may not fit
# in 64 bits), goes to json, so every body decodes to what json.loads makes of it.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_MAYBE_WIDE_NUMBER = b"0" * 19


_SCAN = 1 << 16


def _may_hold_wide_number(body: bytes) -> bool:
    """Whether ``body`` has a run of 19 digits or more; scanned in slices that overlap by
    18 bytes, so a large body is never copied whole for it."""
    for start in range(0, len(body), _SCAN):
        piece = body[max(0, start - 18) : start + _SCAN]
        if _MAYBE_WIDE_NUMBER in piece.translate(_DIGITS_AS_ZEROS):
            return True
    return False


class TooDeep(ValueError):
    """JSON nested deeper than the decoder allows."""


def decode_json(body: bytes) -> Any:
    """``body`` decoded as :func:`json.loads` decodes it, faster; ValueError if invalid,
    :class:`TooDeep` if nested deeper than the decoder allows."""
    if not _may_hold_wide_number(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body)
    except RecursionError:
        raise TooDeep("JSON nested deeper than the decoder allows") from None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date); None
    when absent or not one of those (the caller caps what is asked, see ``max_wait``)."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, wait)


def outcome_of(status: int, asked: float | None) -> Outcome:
    """What a failed answer (``status`` 400 or more) tells its resource: a 429, or a 503
    asking to wait (``asked`` seconds), is a refusal; another 5xx an error of the source;
    any other 4xx the request's own fault."""
    if status == 429 or (status == 503 and asked is not None):
        return Outcome.RATE_LIMITED
    if status >= 500:
        return Outcome.ERROR
    return Outcome.CLIENT_ERROR


def error_of(
    where: str, status: int, header: str | None, asked: float | None, max_wait: float
) -> StageError:
    """The error a stage gets for an answer of ``status`` (400 or more) to the request
    ``where``, which asked to wait ``asked`` seconds (its ``Retry-After`` ``header``)."""
    retry_after = None if asked is None else min(asked, max_wait)
    if header is not None and asked is None and status in (429, 503):
        return TransientError(
            f"{where} answered {status} with Retry-After {header[:40]!r}, neither seconds "
            + (
                "nor a date; taken as asking for 1 s"
                if status == 429
                else "nor a date; retried after the usual backoff"
            ),
            category="bad_header",
        )
    if status == 429 or status >= 500:
        capped = ""
        if asked is not None and asked > max_wait:
            capped = (
                f" (Retry-After asked for {describe_seconds(asked)} s, waiting the cap of "
                f"{describe_seconds(max_wait)} s: max_wait=)"
            )
        return TransientError(
            f"{where} answered {status}{capped}",
            category=f"http_{status}",
            retry_after=retry_after,
        )
    if status in (401, 403):
        return FatalError(
            f"{where} answered {status}: the source refused our credentials; check the "
            "API key or token",
            category=f"http_{status}",
        )
    return PermanentError(f"{where} answered {status}", category=f"http_{status}")


def failure_of(
    exc: TimeoutError | httpx.TransportError,
    method: str,
    url: httpx.URL,
    where: Callable[[str, httpx.URL], str],
    deadline: float,
) -> TransientError:
    """The error a request to ``url`` is when it got no answer: no complete one within
    its ``deadline`` (``TimeoutError``), an httpx timeout, or a transport failure
    (``where`` names the request in the message)."""
    if isinstance(exc, TimeoutError):
        return TransientError(
            f"{where(method, url)} timed out: no complete answer within {deadline:g} s (deadline=)",
            category="timeout",
        )
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{where(method, exc.request.url)} timed out", category="timeout")
    failed = where(method, exc.request.url if exc.request else url)
    return TransientError(f"{failed} failed: {type(exc).__name__}", category="network")


def rate_headers(response: httpx.Response | None) -> dict[str, Any]:
    """What an answer's rate-limit headers say, as :meth:`Resource.observe` hears it:
    ``remaining``, ``reset_after``, ``limit`` and ``window`` (None when not said)."""
    remaining = reset = limit = window = None
    if response is not None:
        headers = response.headers
        remaining = _header_number(headers, "RateLimit-Remaining", "X-RateLimit-Remaining")
        reset = _header_number(headers, "RateLimit-Reset", "X-RateLimit-Reset")
        if reset is not None and reset > 1e9:  # an epoch timestamp, not seconds
            reset = max(0.0, reset - time.time())
        limit = _header_number(headers, "RateLimit-Limit", "X-RateLimit-Limit")
        policy = headers.get("RateLimit-Policy")
        if policy and "w=" in policy:
            window = _finite(policy.split("w=")[1].split(";")[0].split(",")[0])
            if not window:
                log.debug("ignored the header RateLimit-Policy: %r", policy[:80])
                window = None
    return {
        "remaining": int(remaining) if remaining is not None else None,
        "reset_after": reset,
        "limit": int(limit) if limit is not None and window else None,
        "window": window,
    }


def _header_number(headers: httpx.Headers, *names: str) -> float | None:
    """The first of ``names`` present, as a finite number of 0 or more; a value that is
    not one (``nan``, ``inf``, ``-3``, ``soon``) is a hint not worth trusting: ignored,
    with one debug line."""
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        number = _finite(value.split(",")[0].split(";")[0])
        if number is None:
            log.debug("ignored the header %s: %r is not a usable number", name, value[:80])
        return number
    return None


def _finite(text: str) -> float | None:
    try:
        number = float(text.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None
