"""HttpClient: responses and transport failures classified into backfill's error classes."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import importlib.util
import itertools
import json
import math
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill.errors import FatalError, PermanentError, StageError, TransientError
from backfill.ratelimit import Resource
from backfill.ratelimit.limits import EASE_SETTLE
from backfill.sources.http import HttpClient, decode_json, parse_retry_after, redact_url
from backfill.sources.origins import allowed_origins

URL = "https://api.example/results/2013-01-01"
URL_BASE = "https://api.example"
SECRET_URL = "https://api.example/results?date=2013-01-01&api_key=SECRET"

Handler = Callable[[httpx.Request], httpx.Response]


def fetch_json(handler: Handler, url: str = URL) -> Any:
    """GET `url` as JSON through a client whose transport is `handler`."""

    async def go() -> Any:
        client = HttpClient(transport=httpx.MockTransport(handler))
        try:
            return await client.get_json(url)
        finally:
            await client.aclose()

    return asyncio.run(go())


def fetch_error(handler: Handler, url: str = URL) -> StageError:
    """The classified error raised by `fetch_json`, failing the test if none is."""
    with pytest.raises(StageError) as excinfo:
        fetch_json(handler, url)
    return excinfo.value


def status(code: int, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(code, headers=headers, text="nope")


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def test_200_json_is_decoded():
    """A 200 with a JSON body returns the decoded value."""
    body = {"data": [1, 2, 3], "next": None}
    assert fetch_json(lambda request: httpx.Response(200, json=body)) == body


def test_httpcore_finds_the_async_library_without_a_failed_import():
    """sniffio is installed, so httpcore's per-request async-library lookup never fails."""
    from httpcore._synchronization import current_async_library

    assert importlib.util.find_spec("sniffio") is not None

    async def name() -> str:
        return current_async_library()

    assert asyncio.run(name()) == "asyncio"


def test_request_sends_configured_headers():
    """Headers given to the client go out with every request."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(204)

    async def go() -> int:
        client = HttpClient(
            headers={"Authorization": "Bearer t"}, transport=httpx.MockTransport(handler)
        )
        try:
            return (await client.get(URL)).status_code
        finally:
            await client.aclose()

    assert asyncio.run(go()) == 204
    assert seen == ["Bearer t"]


def test_429_with_retry_after_seconds_is_transient_with_hint():
    """A 429 is transient, category `http_429`, carrying `Retry-After: 3` as 3 seconds."""
    error = fetch_error(status(429, {"Retry-After": "3"}))
    assert type(error) is TransientError
    assert error.category == "http_429"
    assert error.retry_after == 3
    assert "429" in error.message


def test_503_with_http_date_retry_after_gives_seconds_until_then():
    """A 503 whose `Retry-After` is an HTTP-date carries about the seconds until that date."""
    when = datetime.now(UTC) + timedelta(seconds=120)
    error = fetch_error(status(503, {"Retry-After": format_datetime(when, usegmt=True)}))
    assert isinstance(error, TransientError)
    assert error.category == "http_503"
    assert error.retry_after is not None
    assert 110 <= error.retry_after <= 120


@pytest.mark.parametrize("code", [500, 502, 504])
def test_5xx_is_transient_without_hint(code: int):
    """A 5xx without `Retry-After` is transient, category `http_<code>`, no hint."""
    error = fetch_error(status(code))
    assert type(error) is TransientError
    assert error.category == f"http_{code}"
    assert error.retry_after is None


@pytest.mark.parametrize("code", [400, 404, 410, 422])
def test_other_4xx_is_permanent(code: int):
    """A 4xx other than 401/403/429 is permanent for the partition, category `http_<code>`."""
    error = fetch_error(status(code))
    assert type(error) is PermanentError
    assert error.category == f"http_{code}"


@pytest.mark.parametrize("code", [401, 403])
def test_401_and_403_are_fatal(code: int):
    """Refused credentials are fatal and the message says to check the key or token."""
    error = fetch_error(status(code))
    assert type(error) is FatalError
    assert error.category == f"http_{code}"
    assert "API key or token" in error.message


@pytest.mark.parametrize(
    "body", [b'{"data": [1, 2', b"", b"<html>502 Bad Gateway</html>", b"\xff\xfe\x00garbage"]
)
def test_body_that_is_not_json_is_transient_bad_body(body: bytes):
    """A truncated, empty, HTML or undecodable body is a transient `bad_body`, not a crash."""
    error = fetch_error(lambda request: httpx.Response(200, content=body))
    assert type(error) is TransientError
    assert error.category == "bad_body"
    assert f"({len(body)} bytes)" in error.message


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@given(JSON_VALUES)
def test_decode_json_agrees_with_json_loads(value: Any):
    """Any JSON document decodes to what json.loads gives, wide integers exact and typed."""
    body = json.dumps(value).encode()
    decoded = decode_json(body)
    assert decoded == json.loads(body)
    assert json.dumps(decoded) == json.dumps(value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"id": 123456789012345678901234567890}', {"id": 123456789012345678901234567890}),
        (b"[-9223372036854775809]", [-9223372036854775809]),
        (b"[Infinity, -Infinity, 1e400]", [math.inf, -math.inf, math.inf]),
        (b"\xef\xbb\xbf[1]", [1]),
        ('{"name": "Zürich"}'.encode("utf-16"), {"name": "Zürich"}),
    ],
)
def test_decode_json_accepts_what_json_loads_accepts(body: bytes, expected: Any):
    """Wide integers, Infinity, a byte-order mark and UTF-16 decode as json.loads does."""
    assert decode_json(body) == expected


def test_decode_json_keeps_nan():
    """NaN, which strict decoders refuse, still decodes to a float NaN."""
    (value,) = decode_json(b"[NaN]")
    assert math.isnan(value)


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (httpx.ConnectError("connection refused"), "network"),
        (httpx.RemoteProtocolError("peer closed connection"), "network"),
        (httpx.ReadTimeout("read timed out"), "timeout"),
        (httpx.ConnectTimeout("connect timed out"), "timeout"),
    ],
)
def test_transport_errors_are_transient(exc: Exception, category: str):
    """Connection failures are transient `network`, timeouts transient `timeout`."""
    error = fetch_error(raising(exc))
    assert type(error) is TransientError
    assert error.category == category
    assert "api.example" in error.message


def test_counters_track_requests_statuses_and_transport_errors():
    """`requests`, `statuses` and `transport_errors` count what the client saw."""
    codes = iter([200, 404, 200, None, 503])

    def handler(request: httpx.Request) -> httpx.Response:
        code = next(codes)
        if code is None:
            raise httpx.ConnectError("refused")
        return httpx.Response(code, json={})

    async def go() -> HttpClient:
        client = HttpClient(transport=httpx.MockTransport(handler))
        for _ in range(5):
            with contextlib.suppress(StageError):
                await client.get_json(URL)
        await client.aclose()
        return client

    client = asyncio.run(go())
    assert client.requests == 5
    assert client.statuses == {200: 2, 404: 1, 503: 1}
    assert client.transport_errors == 1


# --- redaction --------------------------------------------------------------------------


def test_redact_url_hides_secret_values_and_keeps_the_rest():
    """Values of `api_key`, `token` and `apikey` become `***`; other parameters stay."""
    redacted = redact_url(
        "https://api.example/x?date=2013-01-01&api_key=S1&token=S2&apikey=S3&page=2"
    )
    for secret in ("S1", "S2", "S3"):
        assert secret not in redacted
    assert redacted == (
        "https://api.example/x?date=2013-01-01&api_key=***&token=***&apikey=***&page=2"
    )


@pytest.mark.parametrize(
    "name", ["API_KEY", "Api-Key", "access_token", "client_secret", "password"]
)
def test_redact_url_matches_secret_names_case_insensitively(name: str):
    """Secret-looking parameter names are recognised in any case and spelling variant."""
    assert "hunter2" not in redact_url(f"https://api.example/x?{name}=hunter2")


def test_redact_url_leaves_urls_without_query_alone():
    """A URL without a query string comes back unchanged; `httpx.URL` is accepted."""
    assert redact_url("https://api.example/results/2013") == "https://api.example/results/2013"
    assert redact_url(httpx.URL("https://api.example/x?token=t")) == (
        "https://api.example/x?token=***"
    )


def test_redact_url_keeps_the_query_before_the_fragment():
    """A URL with a fragment keeps `?query` before `#fragment` after redaction."""
    assert redact_url("https://api.example/x?token=t&page=2#top") == (
        "https://api.example/x?token=***&page=2#top"
    )


@pytest.mark.parametrize(
    "handler",
    [
        status(401),
        status(403),
        status(404),
        status(429, {"Retry-After": "1"}),
        status(500),
        lambda request: httpx.Response(200, content=b"{not json"),
        raising(httpx.ConnectError("refused")),
        raising(httpx.ReadTimeout("slow")),
    ],
    ids=["401", "403", "404", "429", "500", "bad_body", "network", "timeout"],
)
def test_no_error_message_leaks_the_api_key(handler: Handler):
    """Whatever goes wrong, the message names the URL with the `api_key` value redacted."""
    error = fetch_error(handler, SECRET_URL)
    assert "SECRET" not in str(error)
    assert "SECRET" not in error.message
    assert "api_key=***" in error.message


# --- Retry-After ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), (" 120 ", 120.0), ("0", 0.0)])
def test_parse_retry_after_delta_seconds(value: str, seconds: float):
    """Delta-seconds parse to that many seconds."""
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date():
    """An HTTP-date parses to the seconds between `now` and that date."""
    now = datetime(2020, 1, 1, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(header, now=now.timestamp()) == 90.0


@pytest.mark.parametrize("value", [None, "", "soon", "Wed, 99 Foo 2020", "3 seconds"])
def test_parse_retry_after_garbage_is_none(value: str | None):
    """Missing or unparsable headers give None (no hint), never an exception."""
    assert parse_retry_after(value) is None


def test_parse_retry_after_negative_is_no_hint_and_past_is_zero():
    """A negative delay is not valid delta-seconds (no hint); a past date means 0 seconds."""
    assert parse_retry_after("-5") is None
    now = datetime(2020, 1, 1, tzinfo=UTC)
    past = format_datetime(now - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past, now=now.timestamp()) == 0.0


def test_parse_retry_after_infinity_is_not_a_hint():
    """`Retry-After: inf` is not delta-seconds, so it gives no hint instead of waiting forever."""
    assert parse_retry_after("inf") is None


# --- untrusted sources: origins, redirects, bodies, waits -------------------------------


def run_client(handler: Handler, call: Callable[[HttpClient], Any], **options: Any) -> Any:
    """`call(client)` on a client whose transport is `handler`; the client is closed after."""

    async def go() -> Any:
        client = HttpClient(transport=httpx.MockTransport(handler), **options)
        try:
            return await call(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_call_s_own_headers_do_not_follow_a_redirect_to_another_origin() -> None:
    """Headers and cookies a stage passes with one call go to the URL it named, and not to
    another origin a redirect points at (httpx would keep all but Authorization)."""
    seen: dict[str, httpx.Headers] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] = request.headers
        if request.url.host == "api.example":
            return httpx.Response(302, headers={"Location": "https://elsewhere.example/x"})
        return httpx.Response(200, json={})

    run_client(
        handler,
        lambda c: c.get_json(URL, headers={"X-Session": "sess-1"}, cookies={"sid": "c-2"}),
    )
    assert seen["api.example"]["X-Session"] == "sess-1"
    assert "sid=c-2" in seen["api.example"]["Cookie"]
    assert "X-Session" not in seen["elsewhere.example"]
    assert "Cookie" not in seen["elsewhere.example"]


def test_a_call_s_header_replaces_the_resource_s_of_the_same_name_once() -> None:
    """A header a call sets wins over the resource's of the same name, whatever its case,
    and is sent once."""
    seen: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get_list("authorization"))
        return httpx.Response(200, json={})

    run_client(
        handler,
        lambda c: c.get_json(URL, headers={"authorization": "Bearer call"}),
        headers={"Authorization": "Bearer resource"},
    )
    assert seen == [["Bearer call"]]


@pytest.mark.parametrize(
    ("code", "method", "sent"),
    [
        (303, "POST", ("GET", b"")),
        (302, "POST", ("GET", b"")),
        (301, "POST", ("GET", b"")),
        (307, "POST", ("POST", b'{"a": 1}')),
        (308, "PUT", ("PUT", b'{"a": 1}')),
    ],
)
def test_redirects_change_the_method_as_browsers_do(
    code: int, method: str, sent: tuple[str, bytes]
) -> None:
    """303 (and 301/302 after a POST) are followed with a GET without the body; 307 and
    308 keep the method and the body."""
    hops: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/start":
            return httpx.Response(code, headers={"Location": "/end"})
        hops.append((request.method, request.content))
        return httpx.Response(200, json={})

    response = run_client(
        handler,
        lambda c: c.request(method, "https://api.example/start", content=b'{"a": 1}'),
    )
    assert response.status_code == 200
    assert hops == [sent]


def test_follow_redirects_false_returns_the_redirect_itself() -> None:
    """`follow_redirects=False` hands the 3xx answer back, Location and all."""
    response = run_client(
        lambda request: httpx.Response(302, headers={"Location": "/elsewhere"}),
        lambda c: c.get(URL, follow_redirects=False),
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/elsewhere"


def test_a_redirect_without_a_location_is_a_bad_header() -> None:
    """A 302 without Location is a permanent `bad_header` error, not an answer."""
    error = fetch_error(status(302))
    assert type(error) is PermanentError
    assert error.category == "bad_header"
    assert "Location" in error.message


def test_more_redirects_than_the_bound_fail_the_request() -> None:
    """A chain of more than 10 redirects, each to a new URL, is a permanent error."""
    hops = iter(range(100))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": f"/hop/{next(hops)}"})

    error = fetch_error(handler)
    assert type(error) is PermanentError
    assert "more than 10 redirects" in error.message


def test_a_relative_url_without_base_url_is_a_permanent_bad_url() -> None:
    """A relative URL on a client without base_url says to declare one; nothing is sent."""
    error = fetch_error(status(200), "/results")
    assert type(error) is PermanentError
    assert error.category == "bad_url"
    assert "base_url" in error.message


def test_a_relative_url_is_appended_to_the_base_url_s_path() -> None:
    """`base_url="https://api.example/v2"` and `get("/results?x=1")` fetch
    https://api.example/v2/results?x=1, as httpx's own base_url does."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={})

    run_client(handler, lambda c: c.get_json("/results?x=1"), base_url="https://api.example/v2")
    assert seen == ["https://api.example/v2/results?x=1"]


def test_allowed_hosts_without_a_scheme_take_the_base_url_s() -> None:
    """`host` and `host:port` entries mean the scheme of base_url (https without one);
    a full origin is taken as written."""
    assert allowed_origins("http://a.example", ["b.example:8080", "https://c.example"]) == {
        ("http", "a.example", 80),
        ("http", "b.example", 8080),
        ("https", "c.example", 443),
    }
    assert allowed_origins(None, ["d.example"]) == {("https", "d.example", 443)}


def streamed(body: bytes, encoding: str | None = None) -> Handler:
    """A handler answering `body` as a stream (read by the client, not pre-read)."""
    headers = {"Content-Encoding": encoding} if encoding else {}
    return lambda request: httpx.Response(200, stream=httpx.ByteStream(body), headers=headers)


DOC = json.dumps({"data": list(range(1000))}).encode()


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (DOC, None),
        (gzip.compress(DOC), "gzip"),
        (gzip.compress(DOC[:100]) + gzip.compress(DOC[100:]), "gzip"),
        (zlib.compress(DOC), "deflate"),
        (zlib.compress(DOC)[2:-4], "deflate"),
        (zlib.compress(gzip.compress(DOC)), "gzip, deflate"),
    ],
    ids=["identity", "gzip", "gzip-two-members", "deflate", "raw-deflate", "gzip-then-deflate"],
)
def test_encoded_bodies_decode_to_the_document(body: bytes, encoding: str | None) -> None:
    """Every content encoding the client asks for decodes to the same document."""
    assert fetch_json(streamed(body, encoding)) == json.loads(DOC)


def test_a_content_encoding_not_asked_for_is_a_bad_body() -> None:
    """`Content-Encoding: br` (the client asks for gzip and deflate only) is a transient
    `bad_body` naming the encoding."""
    error = fetch_error(streamed(b"\x0b\x02\x80{}\x03", "br"))
    assert type(error) is TransientError
    assert error.category == "bad_body"
    assert "'br'" in error.message


def test_a_garbled_gzip_body_is_a_bad_body() -> None:
    """A body that is not the gzip it claims to be is a transient `bad_body`."""
    error = fetch_error(streamed(b"\x1f\x8b not gzip at all", "gzip"))
    assert type(error) is TransientError
    assert error.category == "bad_body"


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_a_body_of_exactly_max_body_passes_and_one_byte_more_fails(encoding: str | None) -> None:
    """The bound is inclusive and counts decoded bytes."""
    body = b"[" + b" " * 98 + b"]"
    raw = gzip.compress(body) if encoding else body
    assert run_client(streamed(raw, encoding), lambda c: c.get_json(URL), max_body=100) == []
    with pytest.raises(PermanentError, match="larger than 99 bytes") as excinfo:
        run_client(streamed(raw, encoding), lambda c: c.get_json(URL), max_body=99)
    assert excinfo.value.category == "body_too_large"


def test_a_content_length_over_max_body_fails_before_the_body_is_read() -> None:
    """A declared length over the bound fails at once, reading nothing of the body."""
    read: list[int] = []

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> Any:
            while True:
                read.append(1)
                yield b" " * 1024

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Endless(), headers={"Content-Length": str(2**40)})

    with pytest.raises(PermanentError, match="larger than 1 KiB"):
        run_client(handler, lambda c: c.get_json(URL), max_body=1024)
    assert read == []


def test_a_response_read_within_the_bound_keeps_its_content() -> None:
    """`request()` hands back a response whose content, text and json() work as usual."""
    response = run_client(streamed(gzip.compress(DOC), "gzip"), lambda c: c.get(URL))
    assert response.content == DOC
    assert response.json() == json.loads(DOC)


def test_a_wide_number_across_a_scan_boundary_is_still_exact() -> None:
    """An integer beyond 64 bits that straddles the 64 KiB scan slices decodes exactly."""
    wide = 123456789012345678901234567890
    prefix = b'{"pad": "' + b"x" * (65536 - 20) + b'", "n": '
    body = prefix + str(wide).encode() + b"}"
    assert decode_json(body)["n"] == wide


def test_parse_retry_after_leaves_the_cap_to_the_caller() -> None:
    """A day is a day to the parser (the resource caps it); an unreadable number is no
    hint at all."""
    assert parse_retry_after("86400") == 86400.0
    assert parse_retry_after("1" + "0" * 400) is None
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=0.0) == pytest.approx(
        253402300799.0
    )


def test_a_far_future_retry_after_date_is_waited_only_up_to_max_wait() -> None:
    """A 429 asking to wait until the year 9999 carries a hint of max_wait seconds and
    says what it asked for."""
    error = fetch_error(status(429, {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}))
    assert isinstance(error, TransientError)
    assert error.retry_after == 3600.0
    assert "waiting the cap of 3600 s" in error.message


def test_a_resource_pause_longer_than_max_wait_is_cut_and_said_once() -> None:
    """Pausing a resource with max_wait=120 for 10**9 s pauses it 120 s, telling its
    listeners once what was asked and what is waited."""
    resource = Resource("api", rate="5/s", max_wait=120.0)
    told: list[tuple[str, float]] = []
    resource.subscribe(lambda name, what, seconds, kind: told.append((what, seconds)))
    resource.pause(1e9, "quota used up")
    resource.pause(5e8, "quota used up")
    assert 60.0 < resource.paused_until - resource.clock.monotonic() <= 120.0
    assert len(told) == 1
    assert told[0][0] == (
        "paused (quota used up; asked for 1000000000 s, waiting the cap of 120 s)"
    )


def _retry_waits(
    resource: Resource | None, failures: tuple[httpx.Response, ...] | None = None
) -> list[float]:
    """The waits (virtual seconds) between the sends of a request by a client with three
    retries that fails with ``failures`` (twice 503, no hint) before it is answered."""
    from virtual_time import FakeClock

    clock = FakeClock()
    if resource is not None:
        resource.clock = clock
    sent: list[float] = []
    answers = failures or (httpx.Response(503, text="busy"),) * 2

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(clock.monotonic())
        if len(sent) <= len(answers):
            return answers[len(sent) - 1]
        return httpx.Response(200, json={"ok": True})

    async def go() -> None:
        client = HttpClient(
            resource=resource,
            retries=3,
            transport=httpx.MockTransport(handler),
            clock=clock,
            hedge=False,
        )
        try:
            assert await client.get_json(URL) == {"ok": True}
        finally:
            await client.aclose()

    asyncio.run(go())
    return [b - a for a, b in itertools.pairwise(sent)]


def test_a_lone_429_holds_its_own_request_for_the_second_it_asks_and_pauses_nothing() -> None:
    resource = Resource("api", rate="20/s")
    waits = _retry_waits(resource, (httpx.Response(429, headers={"Retry-After": "1"}),))
    assert resource.pauses == 0
    assert 1.0 <= waits[0] <= 1.0 + 0.06, waits


@pytest.mark.parametrize("rate", ["20/s", None])
def test_a_429_asking_no_wait_is_still_waited_for_a_moment(rate: str | None) -> None:
    """Retry-After: 0 on a 429 is a refusal all the same: its request waits at least
    the backoff's first wait (0.2 s), not a millisecond (through quotas only, three
    retries spent three of the day's quota in 2 ms)."""
    resource = Resource("api", rate=rate, limits=["100/day"])
    refused = httpx.Response(429, headers={"Retry-After": "0"})
    waits = _retry_waits(resource, (refused, refused))
    assert all(wait >= 0.2 for wait in waits), waits


def test_a_5xx_s_retry_after_is_a_hint_held_to_the_backoff_s_cap() -> None:
    """A 502 asking 15 s (or an hour) is no refusal: nothing pauses, and its request
    waits the backoff's cap (10 s) at most, as a client without a resource does."""
    for asked in ("15", "3600"):
        resource = Resource("api", rate="20/s")
        waits = _retry_waits(resource, (httpx.Response(502, headers={"Retry-After": asked}),))
        assert resource.pauses == 0
        assert 10.0 <= waits[0] <= 10.0 + 0.06, waits


def test_a_request_paced_by_a_resource_retries_a_5xx_at_once_then_backs_off() -> None:
    """A resource's rate already spaces every retry, and its circuit opens if the source
    keeps failing: the first retry of a lone 5xx waits 12-25 ms (not 0.1-0.2 s: near the
    end of a run the retry was the run's last request); the second backs off as without a
    resource (0.2-0.4 s), so a blip of a few hundred milliseconds still finds retries."""
    paced = _retry_waits(Resource("api", rate="1000/s", burst=1000))
    unpaced = _retry_waits(None)
    quota_only = _retry_waits(Resource("api", limits=["100000/day"]))
    assert 0.0125 <= paced[0] <= 0.025 + 1e-6, paced
    assert 0.2 <= paced[1] <= 0.4 + 1e-6, paced  # the second, as without a resource
    assert 0.1 <= unpaced[0] <= 0.2 + 1e-6, unpaced
    # A quota spaces nothing: a retry through it backs off as without a resource.
    assert 0.1 <= quota_only[0] <= 0.2 + 1e-6, quota_only


def _redirected(rate: str, routes: dict[str, Any], urls: list[str]) -> list[tuple[float, str]]:
    """Every request that reached a mock source answering ``routes`` (path -> a
    response, or an async function of the virtual clock returning one), as (virtual
    instant, path), for GETs of ``urls`` at once through a resource of ``rate``."""
    from virtual_time import FakeClock

    clock = FakeClock()
    resource = Resource("api", rate=rate, burst=1, clock=clock)
    arrivals: list[tuple[float, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        arrivals.append((clock.monotonic(), request.url.path))
        answer = routes[request.url.path]
        return await answer(clock) if callable(answer) else answer

    async def go() -> None:
        client = HttpClient(
            resource=resource, transport=httpx.MockTransport(handler), clock=clock, hedge=False
        )
        try:
            await asyncio.gather(*(client.get(u) for u in urls), return_exceptions=True)
        finally:
            await client.aclose()
        assert client.requests == resource.requests == len(arrivals)

    asyncio.run(go())
    return arrivals


def test_each_hop_of_a_redirect_takes_a_turn_of_the_resource() -> None:
    """A redirect's next hop is a request to the source too: at 2/s, two GETs each
    redirected twice are six requests half a second apart, not two bunches of three."""
    routes = {
        "/a": httpx.Response(302, headers={"Location": "/b"}),
        "/b": httpx.Response(302, headers={"Location": "/c"}),
        "/c": httpx.Response(200, json={}),
    }
    arrivals = _redirected("2/s", routes, [f"{URL_BASE}/a", f"{URL_BASE}/a"])
    assert [path for _, path in arrivals].count("/c") == 2
    assert len(arrivals) == 6
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.5 * 0.95, gaps


def test_a_redirect_s_next_hop_waits_out_a_pause_begun_meanwhile() -> None:
    """The first GET is redirected after 0.6 s; meanwhile another is answered 429 with
    Retry-After: 3 at about 0.1 s. The redirect's next hop does not reach the source
    inside the pause."""

    async def slow_redirect(clock: Any) -> httpx.Response:
        await clock.sleep(0.6)
        return httpx.Response(302, headers={"Location": "/done"})

    routes = {
        "/slow": slow_redirect,
        "/busy": httpx.Response(429, headers={"Retry-After": "3"}),
        "/done": httpx.Response(200, json={}),
    }
    arrivals = _redirected("10/s", routes, [f"{URL_BASE}/slow", f"{URL_BASE}/busy"])
    refused = next(t for t, path in arrivals if path == "/busy")
    hop = next(t for t, path in arrivals if path == "/done")
    assert hop >= refused + 3.0 - 1e-9, arrivals


def _redirecting_r_to_d(sent: list[str]) -> Callable[[httpx.Request], httpx.Response]:
    """A mock source that redirects /r to /d and answers anything else, noting each
    path in ``sent``."""

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if request.url.path == "/r":
            return httpx.Response(302, headers={"Location": "/d"})
        return httpx.Response(200, json={"ok": True})

    return handler


def test_a_redirect_s_wait_for_its_next_turn_is_not_against_the_answer_s_deadline() -> None:
    """A quota of 2 every 1.5 s, an answer deadline of 0.3 s: the second GET's first hop
    takes the quota's last start, and its redirect's next hop waits over a second for
    the window. Time waited for a turn never counts against a deadline: it is answered,
    not failed as a timeout (which spent a retry and fed the breaker an error)."""
    sent: list[str] = []
    handler = _redirecting_r_to_d(sent)

    async def go() -> list[Any]:
        resource = Resource("api", limits=["2 per 1.5 s"], concurrency=1)
        client = HttpClient(
            resource=resource,
            transport=httpx.MockTransport(handler),
            deadline=0.3,
            retries=0,
            hedge=False,
        )
        try:
            await client.get_json(f"{URL_BASE}/d")
            return [await client.get_json(f"{URL_BASE}/r"), client.transport_errors]
        finally:
            await client.aclose()

    body, errors = asyncio.run(go())
    assert body == {"ok": True} and errors == 0
    assert sent == ["/d", "/r", "/d"]


def test_the_open_circuit_s_probe_follows_its_redirect() -> None:
    """The circuit is open and its probe's request is redirected, while another request
    waits for the probe's answer: the probe's next hop is not held behind it (it waited
    for its own answer until the deadline, and the circuit never closed)."""
    from virtual_time import FakeClock

    clock = FakeClock()
    resource = Resource("api", rate="20/s", concurrency=4, clock=clock)
    for _ in range(20):
        resource.breaker.record(False, 0.0)
    assert resource.breaker.is_open
    sent: list[str] = []
    handler = _redirecting_r_to_d(sent)

    async def go() -> list[Any]:
        client = HttpClient(
            resource=resource,
            transport=httpx.MockTransport(handler),
            clock=clock,
            deadline=30.0,
            retries=0,
            hedge=False,
        )

        async def other() -> Any:
            await clock.sleep(0.01)  # the probe's turn comes first
            return await client.get_json(f"{URL_BASE}/x")

        try:
            return list(await asyncio.gather(client.get_json(f"{URL_BASE}/r"), other()))
        finally:
            await client.aclose()

    assert asyncio.run(go()) == [{"ok": True}, {"ok": True}]
    assert sent == ["/r", "/d", "/x"]
    assert not resource.breaker.is_open


def _refusals_on_virtual_time(
    routes: Callable[[str, int], Any], script: Callable[[HttpClient, Any], Any]
) -> tuple[Resource, list[tuple[float, str]]]:
    """Run ``script(client, clock)`` against a MockTransport answering ``routes(path, n)``
    (an async function of the clock, or a response), on virtual time; the resource
    (20/s) and every (instant, path) that reached the source."""
    from virtual_time import FakeClock

    clock = FakeClock()
    resource = Resource("api", rate="20/s", clock=clock)
    arrivals: list[tuple[float, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        arrivals.append((clock.monotonic(), request.url.path))
        answer = routes(request.url.path, len(arrivals))
        return await answer(clock) if callable(answer) else answer

    async def go() -> None:
        client = HttpClient(
            resource=resource,
            transport=httpx.MockTransport(handler),
            clock=clock,
            retries=0,
            hedge=False,
        )
        try:
            await script(client, clock)
        finally:
            await client.aclose()

    asyncio.run(go())
    return resource, arrivals


def _late(status: int, after: float, headers: dict[str, str] | None = None) -> Any:
    async def answer(clock: Any) -> httpx.Response:
        await clock.sleep(after)
        return httpx.Response(status, headers=headers, json={})

    return answer


REFUSED = {"Retry-After": "1"}


def test_a_429_is_dated_when_its_request_went_on_the_resource_s_clock() -> None:
    """Two requests sent 0.05 s apart, both refused 0.3 s later: the second went before
    the first was refused, an echo (no pause); a third sent after that and refused (past
    the moments in which the bucket the first emptied refills) says the source insists
    (a pause)."""

    async def script(client: HttpClient, clock: Any) -> None:
        await asyncio.gather(
            client.get("https://api.example/a"),
            client.get("https://api.example/b"),
            return_exceptions=True,
        )
        assert client.resource is not None and client.resource.pauses == 0
        await clock.sleep(EASE_SETTLE)
        with contextlib.suppress(TransientError):
            await client.get("https://api.example/c")

    resource, arrivals = _refusals_on_virtual_time(lambda path, n: _late(429, 0.3, REFUSED), script)
    assert [p for _, p in arrivals] == ["/a", "/b", "/c"]
    assert resource.pauses == 1


def test_a_redirect_s_hop_is_dated_when_the_hop_went() -> None:
    """A request redirected 0.5 s after it went, its hop refused: the hop went after a
    lone 429 another request drew meanwhile (and the moments its bucket refills), so the
    source insists (a pause), though the request's first hop went before it."""

    def routes(path: str, n: int) -> Any:
        if path == "/r":
            return _late(302, 0.5, {"Location": "https://api.example/d"})
        return httpx.Response(429, headers=REFUSED, json={})

    async def script(client: HttpClient, clock: Any) -> None:
        async def lone() -> None:
            await clock.sleep(0.05)
            with contextlib.suppress(TransientError):
                await client.get("https://api.example/lone")

        await asyncio.gather(client.get("https://api.example/r"), lone(), return_exceptions=True)

    resource, arrivals = _refusals_on_virtual_time(routes, script)
    assert [p for _, p in arrivals] == ["/r", "/lone", "/d"]
    assert resource.pauses == 1


def test_the_open_circuit_s_probe_refused_with_a_429_waits_the_second_it_asks() -> None:
    """The probe's 429 does not ease: the resource pauses, and the request (now waiting
    for the circuit again) goes no sooner than the second asked for (real time: ~3 s)."""
    import time

    resource = Resource("api", rate="20/s")
    probes: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/bad"):
            return httpx.Response(502, json={})
        probes.append(time.monotonic())
        if len(probes) == 1:
            return httpx.Response(429, headers=REFUSED, json={})
        return httpx.Response(200, json={})

    async def go() -> None:
        transport = httpx.MockTransport(handler)
        bad = HttpClient(resource=resource, transport=transport, retries=0, hedge=False)
        client = HttpClient(resource=resource, transport=transport, retries=2, hedge=False)
        failing = [asyncio.create_task(bad.get(f"https://api.example/bad{i}")) for i in range(10)]
        try:
            for _ in range(500):  # the circuit opens within milliseconds
                if resource.breaker.is_open:
                    break
                await asyncio.sleep(0.01)
            assert resource.breaker.is_open
            for task in failing:
                task.cancel()
            await asyncio.gather(*failing, return_exceptions=True)
            assert (await client.get("https://api.example/r")).status_code == 200
        finally:
            await client.aclose()
            await bad.aclose()

    asyncio.run(go())
    assert len(probes) == 2 and probes[1] - probes[0] >= 0.99
    assert resource.pauses == 1
