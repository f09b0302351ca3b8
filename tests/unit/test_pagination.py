"""Pagination helpers and mid-partition checkpoints."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from backfill import (
    Context,
    Cursor,
    Job,
    LinkHeader,
    NextUrl,
    PageNumber,
    Partition,
    RetryPolicy,
    Status,
    daily,
)
from backfill.errors import FatalError, PermanentError, TransientError
from backfill.ledger import open_ledger
from backfill.runner import ExitCode
from backfill.sources.http import HttpClient
from backfill.testing import MemorySink, run_job

ITEMS = list(range(7))


def pages_app(request: httpx.Request) -> httpx.Response:
    """Serves ITEMS three at a time in every pagination style."""
    q = request.url.params
    if request.url.path == "/numbered":
        page = int(q.get("page", "1"))
        data = ITEMS[(page - 1) * 3 : page * 3]
        return httpx.Response(200, json={"data": data, "pages": 3})
    if request.url.path == "/cursor":
        start = int(q.get("cursor", "0"))
        nxt = start + 3 if start + 3 < len(ITEMS) else None
        return httpx.Response(200, json={"data": ITEMS[start : start + 3], "next_cursor": nxt})
    if request.url.path == "/next":
        start = int(q.get("from", "0"))
        nxt = f"/next?from={start + 3}" if start + 3 < len(ITEMS) else None
        return httpx.Response(200, json={"data": ITEMS[start : start + 3], "next": nxt})
    start = int(q.get("from", "0"))
    headers = {}
    if start + 3 < len(ITEMS):
        headers["Link"] = f'<http://api.test/link?from={start + 3}>; rel="next"'
    return httpx.Response(200, content=json.dumps(ITEMS[start : start + 3]), headers=headers)


async def walk(path: str, style: Any, resume_from: str | None = None) -> list[tuple[Any, ...]]:
    client = HttpClient(transport=httpx.MockTransport(pages_app))
    seen = []
    async for page in client.paginate(
        f"http://api.test{path}", pagination=style, resume_from=resume_from
    ):
        seen.append((page.number, tuple(page.records), page.next))
    await client.aclose()
    return seen


STYLES = [
    ("/numbered", PageNumber()),
    ("/cursor", Cursor()),
    ("/next", NextUrl()),
    ("/link", LinkHeader()),
]


@pytest.mark.parametrize(("path", "style"), STYLES)
def test_every_style_walks_all_pages_once(path: str, style: Any) -> None:
    """Each pagination style yields every record exactly once, and no next after the last."""
    pages = asyncio.run(walk(path, style))
    assert [r for _, records, _ in pages for r in records] == ITEMS
    assert [n for n, _, _ in pages] == [1, 2, 3]
    assert pages[-1][2] is None
    assert all(nxt is not None for _, _, nxt in pages[:-1])


@pytest.mark.parametrize(("path", "style"), STYLES)
def test_resuming_from_a_saved_next_skips_the_pages_done(path: str, style: Any) -> None:
    """Starting from the ``next`` of page 1 yields exactly the remaining records."""
    first = asyncio.run(walk(path, style))
    rest = asyncio.run(walk(path, style, resume_from=first[0][2]))
    assert [r for _, records, _ in rest for r in records] == ITEMS[3:]


def test_a_checkpointed_partition_resumes_where_it_stopped() -> None:
    """Pages written with ctx.write and a saved checkpoint survive a stopped run; the next
    run starts at the checkpoint, and every row lands exactly once."""
    sink = MemorySink(key=["item"])
    job = Job("big", partitions=daily("2013-01-01", "2013-01-01"), sink=sink)
    fetched: list[int] = []
    stop_after_first_page = True

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        client = HttpClient(transport=httpx.MockTransport(pages_app))
        async for page in client.paginate(
            "http://api.test/cursor", pagination=Cursor(), resume_from=ctx.checkpoint
        ):
            fetched.extend(page.records)
            await ctx.write([{"item": i} for i in page.records])
            await ctx.save_checkpoint(page.next)
            if stop_after_first_page:
                raise FatalError("the source went away")
        await client.aclose()

    ledger = open_ledger(":memory:")
    assert run_job(job, ledger).exit_code == ExitCode.USAGE
    assert fetched == [0, 1, 2]
    stop_after_first_page = False
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    assert fetched == ITEMS  # pages 2 and 3 only, the second time
    assert sorted(k[0] for k in sink.rows) == ITEMS
    entry = ledger.entries("big", "fetch")[0]
    assert entry.records == 4  # written by the run that finished the partition


async def first_error(body: Any, style: Any, retries: int = 0) -> tuple[Exception, int]:
    """The error paginating a source that always answers ``body``, and the requests made."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json=body)

    client = HttpClient(transport=httpx.MockTransport(handler), retries=retries)
    try:
        with pytest.raises(TransientError) as excinfo:
            async for _ in client.paginate("http://api.test/x?api_key=SECRET", pagination=style):
                pass
    finally:
        await client.aclose()
    return excinfo.value, calls


@pytest.mark.parametrize(("path", "style"), STYLES[:3])
def test_a_body_without_the_records_field_is_a_transient_bad_body(path: str, style: Any) -> None:
    """A 200 answer lacking the records field is a retried bad body naming the field and
    the (redacted) URL, not an empty last page."""
    error, _ = asyncio.run(first_error({"error": "maintenance"}, style))
    assert error.category == "bad_body"
    assert "field 'data' not in the response from http://api.test/x" in error.message
    assert "SECRET" not in error.message


@pytest.mark.parametrize("body", [{"data": None}, {"data": {"rows": []}}, {"data": "x"}])
def test_a_records_field_that_is_not_a_list_is_a_bad_body(body: Any) -> None:
    """A records field that is null, an object or a string is a bad body, not an empty page."""
    error, _ = asyncio.run(first_error(body, PageNumber()))
    assert error.category == "bad_body"
    assert "'data'" in error.message


def test_a_body_that_is_not_a_list_is_a_bad_body_for_link_headers() -> None:
    """With LinkHeader (the body is the records), an object body is a bad body."""
    error, _ = asyncio.run(first_error({"error": "maintenance"}, LinkHeader()))
    assert error.category == "bad_body"


def test_a_missing_records_field_is_retried_request_by_request() -> None:
    """The client's own retries apply to a body without the records field."""
    _, calls = asyncio.run(first_error({"error": "maintenance"}, PageNumber(), retries=2))
    assert calls == 3


def test_an_empty_records_list_is_a_legitimate_last_page() -> None:
    """A present, empty records list ends the walk without an error."""

    async def go() -> list[Any]:
        client = HttpClient(
            transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"data": []}))
        )
        pages = [p async for p in client.paginate("http://api.test/x", pagination=Cursor())]
        await client.aclose()
        return pages

    pages = asyncio.run(go())
    assert [(p.records, p.next) for p in pages] == [([], None)]


def test_a_stage_on_a_body_without_its_field_fails_with_the_field_named() -> None:
    """A wrong field name fails the partition after its retries with the field named;
    nothing is recorded empty."""
    job = Job("wrong", partitions=daily("2013-01-01", "2013-01-02"))

    @job.stage(retry=RetryPolicy(attempts=3, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> list[Any]:
        client = HttpClient(transport=httpx.MockTransport(pages_app))
        try:
            pages = client.paginate("http://api.test/numbered", pagination=PageNumber(data="rows"))
            return [{"item": r} async for page in pages for r in page.records]
        finally:
            await client.aclose()

    ledger = open_ledger(":memory:")
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.FAILED
    entries = ledger.entries("wrong", "fetch")
    assert {e.status for e in entries} == {Status.FAILED}
    assert all(e.attempts == 3 for e in entries)
    assert all("field 'rows' not in the response" in (e.error_message or "") for e in entries)


# --- untrusted sources -------------------------------------------------------------------

SECRET = "s3cr3t-key-9431"


async def collect(
    handler: Any, url: str, style: Any, bound: int = 20, **options: Any
) -> tuple[list[Any], list[httpx.URL]]:
    """The pages of a walk (at most ``bound``, then it stops) and the URLs requested."""
    requested: list[httpx.URL] = []

    def recording(request: httpx.Request) -> httpx.Response:
        requested.append(request.url)
        response: httpx.Response = handler(request)
        return response

    client = HttpClient(transport=httpx.MockTransport(recording), **options)
    pages: list[Any] = []
    try:
        async for page in client.paginate(url, pagination=style):
            pages.append(page)
            if len(pages) >= bound:
                break
    finally:
        await client.aclose()
    return pages, requested


def test_a_saved_next_link_never_holds_the_resource_s_params() -> None:
    """A next link echoing the real key gives a `Page.next` (what a checkpoint saves)
    without it; the request still carries the declared key, once."""

    def handler(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("from", "0"))
        nxt = f"/next?from={start + 3}&api_key={SECRET}" if start + 3 < len(ITEMS) else None
        return httpx.Response(200, json={"data": ITEMS[start : start + 3], "next": nxt})

    pages, requested = asyncio.run(
        collect(handler, "http://api.test/next", NextUrl(), params={"api_key": SECRET})
    )
    assert [r for p in pages for r in p.records] == ITEMS
    assert all(SECRET not in (p.next or "") for p in pages)
    assert pages[0].next == "http://api.test/next?from=3"
    assert [u.params.get_list("api_key") for u in requested] == [[SECRET]] * 3


def test_a_next_link_s_query_reaches_the_source_byte_for_byte() -> None:
    """An opaque, signed next link keeps every byte of its query (escapes, order) when the
    resource adds its params."""
    opaque = "cursor=a%2Bb%3D%3D~*&sig=Zm9v%2F&z=1"
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.query)
        nxt = f"/next?{opaque}" if len(seen) == 1 else None
        return httpx.Response(200, json={"data": [len(seen)], "next": nxt})

    asyncio.run(collect(handler, "http://api.test/next", NextUrl(), params={"api_key": "k1"}))
    assert seen[1] == f"{opaque}&api_key=k1".encode()


def test_a_cursor_already_used_is_a_pagination_loop() -> None:
    """A cursor the walk has already sent is a permanent `pagination_loop` error instead of
    the same pages forever."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [1], "next_cursor": "c-1"})

    with pytest.raises(PermanentError) as excinfo:
        asyncio.run(collect(handler, "http://api.test/cursor", Cursor()))
    assert excinfo.value.category == "pagination_loop"
    assert "cursor" in excinfo.value.message


def test_a_next_link_that_is_not_a_string_is_a_bad_body() -> None:
    """A next field holding an object is a transient `bad_body`, not a URL to guess at."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [1], "next": {"href": "/x"}})

    with pytest.raises(TransientError) as excinfo:
        asyncio.run(collect(handler, "http://api.test/next", NextUrl()))
    assert excinfo.value.category == "bad_body"


def test_a_saved_next_link_to_another_origin_is_refused_when_so_declared() -> None:
    """Resuming from a checkpoint that points at another origin obeys cross_origin like a
    fresh next link: refused, and nothing is sent."""
    with pytest.raises(PermanentError) as excinfo:
        asyncio.run(
            walk_from(
                "http://api.test/next",
                "http://evil.test/next?from=3",
                base_url="http://api.test",
                cross_origin="refuse",
            )
        )
    assert excinfo.value.category == "cross_origin"
    assert "http://evil.test" in excinfo.value.message


async def walk_from(url: str, resume_from: str, **options: Any) -> list[Any]:
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        return pages_app(request)

    client = HttpClient(transport=httpx.MockTransport(handler), **options)
    try:
        return [
            p async for p in client.paginate(url, pagination=NextUrl(), resume_from=resume_from)
        ]
    finally:
        await client.aclose()
        assert requested == []
