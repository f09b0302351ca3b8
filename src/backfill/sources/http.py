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
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import json
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from backfill.errors import FatalError, PermanentError, StageError, TransientError
from backfill.ratelimit import LateStart, Outcome, Resource
from backfill.secrets import mask_url as redact_url
from backfill.secrets import redact, secret_values
from backfill.sources import wire

__all__ = [
    "Cursor",
    "HttpClient",
    "LinkHeader",
    "NextUrl",
    "Page",
    "PageNumber",
    "RequestTally",
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

# A Retry-After longer than this is a broken server, not a plan: wait this long at most.
MAX_RETRY_AFTER = 3600.0
_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")


# orjson decodes a page several times faster than json, but it is stricter (no NaN,
# Infinity, byte-order mark or UTF-16/32) and turns integers beyond 64 bits into floats.
# What it refuses, and any body with a run of 19 digits or more (a number that may not fit
# in 64 bits), goes to json, so every body decodes to what json.loads makes of it.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_MAYBE_WIDE_NUMBER = b"0" * 19


def decode_json(body: bytes) -> Any:
    """``body`` decoded as :func:`json.loads` decodes it, faster; ValueError if invalid."""
    if _MAYBE_WIDE_NUMBER not in body.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, wait), MAX_RETRY_AFTER)


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
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value.split(",")[0].split(";")[0].strip())
        except ValueError:
            continue
    return None


class HttpClient:
    """A pooled ``httpx.AsyncClient``, optionally bound to a :class:`Resource`."""

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
    ) -> None:
        self.resource = resource
        self.retries = retries
        if transport is None:
            # A fleet's starts are checked where a request is written (see wire).
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=max_connections)
            )
            wire.install(transport)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            headers=dict(headers or {}),
            params=dict(params or {}),
            transport=transport,
            follow_redirects=True,
        )
        self.secrets = tuple(secrets) + secret_values(headers, params)
        self.requests = 0
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
        response, _ = await self._send(method, url, decode=False, **kwargs)
        return response

    def _source(self, url: str | httpx.URL) -> str:
        prefix = f"resource {self.resource.name}: " if self.resource is not None else ""
        return prefix + redact(redact_url(url), self.secrets)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        decode: bool,
        pagination: Pagination | None = None,
        **kwargs: Any,
    ) -> tuple[httpx.Response, Any]:
        """Send with the client's retries; with ``pagination``, a body without its records
        is a transient bad body too, retried like a truncated one."""
        attempt = 0
        while True:
            attempt += 1
            try:
                if self.resource is not None:
                    async with self.resource.slot():
                        return await self._once(method, url, decode, pagination, **kwargs)
                return await self._once(method, url, decode, pagination, **kwargs)
            except LateStart:
                # Not sent: its start from the fleet's schedule had gone stale on the way
                # to the wire. A new start, not a retry.
                attempt -= 1
                continue
            except TransientError as exc:
                tally = partition_requests.get()
                if tally is not None:
                    tally.last_error = exc.message
                if attempt > self.retries:
                    raise
                self.retried += 1
                # A pause (Retry-After) is already on the resource; otherwise back off a
                # little with jitter so a crowd of failures does not retry in lockstep.
                if exc.retry_after is None or self.resource is None:
                    base = exc.retry_after if exc.retry_after is not None else 0.1 * 2**attempt
                    await asyncio.sleep(self._rng.uniform(0.5, 1.0) * min(base, 10.0))

    async def _once(
        self,
        method: str,
        url: str,
        decode: bool,
        pagination: Pagination | None = None,
        **kwargs: Any,
    ) -> tuple[httpx.Response, Any]:
        self.requests += 1
        tally = partition_requests.get()
        if tally is not None:
            tally.requests += 1
        started = time.monotonic()
        try:
            response = await self._client.request(method, url, **kwargs)
            body = await response.aread()
        except LateStart:
            self.requests -= 1
            if tally is not None:
                tally.requests -= 1
            if self.resource is not None:
                self.resource.unsent()
            raise
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
        except ValueError:
            self._observe(Outcome.ERROR, response)
            raise TransientError(
                f"{self._where(method, response.request.url)}: body is not valid JSON "
                f"({len(body)} bytes)",
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
        self._observe(Outcome.OK, response, time.monotonic() - started)
        return response, value

    def _classify(self, method: str, response: httpx.Response) -> StageError | None:
        status = response.status_code
        if status < 400:
            return None
        where = self._where(method, response.request.url)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429 or (status == 503 and retry_after is not None):
            self._observe(Outcome.RATE_LIMITED, response, retry_after=retry_after)
            tally = partition_requests.get()
            if tally is not None:
                tally.rate_limited += 1
        elif status >= 500:
            self._observe(Outcome.ERROR, response)
        else:
            self._observe(Outcome.CLIENT_ERROR, response)
        if status == 429 or status >= 500:
            return TransientError(
                f"{where} answered {status}", category=f"http_{status}", retry_after=retry_after
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
                try:
                    window = float(policy.split("w=")[1].split(";")[0].split(",")[0])
                except ValueError:
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
        _, value = await self._send("GET", url, decode=True, **kwargs)
        return value

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
        walk starts there instead of at the first page. Example::

            async for page in ctx.http.paginate(url, pagination=Cursor(), params=q,
                                                resume_from=ctx.checkpoint):
                await ctx.write(page.records)
                await ctx.save_checkpoint(page.next)
        """
        style = pagination or PageNumber()
        query = dict(params or {})
        number = 1
        next_url: str | None = url
        if isinstance(style, PageNumber):
            page_no = int(resume_from) if resume_from else style.start
            while True:
                response, body = await self._send(
                    "GET",
                    url,
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
                response, body = await self._send(
                    "GET", url, decode=True, pagination=style, params=q, **kwargs
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
            next_url = resume_from or url
            first = resume_from is None
            while next_url is not None:
                page_params: dict[str, Any] | None = query if first else None
                first = False
                response, body = await self._send(
                    "GET", next_url, decode=True, pagination=style, params=page_params, **kwargs
                )
                if isinstance(style, NextUrl):
                    link = _field(body, style.next_field)
                    found = str(response.url.join(str(link))) if link else None
                else:
                    link_next = response.links.get("next", {}).get("url")
                    found = str(response.url.join(link_next)) if link_next else None
                yield Page(
                    number, _records(body, style.data, self._source(response.url)), found, body
                )
                next_url = found
                number += 1
