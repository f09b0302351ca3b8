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
from backfill.errors import FatalError, TransientError
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
