"""The HTTP client's parts on their own: answers, targets, hedging and outages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx
import pytest

from backfill.errors import FatalError, PermanentError, TransientError
from backfill.ratelimit import Outcome, Resource
from backfill.sources.answers import error_of, failure_of, outcome_of, rate_headers
from backfill.sources.hedging import Hedge
from backfill.sources.outage import Outage
from backfill.sources.targets import Targets
from virtual_time import FakeClock


@pytest.mark.parametrize(
    ("status", "asked", "outcome"),
    [
        (429, None, Outcome.RATE_LIMITED),
        (503, 5.0, Outcome.RATE_LIMITED),
        (503, None, Outcome.ERROR),
        (404, None, Outcome.CLIENT_ERROR),
    ],
)
def test_a_failed_answer_tells_its_resource_what_it_was(
    status: int, asked: float | None, outcome: Outcome
) -> None:
    """A 429, or a 503 asking to wait, is a refusal; other 5xx errors; other 4xx not the
    source's fault."""
    assert outcome_of(status, asked) is outcome


def test_an_answer_is_the_error_its_status_says() -> None:
    """401 is fatal, 404 permanent, 429 transient with its wait capped at max_wait, and a
    garbled Retry-After a transient bad header."""
    assert isinstance(error_of("GET x", 401, None, None, 60.0), FatalError)
    assert isinstance(error_of("GET x", 404, None, None, 60.0), PermanentError)
    capped = error_of("GET x", 429, "120", 120.0, 60.0)
    assert isinstance(capped, TransientError) and capped.retry_after == 60.0
    assert "waiting the cap of 60 s" in capped.message
    assert error_of("GET x", 503, "soon", None, 60.0).category == "bad_header"


def test_rate_headers_are_read_and_garbage_ignored() -> None:
    """Remaining, reset and a limit with its window are read; a limit without a window is
    not, nor is a value that is not a usable number."""
    response = httpx.Response(
        200,
        headers={
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": "nan",
            "RateLimit-Limit": "100",
            "RateLimit-Policy": "100;w=60",
        },
    )
    assert rate_headers(response) == {
        "remaining": 0,
        "reset_after": None,
        "limit": 100,
        "window": 60.0,
    }
    assert rate_headers(httpx.Response(200, headers={"RateLimit-Limit": "9"}))["limit"] is None


def test_a_request_without_an_answer_is_a_transient_error_that_says_why() -> None:
    """Past the deadline, a timeout naming it; a connection failure, a network error."""
    url = httpx.URL("https://api.example/x")
    where = lambda method, target: f"{method} {target}"  # noqa: E731
    late = failure_of(TimeoutError(), "GET", url, where, 60.0)
    assert (late.category, "within 60 s" in late.message) == ("timeout", True)
    refused = httpx.ConnectError("no", request=httpx.Request("GET", url))
    assert failure_of(refused, "GET", url, where, 60.0).category == "network"


def test_targets_resolve_relative_urls_and_redact_secrets() -> None:
    """A relative URL goes under base_url's path; a secret never shows in a message; a
    relative URL without base_url, or another scheme, is a bad URL."""
    targets = Targets(
        "api",
        base_url="https://api.example/v1/",
        allowed_hosts=(),
        owner="resource 'api'",
        secrets=("s3cret",),
    )
    assert str(targets.resolve("items")) == "https://api.example/v1/items"
    assert "s3cret" not in targets.where("GET", "https://api.example/x?token=s3cret")
    assert (
        targets.call(httpx.URL("https://other.example/")).origins
        == targets.call(httpx.URL("https://api.example/")).origins
    )
    bare = Targets(None, base_url=None, allowed_hosts=(), owner="the HTTP client", secrets=())
    with pytest.raises(PermanentError, match=r"ctx\.http has no base_url"):
        bare.resolve("items")
    with pytest.raises(PermanentError, match="only http and https"):
        bare.resolve("ftp://files.example/x")


def test_a_hedge_waits_for_latencies_then_sends_a_copy_that_may_win() -> None:
    """No copy before 20 answers are known; then a first request slower than three
    times the 95th percentile gets a copy, and the copy's answer wins."""
    hedge = Hedge(enabled=True)
    assert hedge.after("GET", 60.0) is None
    hedge.latencies.extend([0.1] * 20)
    assert hedge.after("GET", 60.0) == pytest.approx(0.3)
    assert hedge.after("POST", 60.0) is None

    async def main() -> str:
        async def slow() -> str:
            await asyncio.sleep(10)
            return "first"

        async def quick() -> str:
            return "copy"

        return await hedge.race(asyncio.create_task(slow()), quick, 0.01)

    assert asyncio.run(main()) == "copy"
    assert hedge.won == 1


def test_a_hedge_goes_sooner_while_nothing_else_waits_for_the_resource() -> None:
    """While the resource is busy (others wait for their turns) a copy goes only after
    the full wait; once nothing else waits for it (the last pages of a run), as soon as
    the first request is past one and a half times the 95th percentile: here 0.15 s."""
    hedge = Hedge(enabled=True)
    hedge.latencies.extend([0.1] * 20)
    assert hedge.idle_after(5.0) == pytest.approx(0.15)
    assert hedge.idle_after(0.12) == pytest.approx(0.12)

    async def copy_sent_after(wait: float, idle: Callable[[], bool]) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent: list[float] = []

        async def slow() -> str:
            await asyncio.sleep(30)
            return "first"

        async def quick() -> str:
            sent.append(loop.time() - started)
            return "copy"

        assert await hedge.race(asyncio.create_task(slow()), quick, wait, idle=idle) == "copy"
        return sent[0]

    async def main() -> tuple[float, float, float]:
        busy = await copy_sent_after(0.5, lambda: False)
        idle = await copy_sent_after(10.0, lambda: True)
        flips_at = asyncio.get_running_loop().time() + 0.4
        later = await copy_sent_after(10.0, lambda: asyncio.get_running_loop().time() > flips_at)
        return busy, idle, later

    busy, idle, later = asyncio.run(main())
    assert busy >= 0.49
    assert 0.14 <= idle < 5.0
    assert 0.39 <= later < 5.0


def test_a_resource_is_idle_only_while_nothing_waits_for_a_turn_or_a_slot() -> None:
    """A request waiting for its turn, or every slot taken, makes the resource busy."""

    async def main() -> list[bool]:
        clock = FakeClock()
        resource = Resource("api", rate="1/s", concurrency=2, clock=clock)
        seen = [resource.idle()]
        await resource.acquire()  # the first turn goes at once
        waiting = asyncio.create_task(resource.acquire())  # the next waits a second
        await asyncio.sleep(0)
        seen.append(resource.idle())
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        seen.append(resource.idle())
        pool = resource.pool.current()
        assert pool is not None
        async with pool, pool:
            seen.append(resource.idle())
        seen.append(resource.idle())
        return seen

    assert asyncio.run(main()) == [True, False, True, False, True]


def test_an_outage_counts_from_the_circuit_opening_and_names_the_last_error() -> None:
    """Down for 90 s past a max_wait of 60 s, the error says both and the last failure."""
    clock = FakeClock()
    resource = Resource("api", rate=5, clock=clock)
    outage = Outage(resource)
    assert outage.down_for() == 0.0
    resource.down_since = 10.0
    resource.last_error = "GET /x answered 503"
    clock.t = 100.0
    error = outage.error(None, 60.0)
    assert outage.down_for() == 90.0
    assert "down (its circuit open) for 90 s, longer than max_wait=60 s" in error.message
    assert error.message.endswith("its last error: GET /x answered 503")
    assert error.category == "unavailable"
