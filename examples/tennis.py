"""Backfill every match of a tennis results site that renders only in a browser.

1. ``tournaments``: per year and tour, the archive page lists the year's tournaments;
   each is *discovered* (``Discover``) with its number and how many pages its draw has;
2. ``results``: per discovered tournament, every page of its draw, into SQLite.

The archive is read once per year and tour, never again per tournament; every page is
loaded in headless chromium (``apt-get install chromium``), four pages at a time, at
most ``TENNIS_RATE`` page loads a second across them all, with a random pause before
each load. The WTA's archive starts a year after the ATP's, so no partition is planned
for a WTA year that cannot exist.

    python tests/tennis_site.py --port 8900 &      # the local site
    backfill run examples/tennis.py                 # Ctrl+C (or kill -9) and re-run to resume
    backfill coverage examples/tennis.py            # tournaments per archive page

Settings come from the environment: TENNIS_SITE (the site's base URL), TENNIS_DB (the
SQLite file to fill), TENNIS_RATE (page loads per second), TENNIS_PAGES (browser pages),
TENNIS_JITTER (``low,high`` seconds before each load, ``0`` for none), TENNIS_FIRST and
TENNIS_LAST (the years).
"""

import os
from typing import Any

from backfill import Context, Discover, Job, Partition, RetryPolicy, discovered, table, yearly

SITE = os.environ.get("TENNIS_SITE", "http://127.0.0.1:8900").rstrip("/")
DATABASE = os.environ.get("TENNIS_DB", "tennis.db")
RATE = float(os.environ.get("TENNIS_RATE", "4"))
PAGES = int(os.environ.get("TENNIS_PAGES", "4"))
FIRST = int(os.environ.get("TENNIS_FIRST", "2015"))
LAST = int(os.environ.get("TENNIS_LAST", "2019"))
_jitter = os.environ.get("TENNIS_JITTER", "0.3,1.0")
JITTER = None if _jitter.strip() in ("", "0") else tuple(float(x) for x in _jitter.split(","))

job = Job(
    "tennis",
    partitions=yearly(
        f"{FIRST}-01-01",
        f"{LAST}-12-31",
        tour={"atp": f"{FIRST}-01-01", "wta": f"{FIRST + 1}-01-01"},
    ),
    description="every match of a results site rendered in the browser",
)

# Every page of every stage together: at most RATE loads a second, PAGES at once.
job.browser(
    "site",
    rate=RATE,
    pages=PAGES,
    jitter=JITTER,  # type: ignore[arg-type]
    block_page="Just a moment",
    timeout=15,
)

# A block page or a slow load is transient: try again, politely.
POLITE = RetryPolicy(attempts=6, base=0.5, cap=8.0)

ROWS_JS = """rows => rows.map(r => ({
    match: Number(r.dataset.match),
    round: r.querySelector('.round').textContent,
    winner: r.querySelector('.winner').textContent,
    loser: r.querySelector('.loser').textContent,
    score: r.querySelector('.score').textContent,
}))"""

TOURNAMENTS_JS = """items => items.map(i => ({
    number: i.dataset.number, name: i.dataset.name, pages: Number(i.dataset.pages),
}))"""


@job.stage(resource="site", retry=POLITE)
async def tournaments(ctx: Context, partition: Partition) -> Any:
    """The tournaments on one year's archive page of one tour."""
    year, tour = partition.date.year, partition["tour"]
    async with ctx.browser.page() as page:
        await page.goto(f"{SITE}/archive/{tour}/{year}", wait_for="body[data-ready]")
        found = await page.eval_on_selector_all("#tournaments li", TOURNAMENTS_JS)
    for t in found:
        yield Discover(
            t["number"], {"number": int(t["number"]), "name": t["name"], "pages": t["pages"]}
        )


@job.stage(
    resource="site",
    retry=POLITE,
    partitions=discovered("tournaments", name="tournament"),
    sink=table(f"sqlite:///{DATABASE}", "matches", key=["tournament", "match"]),
)
async def results(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
    """Every match of one tournament's draw, page by page."""
    number = partition.params["number"]
    rows: list[dict[str, Any]] = []
    async with ctx.browser.page() as page:
        for n in range(1, int(partition.params["pages"]) + 1):
            await page.goto(f"{SITE}/tournament/{number}?page={n}", wait_for="body[data-ready]")
            rows += await page.eval_on_selector_all("#draw tr", ROWS_JS)
    return [
        dict(
            row,
            tournament=number,
            name=partition.params["name"],
            tour=partition["tour"],
            year=partition.date.year,
        )
        for row in rows
    ]
