"""The browser client's pacing and judging of loads, on stand-in pages (no browser)."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backfill import ConfigError, Job, PermanentError, TransientError
from backfill.ratelimit import Resource
from backfill.sources.browser import BrowserClient
from backfill.sources.browser_options import BrowserOptions
from tennis_site import most_in_window
from virtual_time import FakeClock


@dataclass(eq=False)
class StandInPage:
    """Answers goto with a status and a title, asking its client for the turn and
    letting the request go as the browser's route does; notes when each load left."""

    status: int = 200
    title_text: str = "Results"
    starts: list[float] = field(default_factory=list)
    client: Any = None
    # How long after its turn each request is let go (the route's continue), in turn.
    delays: list[float] = field(default_factory=list)
    # How long after being let go each request leaves the browser, in turn.
    leaves: list[float] = field(default_factory=list)
    # The answer's headers (names lower-cased, as the browser gives them).
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def context(self) -> StandInPage:
        return self

    async def goto(self, url: str, **options: Any) -> Any:
        turn = await self.client.admit(self.context)
        delay = self.delays.pop(0) if self.delays else 0.0
        if delay:
            await asyncio.sleep(delay)
        self.client.released(self.context, turn)
        leave = self.leaves.pop(0) if self.leaves else 0.0
        self.starts.append(time.monotonic() + leave)
        timing = {"startTime": (time.time() + leave) * 1000, "requestStart": 0.0}
        await asyncio.sleep(0.001)
        request = type("Request", (), {"timing": timing})()
        answer = {"status": self.status, "request": request, "headers": self.headers}
        return type("Answer", (), answer)()

    async def title(self) -> str:
        return self.title_text

    async def wait_for_selector(self, selector: str, **options: Any) -> None:
        return None

    def is_closed(self) -> bool:
        return False


def client(rate: float, jitter: tuple[float, float] | None = None, **options: Any) -> BrowserClient:
    resource = Resource("site", rate=rate, concurrency=4)
    return BrowserClient(resource, BrowserOptions(pages=4, jitter=jitter, **options))


def test_loads_of_every_page_together_keep_the_rate_and_each_page_its_jitter() -> None:
    """Four pages loading as fast as they may: no two loads closer than the rate's
    interval, and no page loads again sooner than the jitter's low end."""
    browser = client(40.0, jitter=(0.06, 0.1))
    pages = [StandInPage(client=browser) for _ in range(4)]

    async def walk(page: StandInPage) -> None:
        for _ in range(6):
            await browser.load(page, "http://site.invalid/p", None)

    async def main() -> None:
        await asyncio.gather(*(walk(p) for p in pages))

    asyncio.run(main())
    starts = sorted(s for p in pages for s in p.starts)
    assert len(starts) == 24
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 1 / 40 - 0.002
    for page in pages:
        gaps = [b - a for a, b in itertools.pairwise(page.starts)]
        assert min(gaps) >= 0.06
    assert browser.loads == 24 and browser.resource.requests == 24


@pytest.mark.parametrize(
    ("page", "category", "error"),
    [
        (StandInPage(status=503), "http_5xx", TransientError),
        (StandInPage(status=429), "rate_limited", TransientError),
        (StandInPage(title_text="Just a moment..."), "blocked", TransientError),
        (StandInPage(status=404), "http_404", PermanentError),
    ],
)
def test_a_failed_load_is_classified(page: StandInPage, category: str, error: type) -> None:
    """A 5xx, a 429 and a block page are transient, another 4xx permanent."""
    browser = client(100.0, block_page="Just a moment")
    page.client = browser
    with pytest.raises(error) as info:
        asyncio.run(browser.load(page, "http://site.invalid/p?key=s3cret", None))
    assert info.value.category == category


@pytest.mark.parametrize(
    ("status", "header", "asked"),
    [(429, "30", 30.0), (503, "20", 20.0), (429, None, 1.0), (429, "soon", 1.0)],
)
def test_a_page_s_retry_after_is_waited_as_an_api_s_is(
    status: int, header: str | None, asked: float
) -> None:
    """A page refused with ``Retry-After: 30`` (or a 503 asking 20 s) pauses the site's
    resource for what it asks, and the stage's retry waits it too (they waited a second
    and the retry policy's backoff: a polite scraper came back 29 s early). No header,
    or one that is neither seconds nor a date, asks for the usual second, and a lone
    429 asking that little pauses the site too (an API's only slows down for it)."""
    browser = client(100.0)
    page = StandInPage(status=status, client=browser)
    if header is not None:
        page.headers = {"retry-after": header}
    with pytest.raises(TransientError) as info:
        asyncio.run(browser.load(page, "http://site.invalid/p", None))
    resource = browser.resource
    assert info.value.retry_after == pytest.approx(asked)
    assert resource.paused_until - resource.clock.monotonic() == pytest.approx(asked, abs=0.5)
    assert resource.rate_limited == 1


def test_block_pages_timeouts_and_5xx_open_the_circuit() -> None:
    """Loads that keep failing as transient open the resource's circuit breaker."""
    browser = client(1000.0, block_page=lambda page: page.title_text.startswith("Just"))
    page = StandInPage(title_text="Just a moment...", client=browser)

    async def main() -> int:
        for failed in range(20):
            if browser.resource.breaker.is_open:
                return failed
            with pytest.raises(TransientError):
                await browser.load(page, "http://site.invalid/p", None)
        return 20

    assert asyncio.run(main()) == browser.resource.breaker.min_requests
    assert browser.resource.state()["circuit"] == "open"


def test_a_missing_browser_is_one_sentence_naming_what_to_install(tmp_path: Path) -> None:
    """No chromium at the executable's path: a ConfigError that says apt-get install."""
    resource = Resource("site", rate=1.0, concurrency=1)
    browser = BrowserClient(resource, BrowserOptions(executable=tmp_path / "no-chromium"))

    async def main() -> None:
        async with browser.page():
            pass

    with pytest.raises(ConfigError, match=r"apt-get install chromium") as info:
        asyncio.run(main())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"jitter": (1.0, 0.3)}, "jitter must be"),
        ({"jitter": (0.3,)}, "jitter must be"),
        ({"recycle_every": 0}, "recycle_every"),
        ({"block": ["pictures"]}, "unknown resource type 'pictures'"),
        ({"timeout": 0}, "timeout must be"),
        ({"pages": 0}, "pages must be"),
        ({"block_page": 3}, "block_page must be"),
    ],
)
def test_bad_browser_options_are_one_sentence(options: dict[str, Any], message: str) -> None:
    """Each bad option names the browser resource and what to write."""
    job = Job("j")
    with pytest.raises(ConfigError, match=message) as info:
        job.browser("site", rate="1/s", **options)
    assert "'site'" in str(info.value)
    assert "site" not in job.resources


def test_a_browser_resource_is_a_resource_of_pages() -> None:
    """Pages are the resource's concurrency; allow takes a type back from block."""
    job = Job("j")
    resource = job.browser("site", rate="2/s", pages=3, allow=["image"])
    assert resource.concurrency == 3
    assert job.browser_options["site"].block == ("font", "media")


def walk_together(browser: BrowserClient, pages: list[StandInPage], loads: int) -> list[float]:
    """Every page loading ``loads`` times as fast as it may; when each load left, in order."""

    async def walk(page: StandInPage) -> None:
        for _ in range(loads):
            await browser.load(page, "http://site.invalid/p", None)

    async def main() -> None:
        await asyncio.gather(*(walk(p) for p in pages))

    asyncio.run(main())
    return sorted(s for p in pages for s in p.starts)


def test_a_load_let_go_late_holds_back_only_the_loads_that_could_share_its_second() -> None:
    """Four pages at 10 loads a second; one request in eight is let go 0.3 s after its
    turn (a new page starting its renderer), the others at once. No second ever sees
    more than 10 loads leave, and the loads still go out at nearly the rate: a late one
    does not widen the spacing of every load after it."""
    browser = client(10.0)
    delays = [0.3 if n % 8 == 3 else 0.0 for n in range(64)]
    pages = [StandInPage(client=browser, delays=delays[i::4]) for i in range(4)]
    starts = walk_together(browser, pages, 16)
    assert len(starts) == 64
    assert most_in_window(starts) <= 10
    # Most loads leave 0.1 s after the one before (a late one leaves a hole behind it
    # and shares a moment with another); spacing every load by the delays' spread, as
    # before, gave 0.13 s between all of them.
    assert statistics.median(b - a for a, b in itertools.pairwise(starts)) < 0.12


def test_the_margin_follows_how_late_requests_leave_after_being_let_go() -> None:
    """Requests leaving the browser up to 0.2 s after the route let them go widen the
    margin to that; prompt ones keep the least margin."""
    browser = client(50.0)
    page = StandInPage(client=browser, leaves=[0.0, 0.2, 0.05])

    async def main() -> None:
        for _ in range(3):
            await browser.load(page, "http://site.invalid/p", None)

    assert browser.margin == 0.015
    asyncio.run(main())
    assert 0.19 <= browser.margin <= 0.21


def test_loads_known_to_have_left_are_paced_from_when_they_left_not_by_the_margin() -> None:
    """One request leaves 0.2 s after being let go, which widens the margin to 0.2 s;
    the loads whose answers came back since are paced from when chromium says they
    left, so the spacing stays at the rate's and no second sees more than 10 loads."""
    browser = client(10.0)
    leaves = [0.0] * 4 + [0.2] + [0.0] * 59
    pages = [StandInPage(client=browser, leaves=leaves[i::4]) for i in range(4)]
    starts = walk_together(browser, pages, 16)
    assert most_in_window(starts) <= 10
    # While the margin remembers the late one (24 loads), pacing by it alone holds every
    # tenth load back 0.2 s more (gaps of 0.3 s); paced from when they left, none.
    after = starts[8:40]
    assert max(b - a for a, b in itertools.pairwise(after)) < 0.25


@dataclass(eq=False)
class RefusingPage(StandInPage):
    """A stand-in page on virtual time whose site refuses every load (429,
    ``Retry-After: 1``) between the two instants of ``down``, and answers the rest a
    latency later; notes each load's arrival and whether it was taken."""

    clock: FakeClock = field(default_factory=FakeClock)
    down: tuple[float, float] = (0.0, 0.0)
    log: list[tuple[float, bool]] = field(default_factory=list)
    latency: float = 0.15

    async def goto(self, url: str, **options: Any) -> Any:
        turn = await self.client.admit(self.context)
        self.client.released(self.context, turn)
        now = self.clock.monotonic()
        taken = not self.down[0] <= now < self.down[1]
        self.log.append((now, taken))
        timing = {"startTime": self.clock.time() * 1000, "requestStart": 0.0}
        await self.clock.sleep(self.latency)
        request = type("Request", (), {"timing": timing})()
        headers = {} if taken else {"retry-after": "1"}
        answer = {"status": 200 if taken else 429, "request": request, "headers": headers}
        return type("Answer", (), answer)()


def _walked_through_refusals(rate: float, down: tuple[float, float]) -> list[tuple[float, bool]]:
    """Four pages loading from a site at its declared ``rate`` until a minute after it
    refused every load between the two instants of ``down``; each load's arrival and
    whether it was taken, in order."""
    clock = FakeClock()
    resource = Resource("site", rate=rate, concurrency=4, clock=clock)
    browser = BrowserClient(resource, BrowserOptions(pages=4), clock=clock)
    pages = [RefusingPage(clock=clock, down=down, client=browser) for _ in range(4)]

    async def walk(page: RefusingPage) -> None:
        while clock.monotonic() < down[1] + 60.0:
            try:
                await browser.load(page, "http://site.invalid/p", None)
            except TransientError as exc:
                await clock.sleep(exc.retry_after or 1.0)

    async def main() -> None:
        await asyncio.gather(*(walk(p) for p in pages))

    asyncio.run(main())
    return sorted(entry for page in pages for entry in page.log)


@pytest.mark.parametrize("rate", [1.0, 2.0, 4.0])
def test_a_site_that_refuses_every_load_for_seconds_is_loaded_at_its_rate_again_once_back(
    rate: float,
) -> None:
    """A site taken at its declared rate by four pages, then refusing every load for a few
    seconds (429, ``Retry-After: 1``), early in the run or later: once it takes loads
    again, the rate comes back as an API's does, the resource told when each load's
    request left (told nothing, it could not tell a run of refusals from the site's
    limit: 5-7 of 10 loads at 1/s and 21 of 40 at 4/s in the ten seconds after five
    refused, and 62 of 100 at 2/s, 134 of 200 at 4/s, in the fifty after three refused
    soon after the start)."""
    later = _walked_through_refusals(rate, (20.0, 25.0))
    taken = sum(1 for t, ok in later if ok and 25.0 <= t < 35.0)
    assert taken >= 0.6 * rate * 10.0, taken
    early = _walked_through_refusals(rate, (5.0, 8.0))
    taken = sum(1 for t, ok in early if ok and 18.0 <= t < 68.0)
    assert taken >= 0.9 * rate * 50.0, taken
    for log, back in ((later, 25.0), (early, 8.0)):
        assert all(ok for t, ok in log if t >= back + 1.0)
