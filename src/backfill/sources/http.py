"""An HTTP client for stages that classifies responses into backfill's error classes.

* 429, and 5xx: :class:`TransientError`, carrying the ``Retry-After`` hint when sent;
* timeouts, connection errors, truncated or unparsable bodies: :class:`TransientError`;
* 401 and 403: :class:`FatalError` (credentials will not fix themselves);
* any other 4xx: :class:`PermanentError` for that partition.

Query parameters that look like secrets are redacted from every message.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from typing import Any

import httpx

from backfill.errors import FatalError, PermanentError, TransientError

__all__ = ["HttpClient", "parse_retry_after", "redact_url"]

# A Retry-After longer than this is a broken server, not a plan: wait this long at most.
MAX_RETRY_AFTER = 3600.0
_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")
_SECRET = re.compile(r"(?i)(api[_-]?key|apikey|token|access[_-]?token|secret|password|sig)")


def redact_url(url: str | httpx.URL) -> str:
    """The URL with the values of secret-looking query parameters replaced by ``***``."""
    parsed = httpx.URL(str(url))
    if not parsed.query:
        return str(parsed)
    params = [(k, "***" if _SECRET.search(k) else v) for k, v in parsed.params.multi_items()]
    query = urllib.parse.urlencode(params, safe="*")
    return str(parsed.copy_with(query=query.encode("ascii")))


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


class HttpClient:
    """A pooled ``httpx.AsyncClient`` whose failures are classified for the engine."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            headers=dict(headers or {}),
            transport=transport,
            follow_redirects=True,
        )
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.transport_errors = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request; return a 2xx/3xx response or raise a classified error."""
        self.requests += 1
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            self.transport_errors += 1
            raise TransientError(
                f"{method} {redact_url(exc.request.url)} timed out", category="timeout"
            ) from None
        except httpx.TransportError as exc:
            self.transport_errors += 1
            where = redact_url(exc.request.url) if exc.request else redact_url(url)
            raise TransientError(
                f"{method} {where} failed: {type(exc).__name__}", category="network"
            ) from None
        self.statuses[response.status_code] += 1
        status = response.status_code
        if status < 400:
            return response
        where = f"{method} {redact_url(response.request.url)}"
        if status == 429 or status >= 500:
            raise TransientError(
                f"{where} answered {status}",
                category=f"http_{status}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status in (401, 403):
            raise FatalError(
                f"{where} answered {status}: the source refused our credentials; check the "
                "API key or token",
                category=f"http_{status}",
            )
        raise PermanentError(f"{where} answered {status}", category=f"http_{status}")

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def get_json(self, url: str, **kwargs: Any) -> Any:
        """GET and decode JSON; a truncated or garbled body is a transient error."""
        try:
            response = await self.get(url, **kwargs)
            body = await response.aread()
        except httpx.TransportError:
            # The body itself broke off mid-way.
            self.transport_errors += 1
            raise TransientError(
                f"GET {redact_url(url)}: body cut off", category="truncated"
            ) from None
        try:
            return json.loads(body)
        except ValueError:
            raise TransientError(
                f"GET {redact_url(response.request.url)}: body is not valid JSON "
                f"({len(body)} bytes)",
                category="bad_body",
            ) from None
