"""Walking a source's pages: the pagination styles, a :class:`Page`, and one walk."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from backfill.errors import PermanentError, TransientError
from backfill.sources.origins import merge_query


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


def records_of(body: Any, path: str | None, source: str) -> list[Any]:
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


class SendPage(Protocol):
    """GET one page of the walk, with the client's retries: its answer and decoded body
    (``hop``: the URL came from the source, not from the stage)."""

    def __call__(
        self, target: httpx.URL, *, params: Mapping[str, Any] | None, hop: bool = False
    ) -> Awaitable[tuple[httpx.Response, Any]]: ...


class Walk:
    """One walk of pages in a given style, from ``start`` (or a saved ``Page.next``).

    The client lends it what it needs: ``send`` (a page, with retries), ``resolve`` (a
    saved link made absolute), ``source`` (a URL as messages show it), ``leaves`` (a link
    that leaves the call's origins, refused when so declared) and ``param_names`` (the
    resource's params, kept out of links and of the loop check).
    """

    def __init__(
        self,
        style: Pagination,
        start: httpx.URL,
        query: dict[str, Any],
        *,
        send: SendPage,
        resolve: Callable[[str], httpx.URL],
        source: Callable[[httpx.URL], str],
        leaves: Callable[[httpx.URL, str, httpx.URL], None],
        param_names: frozenset[str],
    ) -> None:
        self.style = style
        self.start = start
        self.query = query
        self._send = send
        self._resolve = resolve
        self._source = source
        self._leaves = leaves
        self._param_names = param_names
        self._fetched: set[bytes] = set()

    def pages(self, resume_from: str | None) -> AsyncIterator[Page]:
        """Page after page, from ``resume_from`` when given."""
        style = self.style
        if isinstance(style, PageNumber):
            return self._numbered(style, resume_from)
        if isinstance(style, Cursor):
            return self._cursored(style, resume_from)
        return self._linked(style, resume_from)

    async def _numbered(self, style: PageNumber, resume_from: str | None) -> AsyncIterator[Page]:
        number = 1
        page_no = int(resume_from) if resume_from else style.start
        while True:
            response, body = await self._send(
                self.start, params={**self.query, style.page_param: page_no}
            )
            records = records_of(body, style.data, self._source(response.url))
            total = _field(body, style.total_pages) if style.total_pages else None
            last = not records or (isinstance(total, int) and page_no >= total)
            yield Page(number, records, None if last else str(page_no + 1), body)
            if last:
                return
            page_no += 1
            number += 1

    async def _cursored(self, style: Cursor, resume_from: str | None) -> AsyncIterator[Page]:
        number = 1
        cursor = resume_from
        query, start = self.query, self.start
        while True:
            q = {**query, style.cursor_param: cursor} if cursor else query
            self._loop(merge_query(start, q), "cursor", start)
            response, body = await self._send(start, params=q)
            cursor_value = _field(body, style.next_field)
            cursor = str(cursor_value) if cursor_value not in (None, "") else None
            yield Page(
                number, records_of(body, style.data, self._source(response.url)), cursor, body
            )
            if cursor is None:
                return
            number += 1

    async def _linked(
        self, style: NextUrl | LinkHeader, resume_from: str | None
    ) -> AsyncIterator[Page]:
        number = 1
        next_url: httpx.URL | None = self.start
        first = resume_from is None
        if resume_from:
            next_url = self._resolve(resume_from)
            self._leaves(next_url, "saved next link", self.start)
        while next_url is not None:
            page_params = self.query if first else None
            self._loop(merge_query(next_url, page_params), "next link", next_url)
            response, body = await self._send(next_url, hop=not first, params=page_params)
            first = False
            found = self._next_link(response, body, style)
            yield Page(
                number,
                records_of(body, style.data, self._source(response.url)),
                None if found is None else str(found),
                body,
            )
            if found is not None:
                self._leaves(found, "next link", response.url)
            next_url = found
            number += 1

    def _loop(self, url: httpx.URL, what: str, source: httpx.URL) -> None:
        """Note ``url`` as fetched in this walk; a PermanentError if it already was."""
        key = hashlib.blake2b(
            str(merge_query(url, None, self._param_names)).encode(), digest_size=16
        ).digest()
        if key in self._fetched:
            raise PermanentError(
                f"{self._source(source)}: {what} {self._source(url)} was already fetched in "
                "this partition; the source's pagination loops",
                category="pagination_loop",
            )
        self._fetched.add(key)

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
