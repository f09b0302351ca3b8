"""An HTTP client for stages, bound to a rate-limited resource, that classifies failures.

* 429, and 5xx: :class:`TransientError`, carrying the ``Retry-After`` hint when sent; a
  429 or a 503 with ``Retry-After`` pauses the whole resource;
* timeouts, connection errors, truncated or unparsable bodies, and pages whose records
  field is missing or not a list: :class:`TransientError` (a maintenance notice answered
  200 is not an empty page);
* 401 and 403: :class:`FatalError` (credentials will not fix themselves);
* any other 4xx: :class:`PermanentError` for that partition.

With ``retries`` > 0 the client retries transient failures itself (each retry takes a new
reservation from the resource) before the partition's own retry policy sees them.
Secret-looking query parameters and every declared secret are redacted from messages.

A source is not trusted with more than it needs. The resource's headers and params (its
credentials) go only to the origins declared for it (``base_url``, ``allowed_hosts``;
else the origin of the URL the stage asked for); a next link or a redirect to any other
origin is followed without them, or refused (``cross_origin``). Redirects are followed
here, hop by hop, not by httpx. Whatever the source sends is bounded: the decoded body
(``max_body``), the time for a whole answer (``deadline``), every wait it asks for (the
resource's ``max_wait``); garbage in a rate-limit header is ignored, not trusted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import email.utils
import hashlib
import json
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from backfill.backoff import Backoff
from backfill.clock import Clock, SystemClock
from backfill.errors import ConfigError, FatalError, PermanentError, StageError, TransientError
from backfill.ratelimit import (
    DEFAULT_MAX_WAIT,
    LateStart,
    Outcome,
    Resource,
    describe_seconds,
    take_grant,
)
from backfill.secrets import mask_url as redact_url
from backfill.secrets import redact, secret_values
from backfill.sources import CrossOrigin, wire
from backfill.sources.bodies import (
    ACCEPT_ENCODING,
    DEFAULT_MAX_BODY,
    BodyTooLarge,
    UndecodableBody,
    describe_size,
    read_body,
)
from backfill.sources.origins import (
    DEFAULT_PORTS,
    Origin,
    absolute,
    allowed_origins,
    merge_query,
    origin_of,
    origin_text,
    query_names,
)

__all__ = [
    "Cursor",
    "HttpClient",
    "LinkHeader",
    "NextUrl",
    "Page",
    "PageNumber",
    "RequestTally",
    "TooDeep",
    "decode_json",
    "parse_retry_after",
    "redact",
    "redact_url",
    "secret_values",
]


@dataclass(slots=True)
class RequestTally:
    """Requests made for one partition, how many the source refused as rate limited, and
    the last transient error it answered."""

    requests: int = 0
    rate_limited: int = 0
    # What the source last did wrong: a stage that times out says it.
    last_error: str | None = None


# The tally of the partition whose task is running (set by the runner).
partition_requests: contextvars.ContextVar[RequestTally | None] = contextvars.ContextVar(
    "backfill_partition_requests", default=None
)

log = logging.getLogger("backfill.http")

# Redirects followed for one request; a chain longer than this is a loop or a trap.
MAX_REDIRECTS = 10
# Hedging: answers remembered for the percentile, how many are needed first, and the
# shortest wait before a second copy goes.
_LATENCY_SAMPLES = 200
_HEDGE_AFTER_SAMPLES = 20
_HEDGE_FLOOR = 0.25
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CROSS_ORIGIN = ("strip", "refuse")
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


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a paginated response: its records, and where the next page starts
    (``next`` is None on the last page; save it as a checkpoint to resume mid-partition)."""

    number: int
    records: list[Any]
    next: str | None
    body: Any


def _field(body: Any, path: str | None) -> Any:
    if path is None:
        return body
    value = body
    for part in path.split("."):
        if not isinstance(value, Mapping):
            raise TransientError(f"response has no field {path!r}", category="bad_body")
        value = value.get(part)
    return value


_MISSING = object()


def _records(body: Any, path: str | None, source: str) -> list[Any]:
    """The records of a page: the list at ``path`` (the body itself when None).

    A present, empty list is an empty page. A missing field, or one that is not a list,
    is a bad body (a maintenance notice, an error object, a wrong field name): transient,
    so it is retried, and never taken for an empty or last page.
    """
    value = body
    if path is not None:
        for part in path.split("."):
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
            if value is _MISSING:
                raise TransientError(
                    f"field {path!r} not in the response from {source}", category="bad_body"
                )
    if not isinstance(value, list):
        what = "the response" if path is None else f"field {path!r} of the response"
        found = (
            "null" if value is None else "an object" if isinstance(value, Mapping) else "a value"
        )
        raise TransientError(
            f"{what} from {source} is {found}, not a list of records", category="bad_body"
        )
    return value


@dataclass(frozen=True, slots=True)
class PageNumber:
    """``?page=1,2,...`` until ``total_pages`` (a body field) is reached or a page is empty."""

    page_param: str = "page"
    data: str | None = "data"
    total_pages: str | None = "pages"
    start: int = 1


@dataclass(frozen=True, slots=True)
class Cursor:
    """An opaque cursor from the body (``next_field``) sent back as ``cursor_param``."""

    cursor_param: str = "cursor"
    next_field: str = "next_cursor"
    data: str | None = "data"


@dataclass(frozen=True, slots=True)
class NextUrl:
    """The body names the next page's URL (absolute or relative) in ``next_field``."""

    next_field: str = "next"
    data: str | None = "data"


@dataclass(frozen=True, slots=True)
class LinkHeader:
    """RFC 8288 ``Link: <url>; rel="next"`` headers (GitHub style)."""

    data: str | None = None


Pagination = PageNumber | Cursor | NextUrl | LinkHeader


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


@dataclass(frozen=True, slots=True)
class _Call:
    """Where one call of a stage (a request, or a walk of pages) may take what.

    ``origins`` get the resource's credentials; ``own`` (those and the origin of the URL
    the stage passed) also get the call's own headers, cookies and auth.
    """

    origins: frozenset[Origin]
    own: frozenset[Origin]


# The waits between a client's own retries of one request: short, since the partition's
# retry policy backs off further; a source's Retry-After hint is waited for up to the cap
# when no resource holds it as a pause.
_RETRY_BACKOFF = Backoff(first=0.2, cap=10.0, jitter=0.5)


class _SourceDown(Exception):
    """A request's resource has been down (its circuit open) for longer than its
    ``max_wait``."""


class HttpClient:
    """A pooled ``httpx.AsyncClient``, optionally bound to a :class:`Resource`.

    ``headers`` and ``params`` are the resource's credentials: sent only to the origins of
    ``base_url`` and ``allowed_hosts`` (when neither is given, to the origin of the URL
    the stage asked for). A next link or redirect elsewhere is followed without them
    (``cross_origin="strip"``) or refused (``"refuse"``). A relative URL is appended to
    ``base_url``'s path, as httpx does. Bodies above ``max_body`` bytes (decoded) fail
    their request, as does an answer not complete within ``deadline`` seconds (default:
    four times ``timeout``, at least 60); waits a source asks for are capped at
    ``max_wait`` (the resource's, when bound to one). The waits between the client's own
    retries are kept on ``clock`` (by default the resource's).
    """

    def __init__(
        self,
        *,
        resource: Resource | None = None,
        timeout: float = 30.0,
        retries: int = 0,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
        base_url: str | None = None,
        allowed_hosts: Iterable[str] = (),
        cross_origin: CrossOrigin = "strip",
        max_body: int = DEFAULT_MAX_BODY,
        deadline: float | None = None,
        max_wait: float | None = None,
        hedge: bool = True,
        clock: Clock | None = None,
    ) -> None:
        owner = f"resource {resource.name!r}" if resource is not None else "the HTTP client"
        if cross_origin not in _CROSS_ORIGIN:
            raise ConfigError(f"{owner}: cross_origin must be 'strip' or 'refuse'")
        self.resource = resource
        self.retries = retries
        # The run's clock: the waits between this client's own retries are kept on it.
        self.clock: Clock = clock or (resource.clock if resource is not None else SystemClock())
        self.base_url = absolute(base_url, f"{owner}: base_url") if base_url else None
        self._declared = allowed_origins(base_url, allowed_hosts, owner=owner)
        self.cross_origin = cross_origin
        self.max_body = max_body
        self.deadline = deadline if deadline is not None else max(60.0, 4 * timeout)
        if max_wait is None:
            max_wait = resource.max_wait if resource is not None else DEFAULT_MAX_WAIT
        self.max_wait = max_wait
        if transport is None:
            # A fleet's starts are checked where a request is written (see wire).
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=max_connections)
            )
            wire.install(transport)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"Accept-Encoding": ACCEPT_ENCODING},
        )
        self._headers = dict(headers or {})
        self._params = dict(params or {})
        self._param_names = query_names(self._params)
        self.secrets = tuple(secrets) + secret_values(headers, params)
        self.requests = 0
        # Hedging (see _fetch_hedged): GETs through a resource, once latencies are known.
        self.hedge = hedge and resource is not None
        self.hedged = 0  # second copies sent
        self.hedges_won = 0  # ... that answered first
        self._latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self.statuses: Counter[int] = Counter()
        self.transport_errors = 0
        self.retried = 0
        self._rng = random.Random()

    def _where(self, method: str, url: str | httpx.URL) -> str:
        prefix = f"resource {self.resource.name}: " if self.resource is not None else ""
        return prefix + redact(f"{method} {redact_url(url)}", self.secrets)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request; return a 2xx/3xx response or raise a classified error."""
        target = self._resolve(url)
        response, _ = await self._send(method, target, self._call(target), decode=False, **kwargs)
        return response

    def _source(self, url: str | httpx.URL) -> str:
        prefix = f"resource {self.resource.name}: " if self.resource is not None else ""
        return prefix + redact(redact_url(url), self.secrets)

    def _resolve(self, url: str | httpx.URL) -> httpx.URL:
        """The absolute URL a stage means: a relative one is appended to ``base_url``."""
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise PermanentError(f"{url!r} is not a URL ({exc})", category="bad_url") from None
        if target.is_relative_url:
            if self.base_url is None:
                owner = f"resource {self.resource.name}" if self.resource else "ctx.http"
                raise PermanentError(
                    f"{redact(redact_url(target), self.secrets)} is a relative URL and "
                    f"{owner} has no base_url; declare base_url= on the resource or pass "
                    "an absolute URL",
                    category="bad_url",
                )
            path = self.base_url.raw_path.rstrip(b"/") + b"/" + target.raw_path.lstrip(b"/")
            target = self.base_url.copy_with(raw_path=path)
        if target.scheme not in DEFAULT_PORTS:
            raise PermanentError(
                f"{self._source(target)}: only http and https URLs can be fetched",
                category="bad_url",
            )
        return target

    def _call(self, url: httpx.URL) -> _Call:
        own = origin_of(url)
        origins = self._declared or frozenset({own})
        return _Call(origins, origins | {own})

    def _leaves(
        self,
        target: httpx.URL,
        call: _Call,
        what: str,
        source: httpx.URL,
        response: httpx.Response | None = None,
    ) -> None:
        """Refuse a link or redirect that leaves the call's origins, when so declared
        (``response``: the redirect, answered, which the resource hears of)."""
        if self.cross_origin != "refuse" or origin_of(target) in call.own:
            return
        if response is not None:
            self._observe(Outcome.CLIENT_ERROR, response)
        raise PermanentError(
            f"{self._source(source)}: the {what} leads to another origin, "
            f"{origin_text(origin_of(target))}, and cross_origin='refuse'; add it to "
            "allowed_hosts=[...] to send it the credentials, or set cross_origin='strip' "
            "to follow it without them",
            category="cross_origin",
        )

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        call: _Call,
        *,
        decode: bool,
        pagination: Pagination | None = None,
        hop: bool = False,
        **kwargs: Any,
    ) -> tuple[httpx.Response, Any]:
        """Send with the client's retries; with ``pagination``, a body without its records
        is a transient bad body too, retried like a truncated one. ``hop``: the URL came
        from the source (a next link), not from the stage."""
        attempt = 0
        while True:
            attempt += 1
            try:
                if self.resource is None:
                    return await self._once(method, url, call, decode, pagination, hop, kwargs)
                if not self.resource.breaker.is_open:
                    async with self.resource.slot():
                        return await self._once(method, url, call, decode, pagination, hop, kwargs)
                # The source is down: wait for its circuit (behind the probes) until it
                # has been down for max_wait, not for as long as the outage lasts.
                async with self._while_down():
                    return await self._once(method, url, call, decode, pagination, hop, kwargs)
            except _SourceDown:
                raise self._down(None) from None
            except LateStart:
                # Not sent: its start from the fleet's schedule had gone stale on the way
                # to the wire. A new start, not a retry.
                attempt -= 1
                continue
            except TransientError as exc:
                tally = partition_requests.get()
                if tally is not None:
                    tally.last_error = exc.message
                if self.resource is not None:
                    self.resource.last_error = exc.message
                if self.resource is not None and self.resource.breaker.is_open:
                    # The source is down (its circuit is open, maybe since this very
                    # failure): the request waits for it to come back, as every other
                    # does, instead of spending its partition's attempts on an outage;
                    # for max_wait at most, then the partition hears of it.
                    if self._down_for() < self.max_wait:
                        attempt -= 1
                        continue
                    raise self._down(exc) from None
                if attempt > self.retries:
                    raise
                self.retried += 1
                # A pause (Retry-After) is already on the resource; otherwise back off a
                # little with jitter so a crowd of failures does not retry in lockstep.
                if exc.retry_after is None or self.resource is None:
                    hint = exc.retry_after
                    if hint is not None:
                        hint = min(hint, _RETRY_BACKOFF.cap)
                    await _RETRY_BACKOFF.wait(attempt, self.clock, hint=hint, rng=self._rng)

    @contextlib.asynccontextmanager
    async def _while_down(self) -> AsyncIterator[None]:
        """A slot on a resource whose circuit is open, waited for until the source has
        been down for ``max_wait``; past that, only the probe's turn is taken (the
        source may be back), any other request fails at once."""
        assert self.resource is not None
        budget = self.max_wait - self._down_for()
        if budget <= 0:
            breaker = self.resource.breaker
            ready = (
                not breaker.probing and (breaker.open_until or 0) <= self.resource.clock.monotonic()
            )
            if not ready:
                raise _SourceDown
            budget = 1.0
        try:
            async with asyncio.timeout(budget) as limit:
                async with self.resource.slot():
                    limit.reschedule(None)
                    yield
        except TimeoutError:
            if limit.expired():
                raise _SourceDown from None
            raise

    def _down_for(self) -> float:
        """How long the resource's source has been down (its circuit open), in seconds."""
        assert self.resource is not None
        since = self.resource.down_since
        return 0.0 if since is None else self.resource.clock.monotonic() - since

    def _down(self, exc: TransientError | None) -> TransientError:
        """The error for a request that found its source down (its circuit open) for
        longer than ``max_wait``: for how long, and what the source last did wrong."""
        assert self.resource is not None
        tally = partition_requests.get()
        last = exc.message if exc is not None else (tally.last_error if tally else None)
        last = last or self.resource.last_error
        down = describe_seconds(round(self._down_for(), 1))
        said = f"; its last error: {last}" if last else ""
        return TransientError(
            f"resource {self.resource.name}: the source has been down (its circuit open) for "
            f"{down} s, longer than max_wait={describe_seconds(self.max_wait)} s{said}",
            category=exc.category if exc is not None else "unavailable",
        )

    async def _once(
        self,
        method: str,
        url: httpx.URL,
        call: _Call,
        decode: bool,
        pagination: Pagination | None,
        hop: bool,
        kwargs: dict[str, Any],
    ) -> tuple[httpx.Response, Any]:
        self.requests += 1
        tally = partition_requests.get()
        if tally is not None:
            tally.requests += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.deadline):
                response, body = await self._fetch_hedged(method, url, call, hop, kwargs)
        except LateStart:
            self.requests -= 1
            if tally is not None:
                tally.requests -= 1
            if self.resource is not None:
                self.resource.unsent()
            raise
        except TimeoutError:
            self._observe(Outcome.ERROR)
            self.transport_errors += 1
            raise TransientError(
                f"{self._where(method, url)} timed out: no complete answer within "
                f"{self.deadline:g} s (deadline=)",
                category="timeout",
            ) from None
        except httpx.TimeoutException as exc:
            self._observe(Outcome.ERROR)
            self.transport_errors += 1
            raise TransientError(
                f"{self._where(method, exc.request.url)} timed out", category="timeout"
            ) from None
        except httpx.TransportError as exc:
            self._observe(Outcome.ERROR)
            self.transport_errors += 1
            where = self._where(method, exc.request.url if exc.request else url)
            raise TransientError(
                f"{where} failed: {type(exc).__name__}", category="network"
            ) from None
        status = response.status_code
        self.statuses[status] += 1
        error = self._classify(method, response)
        if error is not None:
            raise error
        if not decode:
            self._observe(Outcome.OK, response, time.monotonic() - started)
            return response, None
        try:
            value = decode_json(body)
        except ValueError as exc:
            self._observe(Outcome.ERROR, response)
            reason = (
                "is JSON nested too deeply" if isinstance(exc, TooDeep) else "is not valid JSON"
            )
            raise TransientError(
                f"{self._where(method, response.request.url)}: body {reason} ({len(body)} bytes)",
                category="bad_body",
            ) from None
        if pagination is not None:
            try:
                _records(value, pagination.data, self._source(response.request.url))
            except TransientError:
                # A source in maintenance answers 200 without its records: a failure for
                # the resource's circuit, which then holds the partitions back instead of
                # letting each burn its retries.
                self._observe(Outcome.ERROR, response)
                raise
        latency = time.monotonic() - started
        self._latencies.append(latency)
        self._observe(Outcome.OK, response, latency)
        return response, value

    def _build(
        self, method: str, url: httpx.URL, call: _Call, kwargs: dict[str, Any], *, stage_url: bool
    ) -> tuple[httpx.Request, Any]:
        """The request for one hop, and the auth to send it with: the resource's
        credentials only to its origins, the call's own extras only to the call's."""
        origin = origin_of(url)
        trusted, own = origin in call.origins, origin in call.own
        params = httpx.QueryParams(kwargs.pop("params", None) or {})
        if not own:
            params = httpx.QueryParams()
        if trusted:
            url = merge_query(url, params.merge(self._params))
        else:
            # A credential echoed into a link must not go where credentials don't.
            url = merge_query(url, params, () if stage_url else self._param_names)
        headers = httpx.Headers(self._headers if trusted else {})
        extra_headers = kwargs.pop("headers", None)
        cookies = kwargs.pop("cookies", None)
        auth = kwargs.pop("auth", None)
        if own:
            headers.update(extra_headers or {})
        request = self._client.build_request(
            method, url, headers=headers, cookies=cookies if own else None, **kwargs
        )
        return request, auth if own else None

    def _hedge_after(self, method: str) -> float | None:
        """How long a GET may take before a second copy is sent: three times the 95th
        percentile of this resource's recent answers, at least a quarter second and at
        most half the request's deadline; None when it is not hedged."""
        if not self.hedge or method != "GET" or len(self._latencies) < _HEDGE_AFTER_SAMPLES:
            return None
        ordered = sorted(self._latencies)
        p95 = ordered[int(0.95 * (len(ordered) - 1))]
        return min(max(_HEDGE_FLOOR, 3.0 * p95), self.deadline / 2)

    async def _fetch_hedged(
        self, method: str, url: httpx.URL, call: _Call, hop: bool, kwargs: dict[str, Any]
    ) -> tuple[httpx.Response, bytes]:
        """:meth:`_fetch`, with a second copy sent when the first is far slower than the
        source usually is (a stalled page near the end of a run must not cost the whole
        timeout). The copy takes its own slot and rate token and counts as a request;
        the first answer wins, the other request is cancelled. Idempotent GETs only."""
        wait = self._hedge_after(method)
        if wait is None:
            return await self._fetch(method, url, call, hop, dict(kwargs))
        first = asyncio.create_task(self._fetch(method, url, call, hop, dict(kwargs)))
        # A fleet start granted to this request went with it into its task.
        take_grant()
        racers = {first}
        try:
            done, _ = await asyncio.wait(racers, timeout=wait)
            if not done:
                racers.add(asyncio.create_task(self._copy(method, url, call, hop, kwargs)))
            while True:
                done, pending = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is first or task.exception() is None:
                        if task is not first:
                            self.hedges_won += 1
                        return task.result()
                # The copy failed (it could not start, say): the first still runs.
                racers = pending
        finally:
            for task in racers:
                task.cancel()
            for task in racers:
                with contextlib.suppress(BaseException):
                    await task

    async def _copy(
        self, method: str, url: httpx.URL, call: _Call, hop: bool, kwargs: dict[str, Any]
    ) -> tuple[httpx.Response, bytes]:
        """The hedge: a second copy of a request, under its own slot and rate token."""
        assert self.resource is not None
        async with self.resource.slot():
            self.hedged += 1
            self.requests += 1
            tally = partition_requests.get()
            if tally is not None:
                tally.requests += 1
            return await self._fetch(method, url, call, hop, dict(kwargs))

    async def _fetch(
        self, method: str, url: httpx.URL, call: _Call, hop: bool, kwargs: dict[str, Any]
    ) -> tuple[httpx.Response, bytes]:
        """One request and its redirects, followed here so that each hop's origin is
        checked; the last answer and its whole (bounded, decoded) body."""
        follow = kwargs.pop("follow_redirects", True)
        visited: set[str] = set()
        stage_url = not hop
        for _ in range(MAX_REDIRECTS + 1):
            visited.add(str(merge_query(url, None, self._param_names)))
            request, auth = self._build(method, url, call, dict(kwargs), stage_url=stage_url)
            response = await self._client.send(request, auth=auth, stream=True)
            if not follow or response.status_code not in _REDIRECT_STATUSES:
                return response, await self._body(method, response)
            await response.aclose()
            target = self._location(method, response)
            if str(merge_query(target, None, self._param_names)) in visited:
                self._observe(Outcome.CLIENT_ERROR, response)
                raise PermanentError(
                    f"{self._source(response.request.url)} redirects to "
                    f"{self._source(target)}, already visited in this request: a redirect "
                    "loop",
                    category="redirect_loop",
                )
            self._leaves(target, call, "redirect", response.request.url, response)
            if response.status_code == 303 or (
                response.status_code in (301, 302) and method == "POST"
            ):
                method = "GET" if method != "HEAD" else method
                for name in ("content", "data", "files", "json"):
                    kwargs.pop(name, None)
            # The Location is the whole URL: the call's params were for the first hop.
            kwargs.pop("params", None)
            url, stage_url = target, False
        self._observe(Outcome.CLIENT_ERROR)
        raise PermanentError(
            f"{self._where(method, url)}: more than {MAX_REDIRECTS} redirects",
            category="redirect_loop",
        )

    def _location(self, method: str, response: httpx.Response) -> httpx.URL:
        """Where a redirect leads; a permanent ``bad_header`` when it does not say."""
        location = response.headers.get("Location", "")
        try:
            target = response.url.join(location) if location.strip() else None
        except httpx.InvalidURL:
            target = None
        if target is None or target.scheme not in DEFAULT_PORTS:
            self._observe(Outcome.CLIENT_ERROR, response)
            raise PermanentError(
                f"{self._where(method, response.request.url)} answered "
                f"{response.status_code} without a usable Location header "
                f"({redact(location[:80], self.secrets)!r})",
                category="bad_header",
            )
        return target

    async def _body(self, method: str, response: httpx.Response) -> bytes:
        """The decoded body, within ``max_body`` (see :mod:`backfill.sources.bodies`)."""
        try:
            return await read_body(response, self.max_body)
        except BodyTooLarge:
            raise self._too_large(self._where(method, response.request.url), response) from None
        except UndecodableBody as exc:
            self._observe(Outcome.ERROR, response)
            raise TransientError(
                f"{self._where(method, response.request.url)}: {exc}", category="bad_body"
            ) from None

    def _too_large(self, where: str, response: httpx.Response) -> PermanentError:
        self._observe(Outcome.ERROR, response)
        return PermanentError(
            f"{where}: the body is larger than {describe_size(self.max_body)} (max_body=); raise "
            "max_body on the resource if that is expected",
            category="body_too_large",
        )

    def _classify(self, method: str, response: httpx.Response) -> StageError | None:
        status = response.status_code
        if status < 400:
            return None
        where = self._where(method, response.request.url)
        header = response.headers.get("Retry-After")
        asked = parse_retry_after(header)
        retry_after = None if asked is None else min(asked, self.max_wait)
        garbage = header is not None and asked is None and status in (429, 503)
        if status == 429 or (status == 503 and asked is not None):
            self._observe(Outcome.RATE_LIMITED, response, retry_after=asked)
            tally = partition_requests.get()
            if tally is not None:
                tally.rate_limited += 1
        elif status >= 500:
            self._observe(Outcome.ERROR, response)
        else:
            self._observe(Outcome.CLIENT_ERROR, response)
        if garbage:
            return TransientError(
                f"{where} answered {status} with Retry-After {header[:40]!r}, neither seconds "
                "nor a date; retried after the usual backoff",
                category="bad_header",
            )
        if status == 429 or status >= 500:
            capped = ""
            if asked is not None and asked > self.max_wait:
                capped = (
                    f" (Retry-After asked for {describe_seconds(asked)} s, waiting the cap of "
                    f"{describe_seconds(self.max_wait)} s: max_wait=)"
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

    def _observe(
        self,
        outcome: Outcome,
        response: httpx.Response | None = None,
        latency: float | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        if self.resource is None:
            return
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
        self.resource.observe(
            outcome,
            retry_after=retry_after,
            remaining=int(remaining) if remaining is not None else None,
            reset_after=reset,
            limit=int(limit) if limit is not None and window else None,
            window=window,
            latency=latency,
        )

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def get_json(self, url: str, **kwargs: Any) -> Any:
        """GET and decode JSON; a truncated or garbled body is a transient error."""
        target = self._resolve(url)
        _, value = await self._send("GET", target, self._call(target), decode=True, **kwargs)
        return value

    def _loop(self, fetched: set[bytes], url: httpx.URL, what: str, source: httpx.URL) -> None:
        """Note ``url`` as fetched in this walk; a PermanentError if it already was."""
        key = hashlib.blake2b(
            str(merge_query(url, None, self._param_names)).encode(), digest_size=16
        ).digest()
        if key in fetched:
            raise PermanentError(
                f"{self._source(source)}: {what} {self._source(url)} was already fetched in "
                "this partition; the source's pagination loops",
                category="pagination_loop",
            )
        fetched.add(key)

    async def paginate(
        self,
        url: str,
        *,
        pagination: Pagination | None = None,
        params: Mapping[str, Any] | None = None,
        resume_from: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Page]:
        """Fetch page after page; yield each :class:`Page`.

        ``resume_from`` is a ``Page.next`` saved earlier (e.g. ``ctx.checkpoint``): the
        walk starts there instead of at the first page. A next link (or cursor) already
        fetched in the walk is a ``pagination_loop`` error. Example::

            async for page in ctx.http.paginate(url, pagination=Cursor(), params=q,
                                                resume_from=ctx.checkpoint):
                await ctx.write(page.records)
                await ctx.save_checkpoint(page.next)
        """
        style = pagination or PageNumber()
        query = dict(params or {})
        number = 1
        start = self._resolve(url)
        call = self._call(start)
        fetched: set[bytes] = set()
        if isinstance(style, PageNumber):
            page_no = int(resume_from) if resume_from else style.start
            while True:
                response, body = await self._send(
                    "GET",
                    start,
                    call,
                    decode=True,
                    pagination=style,
                    params={**query, style.page_param: page_no},
                    **kwargs,
                )
                records = _records(body, style.data, self._source(response.url))
                total = _field(body, style.total_pages) if style.total_pages else None
                last = not records or (isinstance(total, int) and page_no >= total)
                yield Page(number, records, None if last else str(page_no + 1), body)
                if last:
                    return
                page_no += 1
                number += 1
        elif isinstance(style, Cursor):
            cursor = resume_from
            while True:
                q = {**query, style.cursor_param: cursor} if cursor else query
                self._loop(fetched, merge_query(start, q), "cursor", start)
                response, body = await self._send(
                    "GET", start, call, decode=True, pagination=style, params=q, **kwargs
                )
                cursor_value = _field(body, style.next_field)
                cursor = str(cursor_value) if cursor_value not in (None, "") else None
                yield Page(
                    number, _records(body, style.data, self._source(response.url)), cursor, body
                )
                if cursor is None:
                    return
                number += 1
        else:
            next_url: httpx.URL | None = start
            first = resume_from is None
            if resume_from:
                next_url = self._resolve(resume_from)
                self._leaves(next_url, call, "saved next link", start)
            while next_url is not None:
                page_params = query if first else None
                self._loop(fetched, merge_query(next_url, page_params), "next link", next_url)
                response, body = await self._send(
                    "GET",
                    next_url,
                    call,
                    decode=True,
                    pagination=style,
                    hop=not first,
                    params=page_params,
                    **kwargs,
                )
                first = False
                found = self._next_link(response, body, style)
                yield Page(
                    number,
                    _records(body, style.data, self._source(response.url)),
                    None if found is None else str(found),
                    body,
                )
                if found is not None:
                    self._leaves(found, call, "next link", response.url)
                next_url = found
                number += 1

    def _next_link(
        self, response: httpx.Response, body: Any, style: NextUrl | LinkHeader
    ) -> httpx.URL | None:
        """The next page's URL, absolute, without the resource's params (they are added
        again where they may go, so none is saved in a checkpoint)."""
        if isinstance(style, NextUrl):
            link = _field(body, style.next_field)
        else:
            link = response.links.get("next", {}).get("url")
        if link in (None, ""):
            return None
        if not isinstance(link, str):
            raise TransientError(
                f"the next link in the response from {self._source(response.url)} is not a URL",
                category="bad_body",
            )
        try:
            found = response.url.join(link)
        except httpx.InvalidURL:
            raise TransientError(
                f"the next link in the response from {self._source(response.url)} is not a URL",
                category="bad_body",
            ) from None
        return merge_query(found, None, self._param_names)
