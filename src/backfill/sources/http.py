"""An HTTP client for stages, bound to a rate-limited resource, that classifies failures.

* 429, and 5xx: :class:`TransientError`, carrying the ``Retry-After`` hint when sent; a
  429 or a 503 with ``Retry-After`` pauses the whole resource, or, a lone 429 asking a
  second (see :meth:`Resource.observe`), slows it down and holds its own request only;
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

The client's parts live beside it: ``answers`` (classifying an answer, its headers and
JSON body), ``hops`` (a request and its redirects), ``hedging``, ``outage`` (a source
that is down), ``pagination``, ``targets`` (URLs and how messages name them) and
``tally`` (requests per partition).
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
import random
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from typing import Any

import httpx

from backfill.backoff import Backoff
from backfill.clock import Clock, SystemClock, deadline_held
from backfill.errors import ConfigError, StageError, TransientError
from backfill.ratelimit import (
    DEFAULT_MAX_WAIT,
    REFUSED_WAIT,
    LateStart,
    Outcome,
    Resource,
    take_grant,
)
from backfill.secrets import mask_url as redact_url
from backfill.secrets import redact, secret_values
from backfill.sources import CrossOrigin, wire
from backfill.sources.answers import (
    TooDeep,
    decode_json,
    error_of,
    failure_of,
    outcome_of,
    parse_retry_after,
    rate_headers,
)
from backfill.sources.bodies import ACCEPT_ENCODING, DEFAULT_MAX_BODY
from backfill.sources.hedging import Hedge
from backfill.sources.hops import SENT, Call, Hops
from backfill.sources.outage import Outage, SourceDown
from backfill.sources.pagination import (
    Cursor,
    LinkHeader,
    NextUrl,
    Page,
    PageNumber,
    Pagination,
    Walk,
    records_of,
)
from backfill.sources.tally import RequestTally, partition_requests
from backfill.sources.targets import Targets

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
    "partition_requests",
    "preload",
    "redact",
    "redact_url",
    "secret_values",
    "warm",
]

log = logging.getLogger(__name__)

_CROSS_ORIGIN = ("strip", "refuse")

# What a refusal's error is categorised as (a 429, or a 503 asking to wait; a 429 whose
# Retry-After is garbled is held for the second a 429 asks without saying).
_REFUSALS = frozenset({"http_429", "http_503", "bad_header"})
# The waits between a client's own retries of one request: short, since the partition's
# retry policy backs off further; a source's Retry-After hint is waited for up to the cap
# when no resource holds it as a pause.
_RETRY_BACKOFF = Backoff(first=0.2, cap=10.0, jitter=0.5)
# ... and through a resource with a rate: its pace already spaces every retry (a crowd of
# failures cannot retry in lockstep) and its circuit opens on a source that keeps
# failing, so a lone failure is retried at once (12-25 ms); a second one backs off as
# above (0.2-0.4 s, then doubling): a blip of a few hundred milliseconds (a deploy, a
# failover) still finds the retries it needs.
_PACED_FIRST_RETRY = Backoff(first=0.025, cap=0.025, jitter=0.5)

# The deadline of the answer being fetched (see HttpClient._once), which a redirect's
# next hop moves by the time it waits for its turn.
_answer_deadline: contextvars.ContextVar[asyncio.Timeout | None] = contextvars.ContextVar(
    "backfill_answer_deadline", default=None
)


_ssl_lock = threading.Lock()
_ssl: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for the process: loading the CA bundle costs ~20 ms of
    CPU, which httpx would otherwise spend again for every client (one per resource and
    run), HTTPS or not. Made once, by whichever thread asks first (see :func:`warm`)."""
    global _ssl
    with _ssl_lock:
        if _ssl is None:
            _ssl = httpx.create_ssl_context()
        return _ssl


# What httpcore imports on a run's first request, on the event loop: its network backend
# and the anyio parts under it (~15-25 ms of imports, holding the GIL).
_FIRST_REQUEST_MODULES = (
    "sniffio",
    "anyio._core._synchronization",
    "anyio._backends._asyncio",
    "httpcore._backends.anyio",
)


def preload() -> None:
    """Import what httpcore imports on a run's first request (its network backend): on
    the event loop, that held the run's first requests back by 15-25 ms, and the other
    requests of the run's start (its reference tables, sent together) behind it; on a
    thread as the run starts, the import holds the GIL and slowed the run's planning
    down by as much. Called before the run's loop starts (see ``Runner``), once per
    process; a module missing (another httpcore) is imported where httpcore wants it."""
    for name in _FIRST_REQUEST_MODULES:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except ImportError:
                continue


def warm() -> None:
    """Start making the TLS context (:func:`_ssl_context`), when no run made it yet,
    before the run's first client asks for it: loading the CA bundle takes ~20 ms,
    mostly outside the GIL, so on a thread of its own as a run starts (see
    ``Clients.warm``) the run's planning overlaps it, where on the event loop it held
    back the run's first requests (what httpcore imports there is imported before the
    run: see :func:`preload`). Nothing it fails at is a run's failure: the first client
    makes the context again and says what is wrong."""
    if _ssl is None:
        threading.Thread(target=_make_ssl_context, name="backfill-warm", daemon=True).start()


def _make_ssl_context() -> None:
    try:
        _ssl_context()
    except Exception as exc:  # a broken CA bundle: said where the first client fails
        log.debug("warming the HTTP client up failed: %s", exc)


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
        self.secrets = tuple(secrets) + secret_values(headers, params)
        self.targets = Targets(
            resource.name if resource is not None else None,
            base_url=base_url,
            allowed_hosts=allowed_hosts,
            owner=owner,
            secrets=self.secrets,
        )
        self.deadline = deadline if deadline is not None else max(60.0, 4 * timeout)
        if max_wait is None:
            max_wait = resource.max_wait if resource is not None else DEFAULT_MAX_WAIT
        self.max_wait = max_wait
        if transport is None:
            # A fleet's starts are checked where a request is written (see wire).
            transport = httpx.AsyncHTTPTransport(
                verify=_ssl_context(), limits=httpx.Limits(max_connections=max_connections)
            )
            wire.install(transport)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"Accept-Encoding": ACCEPT_ENCODING},
        )
        self.hops = Hops(
            self._client,
            headers=headers,
            params=params,
            cross_origin=cross_origin,
            max_body=max_body,
            observe=self._observe,
            where=self.targets.where,
            source=self.targets.source,
            secrets=self.secrets,
            turn=self._hop_turn if resource is not None else None,
            now=resource.clock.monotonic if resource is not None else None,
        )
        self._outage = Outage(resource) if resource is not None else None
        self.requests = 0
        # Hedging (see _fetch_hedged): GETs through a resource, once latencies are known.
        self.hedging = Hedge(enabled=hedge and resource is not None)
        self.statuses: Counter[int] = Counter()
        self.transport_errors = 0
        self.retried = 0
        self._rng = random.Random()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request; return a 2xx/3xx response or raise a classified error."""
        target = self.targets.resolve(url)
        call = self.targets.call(target)
        response, _ = await self._send(method, target, call, decode=False, **kwargs)
        return response

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        call: Call,
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
                assert self._outage is not None
                async with self._outage.slot(self.max_wait):
                    return await self._once(method, url, call, decode, pagination, hop, kwargs)
            except SourceDown:
                assert self._outage is not None
                raise self._outage.error(None, self.max_wait) from None
            except LateStart:
                # Not sent: its start from the fleet's schedule had gone stale on the way
                # to the wire, or a pause began meanwhile. A new start, not a retry.
                attempt -= 1
                continue
            except TransientError as exc:
                tally = partition_requests.get()
                if tally is not None:
                    tally.last_error = exc.message
                if self.resource is not None:
                    self.resource.last_error = exc.message
                if self._outage is not None and self._outage.resource.breaker.is_open:
                    # The source is down (its circuit is open, maybe since this very
                    # failure): the request waits for it to come back, as every other
                    # does, instead of spending its partition's attempts on an outage;
                    # for max_wait at most, then the partition hears of it.
                    if self._outage.down_for() < self.max_wait:
                        attempt -= 1
                        continue
                    raise self._outage.error(exc, self.max_wait) from None
                if attempt > self.retries:
                    raise
                self.retried += 1
                asked = exc.retry_after if exc.category in _REFUSALS else None
                if asked is not None and self.resource is not None:
                    # The wait a refusal asked for (Retry-After): the resource's pause
                    # holds this request's next turn, or, a lone 429 having slowed the
                    # resource down instead (see Resource.observe), the request waits
                    # alone, not against its partition's timeout. A refusal asking for
                    # nothing (Retry-After: 0, a date already past) is still one: at
                    # least the backoff's first wait.
                    await self._wait_asked(max(asked, _RETRY_BACKOFF.first))
                else:
                    # Back off a little with jitter so a crowd of failures does not
                    # retry in lockstep; another error's Retry-After (a 502's) is a
                    # hint, held to the backoff's cap.
                    hint = exc.retry_after
                    backoff = _RETRY_BACKOFF
                    if hint is not None:
                        hint = min(hint, backoff.cap)
                    elif attempt == 1 and self.resource is not None and self.resource.paces:
                        backoff = _PACED_FIRST_RETRY
                    await backoff.wait(attempt, self.clock, hint=hint, rng=self._rng)

    async def _once(
        self,
        method: str,
        url: httpx.URL,
        call: Call,
        decode: bool,
        pagination: Pagination | None,
        hop: bool,
        kwargs: dict[str, Any],
    ) -> tuple[httpx.Response, Any]:
        self._count_sent(1)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.deadline) as scope:
                token = _answer_deadline.set(scope)
                try:
                    response, body = await self._fetch_hedged(method, url, call, hop, kwargs)
                finally:
                    _answer_deadline.reset(token)
        except LateStart:
            self._not_sent()
            raise
        except (TimeoutError, httpx.TransportError) as exc:
            self._observe(Outcome.ERROR)
            self.transport_errors += 1
            raise failure_of(exc, method, url, self.targets.where, self.deadline) from None
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
            where = self.targets.where(method, response.request.url)
            raise TransientError(
                f"{where}: body {reason} ({len(body)} bytes)",
                category="bad_body",
            ) from None
        if pagination is not None:
            try:
                records_of(value, pagination.data, self.targets.source(response.request.url))
            except TransientError:
                # A source in maintenance answers 200 without its records: a failure for
                # the resource's circuit, which then holds the partitions back instead of
                # letting each burn its retries.
                self._observe(Outcome.ERROR, response)
                raise
        latency = time.monotonic() - started
        self.hedging.latencies.append(latency)
        self._observe(Outcome.OK, response, latency)
        return response, value

    async def _fetch_hedged(
        self, method: str, url: httpx.URL, call: Call, hop: bool, kwargs: dict[str, Any]
    ) -> tuple[httpx.Response, bytes]:
        """One request and its redirects (see :class:`Hops`), with a second copy sent
        when the first is far slower than the source usually is (see :class:`Hedge`).
        The copy takes its own slot and rate token and counts as a request; the first
        answer wins, the other request is cancelled. Idempotent GETs only."""
        wait = self.hedging.after(method, self.deadline)
        if wait is None:
            return await self.hops.fetch(method, url, call, hop, dict(kwargs))
        first = asyncio.create_task(self.hops.fetch(method, url, call, hop, dict(kwargs)))
        # A fleet start granted to this request went with it into its task.
        take_grant()
        return await self.hedging.race(
            first,
            lambda: self._copy(method, url, call, hop, kwargs),
            wait,
            idle=None if self.resource is None else self.resource.idle,
        )

    async def _copy(
        self, method: str, url: httpx.URL, call: Call, hop: bool, kwargs: dict[str, Any]
    ) -> tuple[httpx.Response, bytes]:
        """The hedge: a second copy of a request, under its own slot and rate token. A
        copy found late on its way to the wire (a fleet's start gone stale, a pause begun)
        is not sent: it takes a new start, as any request does (see :meth:`_send`)."""
        assert self.resource is not None
        while True:
            async with self.resource.slot():
                self.hedging.sent += 1
                self._count_sent(1)
                try:
                    return await self.hops.fetch(method, url, call, hop, dict(kwargs))
                except LateStart:
                    self.hedging.sent -= 1
                    self._not_sent()

    def _count_sent(self, requests: int) -> None:
        """``requests`` more sent (fewer, when negative), counted on the client and on
        the partition's tally."""
        self.requests += requests
        tally = partition_requests.get()
        if tally is not None:
            tally.requests += requests

    def _not_sent(self) -> None:
        """The request just counted was found late on its way to the wire
        (:class:`LateStart`) and not sent: uncounted, and its start given back."""
        self._count_sent(-1)
        if self.resource is not None:
            self.resource.unsent()

    async def _hop_turn(self) -> None:
        """A redirect's next hop is a request to a source too: it takes a turn of the
        resource (its rate, quotas, a pause) under the request's own slot, and counts as
        a request. Not of the circuit: the request is past it (its probe, or sent before
        it opened), and its answer is what the breaker hears. The wait does not count
        against the answer's deadline, as no wait for a turn does."""
        assert self.resource is not None
        loop = asyncio.get_running_loop()
        began = loop.time()
        scope = _answer_deadline.get()
        when = scope.when() if scope is not None else None
        if scope is not None and when is not None:
            scope.reschedule(None)  # held while the hop waits, moved by the wait after
        try:
            await self.resource.acquire(circuit=False)
        finally:
            if scope is not None and when is not None:
                scope.reschedule(when + loop.time() - began)
        self._count_sent(1)

    async def _wait_asked(self, seconds: float) -> None:
        """What is left of the ``seconds`` a refused request was asked to wait once the
        resource's pause is counted, waited outside the partition's timeout."""
        assert self.resource is not None
        now = self.resource.clock.monotonic()
        left = seconds - max(0.0, self.resource.paused_until - now)
        if left <= 0.01:
            return
        with deadline_held():
            await self.clock.sleep(left)

    def _classify(self, method: str, response: httpx.Response) -> StageError | None:
        """The error an answer is (None: a success), once the resource heard of it."""
        status = response.status_code
        if status < 400:
            return None
        where = self.targets.where(method, response.request.url)
        header = response.headers.get("Retry-After")
        asked = parse_retry_after(header)
        outcome = outcome_of(status, asked)
        error = error_of(where, status, header, asked, self.max_wait)
        if outcome is Outcome.RATE_LIMITED:
            self._observe(outcome, response, retry_after=asked)
            tally = partition_requests.get()
            if tally is not None:
                tally.rate_limited += 1
            if isinstance(error, TransientError) and error.retry_after is None:
                error.retry_after = REFUSED_WAIT  # what the resource took it to ask
        else:
            self._observe(outcome, response)
        return error

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
        # When the answered request went (this hop's, or this copy's): the rate it says
        # something of is the one run at then.
        sent = response.request.extensions.get(SENT) if response is not None else None
        self.resource.observe(
            outcome,
            retry_after=retry_after,
            sent=sent,
            latency=latency,
            status=response.status_code if response is not None else None,
            **rate_headers(response),
        )

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def get_json(self, url: str, **kwargs: Any) -> Any:
        """GET and decode JSON; a truncated or garbled body is a transient error."""
        target = self.targets.resolve(url)
        _, value = await self._send("GET", target, self.targets.call(target), decode=True, **kwargs)
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
        walk starts there instead of at the first page. A next link (or cursor) already
        fetched in the walk is a ``pagination_loop`` error. Example::

            async for page in ctx.http.paginate(url, pagination=Cursor(), params=q,
                                                resume_from=ctx.checkpoint):
                await ctx.write(page.records)
                await ctx.save_checkpoint(page.next)
        """
        style = pagination or PageNumber()
        start = self.targets.resolve(url)
        call = self.targets.call(start)

        def send(
            target: httpx.URL, *, params: Mapping[str, Any] | None, hop: bool = False
        ) -> Awaitable[tuple[httpx.Response, Any]]:
            return self._send(
                "GET", target, call, decode=True, pagination=style, hop=hop, params=params, **kwargs
            )

        walk = Walk(
            style,
            start,
            dict(params or {}),
            send=send,
            resolve=self.targets.resolve,
            source=self.targets.source,
            leaves=lambda target, what, source: self.hops.leaves(target, call, what, source),
            param_names=self.hops.param_names,
        )
        async for page in walk.pages(resume_from):
            yield page
