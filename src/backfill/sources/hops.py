"""One request and its redirects, hop by hop: what each hop may carry, where a redirect
leads, and its bounded body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from backfill.errors import PermanentError, TransientError
from backfill.ratelimit import Outcome
from backfill.secrets import redact
from backfill.sources import CrossOrigin
from backfill.sources.bodies import BodyTooLarge, UndecodableBody, describe_size, read_body
from backfill.sources.origins import (
    DEFAULT_PORTS,
    Origin,
    merge_query,
    origin_of,
    origin_text,
    query_names,
)

# Redirects followed for one request; a chain longer than this is a loop or a trap.
MAX_REDIRECTS = 10
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class Call:
    """Where one call of a stage (a request, or a walk of pages) may take what.

    ``origins`` get the resource's credentials; ``own`` (those and the origin of the URL
    the stage passed) also get the call's own headers, cookies and auth.
    """

    origins: frozenset[Origin]
    own: frozenset[Origin]


class Observe(Protocol):
    """Tell the client's resource how an answer (or a request without one) went."""

    def __call__(self, outcome: Outcome, response: httpx.Response | None = None) -> None: ...


# The request extension holding the instant a request went, on its resource's clock.
SENT = "backfill_sent"


class Hops:
    """Sends one request and follows its redirects here, not in httpx, so that each hop's
    origin is checked: the resource's credentials (``headers``, ``params``) go only to
    its origins, a call's own extras only to the call's, and a hop elsewhere is followed
    without them or refused (``cross_origin``). A body is read within ``max_body``.

    The client lends it its ``observe``, how a request (``where``) and a URL
    (``source``) are named in messages, and ``turn``: each hop after the first is a
    request to a source too, and takes a turn of the resource (its rate, a pause, the
    circuit) before it goes, as the first did. With ``now`` (the resource's clock), each
    request sent carries the instant it went in its extensions (``SENT``).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        cross_origin: CrossOrigin,
        max_body: int,
        observe: Observe,
        where: Callable[[str, str | httpx.URL], str],
        source: Callable[[str | httpx.URL], str],
        secrets: tuple[str, ...],
        turn: Callable[[], Awaitable[None]] | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._turn = turn
        self._now = now
        self._headers = dict(headers or {})
        self._params = dict(params or {})
        self.param_names = query_names(self._params)
        self.cross_origin = cross_origin
        self.max_body = max_body
        self._observe = observe
        self._where = where
        self._source = source
        self._secrets = secrets

    def leaves(
        self,
        target: httpx.URL,
        call: Call,
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

    def _build(
        self, method: str, url: httpx.URL, call: Call, kwargs: dict[str, Any], *, stage_url: bool
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
            url = merge_query(url, params, () if stage_url else self.param_names)
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

    async def fetch(
        self, method: str, url: httpx.URL, call: Call, hop: bool, kwargs: dict[str, Any]
    ) -> tuple[httpx.Response, bytes]:
        """One request and its redirects, followed here so that each hop's origin is
        checked; the last answer and its whole (bounded, decoded) body."""
        follow = kwargs.pop("follow_redirects", True)
        visited: set[str] = set()
        stage_url = not hop
        for hops in range(MAX_REDIRECTS + 1):
            if hops and self._turn is not None:
                await self._turn()
            visited.add(str(merge_query(url, None, self.param_names)))
            request, auth = self._build(method, url, call, dict(kwargs), stage_url=stage_url)
            if self._now is not None:
                request.extensions[SENT] = self._now()
            response = await self._client.send(request, auth=auth, stream=True)
            if not follow or response.status_code not in _REDIRECT_STATUSES:
                return response, await self._body(method, response)
            await response.aclose()
            target = self._location(method, response)
            if str(merge_query(target, None, self.param_names)) in visited:
                self._observe(Outcome.CLIENT_ERROR, response)
                raise PermanentError(
                    f"{self._source(response.request.url)} redirects to "
                    f"{self._source(target)}, already visited in this request: a redirect "
                    "loop",
                    category="redirect_loop",
                )
            self.leaves(target, call, "redirect", response.request.url, response)
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
                f"({redact(location[:80], self._secrets)!r})",
                category="bad_header",
            )
        return target

    async def _body(self, method: str, response: httpx.Response) -> bytes:
        """The decoded body, within ``max_body`` (see :mod:`backfill.sources.bodies`)."""
        try:
            return await read_body(response, self.max_body)
        except BodyTooLarge:
            self._observe(Outcome.ERROR, response)
            raise PermanentError(
                f"{self._where(method, response.request.url)}: the body is larger than "
                f"{describe_size(self.max_body)} (max_body=); raise max_body on the resource "
                "if that is expected",
                category="body_too_large",
            ) from None
        except UndecodableBody as exc:
            self._observe(Outcome.ERROR, response)
            raise TransientError(
                f"{self._where(method, response.request.url)}: {exc}", category="bad_body"
            ) from None
