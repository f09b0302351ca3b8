"""HttpClient: responses and transport failures classified into backfill's error classes."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill.errors import FatalError, PermanentError, StageError, TransientError
from backfill.sources.http import HttpClient, decode_json, parse_retry_after, redact_url

URL = "https://api.example/results/2013-01-01"
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
