"""``ctx.browser``: a pool of Playwright pages on Debian's chromium, bound to a resource.

Page loads take the resource's turns (its rates, quotas, pauses and circuit breaker) and
pages are its concurrency. Pages are reused from partition to partition; their browser
context is replaced every ``recycle_every`` loads; images, fonts and media are not
loaded unless the job asks. A navigation timeout, a 5xx or a block page fails the load as
transient and counts against the circuit breaker; a browser that died is launched again
and the partition that saw it die is retried. The screenshot and HTML of a page that
failed are kept beside the run's log file.

Example::

    job.browser("site", rate="4/s", pages=4, jitter=(0.3, 1.0), block_page="Just a moment")

    @job.stage(resource="site")
    async def results(ctx, partition):
        async with ctx.browser.page() as page:
            await page.goto(f"{SITE}/t/{partition.params['number']}", wait_for="#draw")
            return await page.eval_on_selector_all("#draw tr", ROWS_JS)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from backfill.clock import Clock, SystemClock
from backfill.errors import ConfigError, PermanentError, TransientError
from backfill.ratelimit import Resource
from backfill.ratelimit.grants import LateStart, take_grant, until_start
from backfill.ratelimit.limits import REFUSED_WAIT, Outcome
from backfill.secrets import Masker
from backfill.sources.answers import outcome_of, parse_retry_after
from backfill.sources.browser_options import BrowserOptions
from backfill.sources.tally import partition_requests

if TYPE_CHECKING:
    from backfill.job import Job

__all__ = ["BrowserClient", "BrowserPage", "browser_client", "failure_dir"]

_log = logging.getLogger("backfill.browser")
# A request leaves chromium a little after the route lets it go (Playwright's continue
# returns) and sometimes long after its turn (a new page's first load waits for its
# renderer). Loads are paced on when they were let go, not when they took their turn:
# the k-th load after one let go at t takes its turn no sooner than t + k/rate plus this
# margin, or the most that recent requests left after being let go, if more.
_LEAVE_MARGIN = 0.015
_LEAVES_KEPT = 24
# Between chromium's timing of a request leaving and the site receiving it (loopback to
# a network away), and the two clocks' readings: a load known to have left is paced from
# then plus this.
_LEFT_SLACK = 0.005
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def _playwright() -> Any:
    """Playwright's async API, or one sentence naming the extra."""
    try:
        from playwright import async_api
    except ImportError as exc:
        raise ConfigError(
            "browser sources need Playwright, which is not installed: "
            "pip install 'backfill[browser]'"
        ) from exc
    return async_api


def failure_dir() -> Path | None:
    """Beside the run's log file (``RUN.jsonl``): ``RUN-pages/``; None without a log file."""
    for handler in logging.getLogger().handlers:
        name = getattr(handler, "baseFilename", None)
        if isinstance(name, str) and name.endswith(".jsonl"):
            path = Path(name)
            return path.with_name(f"{path.stem}-pages")
    return None


@dataclass(slots=True)
class _Load:
    """A page load under way: whether its request has had its turn, when, and the
    circuit's probe number it took (0: none)."""

    granted: asyncio.Event
    # The partition's request count (the route runs in Playwright's task, not the stage's).
    tally: Any = None
    probe: int = 0
    started: float | None = None
    admitted: float | None = None  # the wall clock's, as chromium's timings
    released: float | None = None  # when the route let the request go (wall clock)
    turn: _Turn | None = None  # its turn, told when the request left


@dataclass(slots=True)
class _Turn:
    """A load's turn, until the route has let its request go: ``released`` then holds
    when (the clock's monotonic time), an upper bound of when it left but the margin;
    ``left``, once its answer came, when it did leave (chromium's own timing)."""

    known: asyncio.Event
    released: float = 0.0
    left: float | None = None

    def bound(self, margin: float) -> float:
        """The latest its request may reach the site (monotonic)."""
        return self.left + _LEFT_SLACK if self.left is not None else self.released + margin


class BrowserPage:
    """A page of the pool while a partition holds it: :meth:`goto` loads a URL at the
    resource's pace and judges the load; anything else is the Playwright page's own
    (``page.content()``, ``page.locator(...)``, ...), also as :attr:`page`."""

    def __init__(self, client: BrowserClient, page: Any) -> None:
        self.client = client
        self.page = page

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)

    async def goto(self, url: str, *, wait_for: str | None = None) -> int:
        """Load ``url`` (then wait for the CSS selector ``wait_for``, for pages rendered
        by scripts) and return the HTTP status. A timeout, a 5xx, a 429 or a block page
        raise :class:`TransientError` and count against the resource's circuit; another
        4xx raises :class:`PermanentError`."""
        return await self.client.load(self.page, url, wait_for)


class BrowserClient:
    """The page pool of one browser resource (see the module).

    Made once per run by the client registry (kind ``browser``); closed at the run's end.
    """

    def __init__(
        self,
        resource: Resource,
        options: BrowserOptions,
        *,
        clock: Clock | None = None,
        masker: Masker | None = None,
    ) -> None:
        self.resource = resource
        self.options = options
        self.clock = clock or SystemClock()
        self.masker = masker or Masker(())
        self._pw: Any = None
        self._browser: Any = None
        self._launches = 0
        self._lock = asyncio.Lock()
        # Idle pages, each with its context and the loads it has made.
        self._idle: list[tuple[Any, Any]] = []
        self._loads: dict[Any, int] = {}
        # When each page's last load left: its jitter counts from there.
        self._page_starts: dict[Any, float] = {}
        # Loads waiting for (or past) their turn, by their page's context.
        self._loading: dict[Any, _Load] = {}
        self._spacing: asyncio.Lock | None = None
        self._last_start: float | None = None
        # The turns of the latest loads that may still share a window with the next.
        self._turns: list[_Turn] = []
        # How long after being let go recent requests left chromium (its own timings).
        self._leaves: collections.deque[float] = collections.deque(maxlen=_LEAVES_KEPT)
        self._contexts: set[Any] = set()
        self.loads = 0
        self.restarts = 0
        self.recycled = 0
        self.saved: list[Path] = []

    # -- the browser ---------------------------------------------------------------------

    @property
    def launches(self) -> int:
        return self._launches

    async def _ensure_browser(self) -> Any:
        async with self._lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if self._browser is not None:
                # It died (killed, crashed): its pages and contexts went with it.
                self.restarts += 1
                _log.warning(
                    "the browser of resource %s died; launching it again", self.resource.name
                )
                self._idle.clear()
                self._loads.clear()
                self._page_starts.clear()
                self._contexts.clear()
                with contextlib.suppress(Exception):
                    await self._browser.close()
                self._browser = None
            executable = self.options.executable
            if not executable.exists():
                raise ConfigError(
                    f"no browser at {executable}: install Debian's chromium "
                    "(apt-get install chromium) or pass executable= to job.browser(...)"
                )
            api = _playwright()
            if self._pw is None:
                self._pw = await api.async_playwright().start()
            self._browser = await self._pw.chromium.launch(
                executable_path=str(executable),
                headless=self.options.headless,
                args=["--disable-dev-shm-usage", *self.options.args],
            )
            self._launches += 1
            return self._browser

    async def _new_page(self) -> tuple[Any, Any]:
        browser = await self._ensure_browser()
        context = await browser.new_context()
        self._contexts.add(context)
        blocked = frozenset(self.options.block)

        async def route(route: Any) -> None:
            kind = route.request.resource_type
            if kind in blocked:
                await route.abort()
                return
            if kind != "document":
                await route.continue_()
                return
            turn = await self.admit(context)
            try:
                await route.continue_()
            finally:
                self.released(context, turn)

        await context.route("**/*", route)
        page = await context.new_page()
        self._loads[page] = 0
        return page, context

    async def _take(self) -> tuple[Any, Any]:
        while self._idle:
            page, context = self._idle.pop()
            if not page.is_closed() and self._browser is not None and self._browser.is_connected():
                return page, context
            self._forget(page, context)
        return await self._new_page()

    def _forget(self, page: Any, context: Any) -> None:
        self._loads.pop(page, None)
        self._page_starts.pop(page, None)
        self._contexts.discard(context)

    async def _give_back(self, page: Any, context: Any, broken: bool) -> None:
        if broken or page.is_closed() or self._loads.get(page, 0) >= self.options.recycle_every:
            if not broken and not page.is_closed():
                self.recycled += 1
            self._forget(page, context)
            with contextlib.suppress(Exception):
                await context.close()
            return
        self._idle.append((page, context))

    # -- pages ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def page(self) -> AsyncIterator[BrowserPage]:
        """A page of the pool for this partition, holding one of the resource's
        concurrency slots while the block runs. A failure inside the block saves the
        page's screenshot and HTML; a browser that died is launched again for the next
        page and the failure is transient (the partition is retried)."""
        pool = self.resource.pool.current()
        async with pool if pool is not None else contextlib.nullcontext():
            try:
                page, context = await self._take()
            except ConfigError:
                raise
            except Exception as exc:
                raise self._crashed(exc) from None
            broken = False
            try:
                yield BrowserPage(self, page)
            except BaseException as exc:
                broken = not self._alive(page)
                if broken and not isinstance(exc, TransientError | asyncio.CancelledError):
                    raise self._crashed(exc) from None
                if not broken and isinstance(exc, Exception):
                    await self._save_failure(page, exc)
                raise
            finally:
                await self._give_back(page, context, broken)

    def _alive(self, page: Any) -> bool:
        return self._browser is not None and self._browser.is_connected() and not page.is_closed()

    def _crashed(self, exc: BaseException) -> TransientError:
        return TransientError(
            f"the browser of resource {self.resource.name} died ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no message'}); it is launched again",
            category="browser_crashed",
        )

    async def load(self, page: Any, url: str, wait_for: str | None) -> int:
        """One page load at the resource's pace, judged (see :meth:`BrowserPage.goto`).

        The resource's turn is taken when the browser is about to send the document
        request (:meth:`admit`, from the page's route), not when the navigation is asked
        for: a new page's first navigation spends a while starting its renderer, and a
        turn taken before that would reach the site late, on top of the next one."""
        api = _playwright()
        jitter = self.options.jitter
        last = self._page_starts.get(page)
        if jitter is not None and last is not None:
            # From the page's last load, not after it: a page that spent that long
            # reading what it loaded goes on at once. Before the turn, which is booked as
            # the load leaves, so the rate holds at the site whatever the jitter.
            wait = last + random.uniform(*jitter) - self.clock.monotonic()
            if wait > 0:
                await self.clock.sleep(wait)
        tally = partition_requests.get()
        state = _Load(asyncio.Event(), tally)
        self._loading[page.context] = state
        self._loads[page] = self._loads.get(page, 0) + 1
        timeout = self.options.timeout
        # With a selector to wait for, the document is enough: the selector says when the
        # scripts have rendered it.
        until = "load" if wait_for is None else "domcontentloaded"
        navigation = asyncio.ensure_future(page.goto(url, timeout=0, wait_until=until))
        started = self.clock.monotonic()
        try:
            try:
                granted = asyncio.ensure_future(state.granted.wait())
                try:
                    # A turn may take long (a quota, an open circuit): the timeout counts
                    # from when the request leaves.
                    await asyncio.wait({navigation, granted}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    granted.cancel()
                started = state.started if state.started is not None else started
                self._page_starts[page] = started
                try:
                    response = await asyncio.wait_for(asyncio.shield(navigation), timeout)
                except TimeoutError:
                    await self._abandon(page, navigation)
                    raise api.TimeoutError(f"navigation took longer than {timeout:g} s") from None
                status = response.status if response is not None else 200
                self._left(state, response)
                headers = getattr(response, "headers", None)
                self._judge(status, url, started, tally, headers, sent=state.started)
                if await self._is_block_page(page):
                    self._observe(Outcome.ERROR, started)
                    raise self._blocked(url)
                if wait_for is not None:
                    await page.wait_for_selector(wait_for, timeout=timeout * 1000, state="attached")
            except api.TimeoutError:
                self._observe(Outcome.ERROR, started)
                raise TransientError(
                    f"page {self._shown(url)} did not load within {timeout:g} s",
                    category="timeout",
                ) from None
            except api.Error as exc:
                if not self._alive(page):
                    raise self._crashed(exc) from None
                self._observe(Outcome.ERROR, started)
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise TransientError(
                    f"page {self._shown(url)} failed to load: {self.masker.mask(first)}",
                    category="network",
                ) from None
            self._observe(Outcome.OK, started, sent=state.started)
            return int(status)
        except TransientError as exc:
            if tally is not None:
                tally.last_error = exc.message
            raise
        except asyncio.CancelledError:
            await self._abandon(page, navigation)
            raise
        finally:
            self._loading.pop(page.context, None)
            self.resource.breaker.drop_probe(state.probe)

    async def admit(self, context: Any) -> _Turn:
        """The document request of a page in ``context`` is about to leave the browser:
        take the resource's turn for it now (its jitter was waited for already). A
        navigation the stage started itself (a click) takes one too. The caller lets the
        request go and then calls :meth:`released` with what this returns.

        At a rate of r loads a second, no k/r seconds (k = r, at least 1) may see more
        than k loads reach the site. A load reaches it after its turn and, but for the
        margin, before the route let it go: the turn waits until fewer than k of the
        loads before it may still arrive within the k/r seconds that end at it (one
        not let go yet may arrive any time). A load let go late (a new page starting its
        renderer) holds back only the loads that could share a window with it."""
        state = self._loading.get(context)
        if self._spacing is None:
            self._spacing = asyncio.Lock()
        async with self._spacing:
            rate = self.resource.rate
            while 0 < rate < math.inf:
                window = max(1, math.floor(rate))
                span = window / rate
                now = self.clock.monotonic()
                margin = self.margin
                gone = now - span
                self._turns = [
                    t for t in self._turns if not t.known.is_set() or t.bound(margin) > gone
                ]
                pending = [t for t in self._turns if not t.known.is_set()]
                if len(pending) >= window:
                    await pending[0].known.wait()
                    continue
                bounds = sorted(t.bound(margin) for t in self._turns if t.known.is_set())
                need = window - len(pending)
                due = bounds[-need] + span if len(bounds) >= need else -math.inf
                if self._last_start is not None:
                    due = max(due, self._last_start + 1 / rate)
                if due <= now:
                    break
                await self.clock.sleep(due - now)
                rate = self.resource.rate
            probe = await self._turn()
            self._last_start = self.clock.monotonic()
            turn = _Turn(asyncio.Event())
            self._turns.append(turn)
        self.loads += 1
        if state is None or state.started is not None:
            # Not a load of ours, or a redirect of one: counted, no answer to judge.
            self.resource.breaker.drop_probe(probe)
            return turn
        if state.tally is not None:
            state.tally.requests += 1
        state.probe = probe
        state.started = self.clock.monotonic()
        state.admitted = self.clock.time()
        state.granted.set()
        return turn

    def released(self, context: Any, turn: _Turn) -> None:
        """The route let the request of ``turn`` go (or failed to): the loads after it
        are paced from now."""
        turn.released = self.clock.monotonic()
        turn.known.set()
        state = self._loading.get(context)
        if state is not None and state.released is None and state.admitted is not None:
            state.released = self.clock.time()
            state.turn = turn

    @property
    def margin(self) -> float:
        """Seconds a load's request may leave chromium after the route let it go: the
        most recent requests took (chromium's own timings), at least 15 ms."""
        return max(_LEAVE_MARGIN, max(self._leaves, default=0.0))

    def _left(self, state: _Load, response: Any) -> None:
        """Note how long after the route let it go the load's request left chromium."""
        request = getattr(response, "request", None)
        timing = getattr(request, "timing", None)
        if not isinstance(timing, dict) or state.released is None:
            return
        start, sent = timing.get("startTime", -1), timing.get("requestStart", -1)
        if isinstance(start, int | float) and start > 0:
            left = (start + max(0.0, sent if isinstance(sent, int | float) else 0.0)) / 1000
            late = max(0.0, left - state.released)
            self._leaves.append(late)
            if state.turn is not None:
                state.turn.left = state.turn.released + late

    async def _abandon(self, page: Any, navigation: asyncio.Future[Any]) -> None:
        """A navigation given up on: the page goes (a later load must not find it
        half way), and so does what it was doing."""
        navigation.cancel()
        with contextlib.suppress(Exception):
            await page.close()
        with contextlib.suppress(BaseException):
            await navigation

    def _judge(
        self,
        status: int,
        url: str,
        started: float,
        tally: Any,
        headers: Any,
        *,
        sent: float | None = None,
    ) -> None:
        """A load's status: a 429 or 5xx is transient, another 4xx permanent. A 429, or a
        503 with ``Retry-After``, pauses the resource for what it asks (a second when it
        asks nothing it can be read as), and the load's retry waits as long: even a lone
        one, which an API's only slows down for (a site refusing a page load turns the
        visitor away for a moment; easing sent the other pages into it, and each one
        refused at the lower rate halved it). ``sent``: when the load's turn let its
        request go, on the resource's clock (None: not known); with it the resource
        tells a run of refusals (back at the rate once the site takes loads again) from
        the site's limit."""
        if status < 400:
            return
        header = headers.get("retry-after") if isinstance(headers, dict) else None
        asked = parse_retry_after(header if isinstance(header, str) else None)
        if outcome_of(status, asked) is Outcome.RATE_LIMITED:
            self.resource.observe(
                Outcome.RATE_LIMITED,
                retry_after=asked,
                latency=self._since(started),
                status=status,
                sent=sent,
                ease=False,
            )
            if tally is not None:
                tally.rate_limited += 1
            wait = min(REFUSED_WAIT if asked is None else asked, self.resource.max_wait)
            category = "rate_limited" if status == 429 else "http_5xx"
            raise TransientError(
                f"{status} from {self._shown(url)}", category=category, retry_after=wait
            )
        if status >= 500:
            self._observe(Outcome.ERROR, started)
            raise TransientError(f"{status} from {self._shown(url)}", category="http_5xx")
        if status >= 400:
            self.resource.observe(Outcome.CLIENT_ERROR, latency=self._since(started))
            raise PermanentError(f"{status} from {self._shown(url)}", category=f"http_{status}")

    async def _turn(self) -> int:
        """A start of the resource (its rates, pauses, circuit), waited for to the
        instant a fleet or the wire spacing grants; the circuit's probe number or 0."""
        while True:
            probe = await self.resource.acquire()
            try:
                await until_start(self.clock, take_grant())
            except LateStart:
                self.resource.breaker.drop_probe(probe)
                self.resource.unsent()
                continue
            return probe

    def _since(self, started: float) -> float:
        return self.clock.monotonic() - started

    def _observe(self, outcome: Outcome, started: float, *, sent: float | None = None) -> None:
        self.resource.observe(outcome, latency=self._since(started), sent=sent)

    def _shown(self, url: str) -> str:
        return self.masker.mask(url)

    def _blocked(self, url: str) -> TransientError:
        return TransientError(
            f"page {self._shown(url)} is a block page (the site refuses us for now)",
            category="blocked",
        )

    async def _is_block_page(self, page: Any) -> bool:
        hook = self.options.block_page
        if hook is None:
            return False
        try:
            if isinstance(hook, str):
                return hook in await page.title()
            answer = hook(page)
            if inspect.isawaitable(answer):
                answer = await answer
            return bool(answer)
        except Exception:
            # A page that went away while we looked is judged by what follows.
            return False

    async def _save_failure(self, page: Any, exc: BaseException) -> None:
        """The failing page's screenshot and HTML (secrets masked), for debugging."""
        directory = self.options.failures or failure_dir()
        if directory is None:
            return
        bound = structlog.contextvars.get_contextvars()
        name = _UNSAFE.sub("_", f"{bound.get('stage', 'stage')}-{bound.get('partition', 'page')}")
        stem = f"{name[:150]}-{int(time.time() * 1000)}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            html = self.masker.mask(await page.content())
            (directory / f"{stem}.html").write_text(html, encoding="utf-8")
            await page.screenshot(path=str(directory / f"{stem}.png"), timeout=5000)
        except Exception as error:
            _log.warning("could not save the failing page %s: %s", stem, error)
            return
        self.saved.append(directory / f"{stem}.png")
        _log.info(
            "saved the failing page (%s) as %s.png and .html in %s",
            type(exc).__name__,
            stem,
            directory,
        )

    async def aclose(self) -> None:
        """Close every page, context and the browser (the run ends)."""
        async with self._lock:
            for context in list(self._contexts):
                with contextlib.suppress(Exception):
                    await context.close()
            self._contexts.clear()
            self._idle.clear()
            if self._browser is not None:
                with contextlib.suppress(Exception):
                    await self._browser.close()
                self._browser = None
            if self._pw is not None:
                with contextlib.suppress(Exception):
                    await self._pw.stop()
                self._pw = None


def browser_client(job: Job, resource: Resource | None, clock: Clock) -> BrowserClient:
    """The registry's factory of kind ``browser``: the resource's declared options."""
    if resource is None or resource.name not in job.browser_options:
        named = f"resource {resource.name!r}" if resource is not None else "no resource"
        raise ConfigError(
            f"ctx.browser needs a stage on a browser resource, and it has {named}; declare "
            "one with job.browser(name, rate=..., pages=...) and pass resource=name"
        )
    return BrowserClient(
        resource, job.browser_options[resource.name], clock=clock, masker=job.masker()
    )
