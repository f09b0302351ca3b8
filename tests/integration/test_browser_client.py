"""The browser client's page pool in real headless chromium against the local site:
pages reused, contexts recycled, assets blocked, a failing page saved."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from backfill import TransientError
from backfill.ratelimit import Resource
from backfill.sources.browser import BrowserClient
from backfill.sources.browser_options import BrowserOptions
from browser_support import ensure_chromium
from tennis_site import SiteProcess

# Chromium takes every core it can get: its tests and the tests that measure a rate in
# real time share one xdist group, so they never run beside each other (pyproject's
# --dist loadgroup); a starved client cannot send at a limit, whatever the engine does.
pytestmark = pytest.mark.xdist_group("cpu_heavy")


@pytest.fixture(scope="module")
def site() -> Iterator[SiteProcess]:
    ensure_chromium()
    with SiteProcess(2015, 2015, slow=0.0) as running:
        yield running


def test_one_page_is_reused_its_context_recycled_and_images_and_fonts_not_loaded(
    site: SiteProcess, tmp_path: Path
) -> None:
    """Five loads on a pool of one page: one browser, a new context every two loads,
    and no image or font request reaches the site until images are allowed."""
    numbers = ([t.number for t in site.truth] * 5)[:5]

    async def walk(options: BrowserOptions) -> BrowserClient:
        browser = BrowserClient(Resource("site", rate=50.0, concurrency=1), options)
        try:
            for number in numbers:
                async with browser.page() as page:
                    await page.goto(f"{site.url}/tournament/{number}?page=1", wait_for="#draw")
                    assert await page.locator("#draw tr").count() >= 1
        finally:
            await browser.aclose()
        return browser

    blocked = asyncio.run(walk(BrowserOptions(pages=1, recycle_every=2)))
    assert (blocked.launches, blocked.loads, blocked.recycled) == (1, 5, 2)
    assets = site.stats()["assets"]
    assert "/logo.png" not in assets and "/font.woff2" not in assets
    allowed = asyncio.run(walk(BrowserOptions(pages=1, block=("font", "media"))))
    assert allowed.recycled == 0
    assert site.stats()["assets"].get("/logo.png", 0) >= 5


def test_a_page_that_never_renders_is_a_transient_timeout_and_is_saved(
    site: SiteProcess, tmp_path: Path
) -> None:
    """Waiting for what never appears fails the load as a timeout (transient); the
    page's screenshot and HTML are kept where the job said."""
    options = BrowserOptions(pages=1, timeout=1.0, failures=tmp_path / "pages")

    async def main() -> BrowserClient:
        browser = BrowserClient(Resource("site", rate=50.0, concurrency=1), options)
        try:
            with pytest.raises(TransientError) as info:
                async with browser.page() as page:
                    await page.goto(f"{site.url}/archive/atp/2015", wait_for="#never")
            assert info.value.category == "timeout"
        finally:
            await browser.aclose()
        return browser

    browser = asyncio.run(main())
    (png,) = browser.saved
    assert png.exists() and png.stat().st_size > 0
    html = png.with_suffix(".html").read_text()
    assert 'id="tournaments"' in html


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Every page refused: 429 asking seven seconds."""

    def do_GET(self) -> None:
        body = b"<html><body>slow down</body></html>"
        self.send_response(429)
        self.send_header("Retry-After", "7")
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_a_page_refused_with_retry_after_pauses_the_site_for_what_it_asks() -> None:
    """A page answered 429 with ``Retry-After: 7`` in real chromium: the site's resource
    pauses seven seconds, and the load's retry is asked to wait as long (they waited a
    second)."""
    ensure_chromium()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/draw"

    async def main() -> tuple[TransientError, float]:
        resource = Resource("site", rate=50.0, concurrency=1)
        browser = BrowserClient(resource, BrowserOptions(pages=1, timeout=10.0))
        try:
            with pytest.raises(TransientError) as info:
                async with browser.page() as page:
                    await page.goto(url)
            return info.value, resource.paused_until - resource.clock.monotonic()
        finally:
            await browser.aclose()

    try:
        error, paused = asyncio.run(main())
    finally:
        server.shutdown()
        server.server_close()
    assert error.category == "rate_limited" and error.retry_after == 7.0
    assert 5.0 < paused <= 7.0
