"""Pagination helpers and mid-partition checkpoints."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from backfill import Context, Cursor, Job, LinkHeader, NextUrl, PageNumber, Partition, daily
from backfill.errors import FatalError
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
