"""ctx.http against a hostile source on loopback: credentials, links, headers, bodies."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backfill import Context, Job, LinkHeader, NextUrl, Partition, RetryPolicy, Status, daily
from backfill.errors import PermanentError, StageError, TransientError
from backfill.ledger import open_ledger
from backfill.ratelimit import Resource
from backfill.sources.http import HttpClient
from backfill.testing import run_job
from hostile_server import HostileServer, respond

KEY = "k-3f9a1c77e2"
HEADERS = {
    "Authorization": "Bearer tok-81d0c2",
    "X-API-Key": "xak-55e1b0",
    "X-RapidAPI-Key": "rapid-7c2e94",
    "X-Auth-Token": "auth-0b6d13",
    "Cookie": "session=ck-a41f08",
    "X-Team": "team-9e3301",
}
CREDENTIALS = [KEY, *HEADERS.values()]
# No walk in these tests has more pages than this; a test that sees more has looped.
PAGE_BOUND = 12


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer.running() as server:
        yield server


def client(**options: Any) -> HttpClient:
    """A client with every kind of credential a job declares."""
    options.setdefault("headers", HEADERS)
    options.setdefault("params", {"api_key": KEY})
    return HttpClient(**options)


def carried(seen: Any) -> list[str]:
    """The credentials a recorded request carried, in its headers or its query."""
    text = " ".join(seen.headers.values()) + " " + seen.target
    return [c for c in CREDENTIALS if c in text]


async def walk(http: HttpClient, url: str, style: Any = None) -> list[Any]:
    """Every record of a paginated walk, stopping (and failing) after PAGE_BOUND pages."""
    records: list[Any] = []
    pages = 0
    try:
        async for page in http.paginate(url, pagination=style or NextUrl()):
            records += page.records
            pages += 1
            assert pages <= PAGE_BOUND, "the walk loops"
    finally:
        await http.aclose()
    return records


async def get_json(http: HttpClient, url: str) -> Any:
    try:
        return await http.get_json(url)
    finally:
        await http.aclose()


def error_of(coro: Any) -> StageError:
    with pytest.raises(StageError) as excinfo:
        asyncio.run(coro)
    return excinfo.value


# --- 1. credentials stay with the declared origin --------------------------------------


@pytest.mark.parametrize("style", ["body", "link"])
def test_a_next_link_to_another_origin_is_followed_without_credentials(
    hostile: HostileServer, style: str
) -> None:
    """A NextUrl or Link-header next link to another origin is fetched with none of the
    resource's headers or params; the declared origin gets all of them."""
    link = "&link=1" if style == "link" else ""
    url = f"{hostile.origin}/next?to={hostile.other}{link}"
    pagination = LinkHeader() if style == "link" else NextUrl()
    records = asyncio.run(walk(client(base_url=hostile.origin), url, pagination))
    assert records == [1, 2, 3]
    (first,) = hostile.seen_on(hostile.origin)
    assert carried(first) == CREDENTIALS
    others = hostile.seen_on(hostile.other)
    assert len(others) == 2
    assert [carried(s) for s in others] == [[], []]


def test_a_redirect_to_another_origin_carries_no_credentials(hostile: HostileServer) -> None:
    """A redirect to another origin reaches it without any header or param of the resource,
    not only without Authorization."""
    url = f"{hostile.origin}/redirect?to={hostile.other}/echo"
    body = asyncio.run(get_json(client(base_url=hostile.origin), url))
    assert body["origin"] == hostile.other
    (hop,) = hostile.seen_on(hostile.other)
    assert carried(hop) == []


def test_a_redirect_within_the_origin_keeps_the_credentials(hostile: HostileServer) -> None:
    """A redirect to the declared origin itself is followed with every credential."""
    url = f"{hostile.origin}/redirect?to=/echo&status=307"
    body = asyncio.run(get_json(client(base_url=hostile.origin), url))
    assert body["target"].startswith("/echo")
    hop = hostile.seen_on(hostile.origin)[-1]
    assert carried(hop) == CREDENTIALS


@pytest.mark.parametrize("what", ["next link", "redirect"])
def test_cross_origin_refuse_fails_the_request_and_names_the_host(
    hostile: HostileServer, what: str
) -> None:
    """With cross_origin='refuse' a next link or redirect to another origin is a permanent
    error naming that origin and the option to change; the other origin sees nothing."""
    http = client(base_url=hostile.origin, cross_origin="refuse")
    if what == "next link":
        error = error_of(walk(http, f"{hostile.origin}/next?to={hostile.other}"))
    else:
        error = error_of(get_json(http, f"{hostile.origin}/redirect?to={hostile.other}/echo"))
    assert type(error) is PermanentError
    assert error.category == "cross_origin"
    assert hostile.other in error.message
    assert "allowed_hosts" in error.message
    assert hostile.seen_on(hostile.other) == []


def test_allowed_hosts_receive_the_credentials(hostile: HostileServer) -> None:
    """An origin listed in allowed_hosts gets the credentials on a next link."""
    http = client(base_url=hostile.origin, allowed_hosts=[hostile.other], cross_origin="refuse")
    records = asyncio.run(walk(http, f"{hostile.origin}/next?to={hostile.other}"))
    assert records == [1, 2, 3]
    assert [carried(s) for s in hostile.seen_on(hostile.other)] == [CREDENTIALS] * 2


def test_without_a_base_url_the_stage_s_own_url_is_the_trusted_origin(
    hostile: HostileServer,
) -> None:
    """With no base_url nor allowed_hosts, credentials go to the origin the stage asked for,
    and not to another origin a next link points at."""
    records = asyncio.run(walk(client(), f"{hostile.origin}/next?to={hostile.other}"))
    assert records == [1, 2, 3]
    assert carried(hostile.seen_on(hostile.origin)[0]) == CREDENTIALS
    assert [carried(s) for s in hostile.seen_on(hostile.other)] == [[], []]


def test_a_relative_url_resolves_against_the_base_url(hostile: HostileServer) -> None:
    """`ctx.http.get_json('/echo')` on a resource with base_url reaches base_url's origin,
    with the credentials."""
    body = asyncio.run(get_json(client(base_url=hostile.origin), "/echo?x=1"))
    assert body["origin"] == hostile.origin
    assert body["target"].startswith("/echo?x=1&")
    assert carried(hostile.seen_on(hostile.origin)[0]) == CREDENTIALS


def test_a_redirect_loop_is_a_permanent_error(hostile: HostileServer) -> None:
    """A redirect to a URL already visited in the same request fails it as a loop."""
    error = error_of(get_json(client(), f"{hostile.origin}/redirect-loop"))
    assert type(error) is PermanentError
    assert error.category == "redirect_loop"
    assert len(hostile.seen) == 1


# --- 5. query strings and pagination loops ----------------------------------------------


def test_a_next_link_keeps_its_query_when_the_resource_has_params(
    hostile: HostileServer,
) -> None:
    """A next link's own query (its cursor) survives the resource's params: pages 1, 2, 3
    are fetched once each, not page 1 forever."""
    records = asyncio.run(walk(client(), f"{hostile.origin}/next"))
    assert records == [1, 2, 3]
    assert [s.query["page"] for s in hostile.seen[1:]] == [["2"], ["3"]]
    assert all(s.query["api_key"] == [KEY] for s in hostile.seen)


def test_an_inline_query_is_kept_beside_the_resource_params(hostile: HostileServer) -> None:
    """`?date=...` written in a ctx.http URL reaches the source together with `api_key`."""
    body = asyncio.run(get_json(client(), f"{hostile.origin}/echo?date=2013-01-01"))
    assert body["target"] == f"/echo?date=2013-01-01&api_key={KEY}"


def test_a_masked_credential_echoed_in_a_next_link_is_replaced(hostile: HostileServer) -> None:
    """A next link that echoes `api_key=***` is sent with the declared key instead, once."""
    records = asyncio.run(walk(client(), f"{hostile.origin}/next?mask=api_key"))
    assert records == [1, 2, 3]
    assert all(s.query["api_key"] == [KEY] for s in hostile.seen)


@pytest.mark.parametrize("style", [NextUrl(), LinkHeader()])
def test_a_next_link_already_fetched_stops_the_walk(hostile: HostileServer, style: Any) -> None:
    """A next link equal to one already followed in the walk is a permanent
    `pagination_loop` error, after the one page, instead of fetching it forever."""
    path = "/next-loop" if isinstance(style, NextUrl) else "/next?page=2&last=3&link=1"
    if isinstance(style, LinkHeader):

        async def back_to_page_2(request: Any, writer: Any) -> None:
            headers = [("link", f'<{request.origin}/next?page=2&last=3&link=1>; rel="next"')]
            await respond(writer, 200, b"[2]", headers)

        hostile.route("/next", back_to_page_2)
    error = error_of(walk(client(), f"{hostile.origin}{path}", style))
    assert type(error) is PermanentError
    assert error.category == "pagination_loop"
    assert "already fetched in this partition" in error.message
    assert KEY not in error.message
    assert len(hostile.seen) == 1


# --- 6. garbage in headers and bodies ---------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        "h=RateLimit-Remaining:nan",
        "h=RateLimit-Remaining:inf",
        "h=X-RateLimit-Remaining:-inf",
        "h=RateLimit-Remaining:0&h=RateLimit-Reset:inf",
        "h=RateLimit-Remaining:0&h=RateLimit-Reset:-5",
        "h=X-RateLimit-Remaining:0&h=X-RateLimit-Reset:nan",
        "h=RateLimit-Limit:10&h=RateLimit-Policy:10;w=nan",
        "h=RateLimit-Limit:1e999&h=RateLimit-Policy:10;w=1",
        "h=RateLimit-Limit:10&h=RateLimit-Policy:10;w=0",
    ],
)
def test_a_garbage_rate_limit_hint_is_ignored(hostile: HostileServer, headers: str) -> None:
    """Rate-limit headers that are not usable numbers leave the request's answer alone and
    the resource's rate and pauses untouched."""
    resource = Resource("api", rate="50/s", adaptive=True)
    before = resource.rate
    http = HttpClient(resource=resource)
    assert asyncio.run(get_json(http, f"{hostile.origin}/header?{headers}")) == {"data": []}
    assert resource.paused_until < resource.clock.monotonic()
    assert resource.rate == before


@pytest.mark.parametrize("value", ["1e999", "nan", "-3", "soon"])
def test_a_429_with_a_garbage_retry_after_is_a_bad_header(
    hostile: HostileServer, value: str
) -> None:
    """A 429 whose Retry-After is neither seconds nor a date is a transient `bad_header`
    error naming the header, and the resource pauses only its default second."""
    resource = Resource("api", rate="50/s")
    http = HttpClient(resource=resource)
    url = f"{hostile.origin}/header?h=Retry-After:{value}&status=429"
    error = error_of(get_json(http, url))
    assert type(error) is TransientError
    assert error.category == "bad_header"
    assert "Retry-After" in error.message
    assert resource.paused_until - resource.clock.monotonic() <= 1.0


def test_json_nested_deeper_than_the_decoder_allows_is_a_bad_body(
    hostile: HostileServer,
) -> None:
    """100,000 nested arrays are a transient `bad_body`, not a RecursionError."""
    error = error_of(get_json(HttpClient(), f"{hostile.origin}/deep"))
    assert type(error) is TransientError
    assert error.category == "bad_body"
    assert "nested" in error.message


def test_a_stage_on_garbage_bodies_fails_only_its_partitions(hostile: HostileServer) -> None:
    """Deep JSON and an HTML page each fail their own partition as `bad_body` after the
    retries; the other partition is done, and the run ends with exit 1."""
    job = Job("garbage", partitions=daily("2013-01-01", "2013-01-03"))
    job.resource("api", rate="100/s", retries=1)
    paths = {"2013-01-01": "/deep", "2013-01-02": "/html", "2013-01-03": "/echo"}

    @job.stage(resource="api", retry=RetryPolicy(attempts=2, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        await ctx.http.get_json(f"{hostile.origin}{paths[partition.key]}")
        return [{"day": partition.key}]

    ledger = open_ledger("sqlite:///:memory:")
    result = run_job(job, ledger)
    assert result.exit_code == 1
    entries = {e.key: e for e in ledger.entries("garbage", "fetch")}
    assert entries["2013-01-03"].status is Status.DONE
    for day in ("2013-01-01", "2013-01-02"):
        assert entries[day].status is Status.FAILED
        assert entries[day].error_category == "bad_body"


# --- 7. waits a source asks for are capped ----------------------------------------------


def test_a_retry_after_longer_than_max_wait_is_cut_to_it_and_says_so(
    hostile: HostileServer,
) -> None:
    """`Retry-After: 86400` pauses a resource with max_wait=60 for 60 s, and the pause's
    message says what was asked and what is waited."""
    resource = Resource("api", rate="50/s", max_wait=60.0)
    told: list[tuple[str, float]] = []
    resource.subscribe(
        lambda name, what, seconds, kind: told.append((what, seconds)) if kind == "paused" else None
    )
    url = f"{hostile.origin}/header?h=Retry-After:86400&status=429"
    error = error_of(get_json(HttpClient(resource=resource), url))
    assert isinstance(error, TransientError)
    assert error.retry_after == 60.0
    assert 30 < resource.paused_until - resource.clock.monotonic() <= 60
    assert len(told) == 1
    assert "asked for 86400 s, waiting the cap of 60 s" in told[0][0]
    assert told[0][1] == pytest.approx(60.0)


def test_a_quota_reset_of_31_years_pauses_only_max_wait(hostile: HostileServer) -> None:
    """`RateLimit-Remaining: 0` with `RateLimit-Reset: 999999999` pauses the resource for
    its max_wait (default 3600 s), not for 31 years."""
    resource = Resource("api", rate="50/s")
    url = f"{hostile.origin}/header?h=RateLimit-Remaining:0&h=RateLimit-Reset:999999999"
    asyncio.run(get_json(HttpClient(resource=resource), url))
    assert 3000 < resource.paused_until - resource.clock.monotonic() <= 3600


# --- 8. bounded bodies and bounded time -------------------------------------------------


def test_a_gzip_bomb_fails_its_request_without_being_decoded(hostile: HostileServer) -> None:
    """1 MB that decodes to 1 GiB fails as `body_too_large` at the default 64 MiB bound,
    naming it and the option; at most about the bound is ever held in memory."""
    tracemalloc.start()
    try:
        error = error_of(get_json(HttpClient(), f"{hostile.origin}/gzip-bomb"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(error) is PermanentError
    assert error.category == "body_too_large"
    assert "64 MiB" in error.message
    assert "max_body" in error.message
    assert peak < 100 * 2**20


def test_an_endless_stream_fails_at_the_body_bound(hostile: HostileServer) -> None:
    """A chunked body that never ends fails as `body_too_large` once past max_body."""
    http = HttpClient(max_body=2**20)
    error = error_of(get_json(http, f"{hostile.origin}/endless"))
    assert type(error) is PermanentError
    assert error.category == "body_too_large"
    assert "1 MiB" in error.message


def test_a_trickle_fails_at_the_deadline(hostile: HostileServer) -> None:
    """One byte every 2 s never trips a 30 s read timeout, but fails the request as a
    transient `timeout` once the request's deadline has passed."""

    async def bounded() -> Any:
        async with asyncio.timeout(60):
            return await get_json(HttpClient(timeout=30, deadline=3), f"{hostile.origin}/trickle")

    error = error_of(bounded())
    assert type(error) is TransientError
    assert error.category == "timeout"
    assert "no complete answer within 3 s" in error.message


BOMB_CHILD = """
import asyncio, resource, sys
from backfill.errors import StageError
from backfill.sources.http import HttpClient

async def main():
    http = HttpClient()
    try:
        await http.get_json(sys.argv[1])
    except StageError as exc:
        print(exc.category)
    finally:
        await http.aclose()

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
asyncio.run(main())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_process_fetching_a_gzip_bomb_stays_within_its_bound(
    hostile: HostileServer, tmp_path: Path
) -> None:
    """A fresh process that fetches the gzip bomb grows by less than 200 MB at its peak
    (the bound is 64 MiB of decoded body)."""
    script = tmp_path / "bomb.py"
    script.write_text(textwrap.dedent(BOMB_CHILD))
    done = subprocess.run(
        [sys.executable, str(script), f"{hostile.origin}/gzip-bomb"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    category, grown_mb = done.stdout.split()
    assert category == "body_too_large", done.stderr
    assert int(grown_mb) < 200
