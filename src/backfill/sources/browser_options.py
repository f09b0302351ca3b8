"""How a job's browser resource runs its pages (``job.browser(...)``), checked when the
job is declared; nothing here imports Playwright."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backfill.errors import ConfigError

__all__ = ["BLOCKABLE", "DEFAULT_BLOCKED", "DEFAULT_CHROMIUM", "BlockPage", "BrowserOptions"]

# Debian's chromium (apt-get install chromium): never a browser downloaded at run time.
DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
# What a page need not load to be read: blocked unless a job asks for them.
DEFAULT_BLOCKED = ("image", "font", "media")
# Playwright's resource types a job may block.
BLOCKABLE = frozenset(
    {
        "document",
        "stylesheet",
        "image",
        "media",
        "font",
        "script",
        "texttrack",
        "xhr",
        "fetch",
        "eventsource",
        "websocket",
        "manifest",
        "other",
    }
)

# A block page (a challenge, "Just a moment..."): text its title contains, or a function
# of the Playwright page saying whether it is one (it may be async).
BlockPage = str | Callable[[Any], bool | Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class BrowserOptions:
    """A browser resource's pages: how many, how they are paced and recycled, what they
    do not load, and what counts as a failed load.

    ``pages``: the pool's size (the resource's concurrency). ``jitter`` (low, high):
    a page's loads start at least a random number of seconds in that range apart, on top
    of the resource's rate, which still holds for all pages together. ``recycle_every``: a
    page's browser context is replaced after that many loads (cookies and memory start
    afresh). ``block``: resource types not loaded (``allow`` takes some back).
    ``block_page``: a title fragment or a function of the page that detects a block
    page. ``timeout``: seconds a load may take. ``failures``: where the screenshot and
    HTML of a page that fails go (default: beside the run's log file).
    """

    pages: int = 1
    jitter: tuple[float, float] | None = None
    recycle_every: int = 50
    block: tuple[str, ...] = DEFAULT_BLOCKED
    block_page: BlockPage | None = None
    timeout: float = 30.0
    headless: bool = True
    executable: Path = DEFAULT_CHROMIUM
    failures: Path | None = None
    args: tuple[str, ...] = ()

    @classmethod
    def checked(
        cls,
        owner: str,
        *,
        pages: int,
        jitter: tuple[float, float] | None,
        recycle_every: int,
        block: Sequence[str],
        allow: Sequence[str],
        block_page: BlockPage | None,
        timeout: float,
        headless: bool,
        executable: str | Path | None,
        failures: str | Path | None,
        args: Sequence[str],
    ) -> BrowserOptions:
        """The options, each checked; a ConfigError naming ``owner`` and the fix."""
        if jitter is not None:
            if (
                not isinstance(jitter, tuple | list)
                or len(jitter) != 2
                or not all(isinstance(x, int | float) and math.isfinite(x) for x in jitter)
                or not 0 <= jitter[0] <= jitter[1]
            ):
                raise ConfigError(
                    f"{owner}: jitter must be (low, high) seconds with 0 <= low <= high, "
                    f"e.g. jitter=(0.3, 1.0), not {jitter!r}"
                )
            jitter = (float(jitter[0]), float(jitter[1]))
        if not isinstance(recycle_every, int) or recycle_every < 1:
            raise ConfigError(f"{owner}: recycle_every must be a whole number of loads >= 1")
        for kind in (*block, *allow):
            if kind not in BLOCKABLE:
                raise ConfigError(
                    f"{owner}: unknown resource type {kind!r} in block/allow; use some of "
                    f"{', '.join(sorted(BLOCKABLE))}"
                )
        if not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
            raise ConfigError(f"{owner}: timeout must be a positive number of seconds")
        if block_page is not None and not (isinstance(block_page, str) or callable(block_page)):
            raise ConfigError(
                f"{owner}: block_page must be a title fragment or a function of the page"
            )
        return cls(
            pages=pages,
            jitter=jitter,
            recycle_every=recycle_every,
            block=tuple(k for k in dict.fromkeys(block) if k not in allow),
            block_page=block_page,
            timeout=float(timeout),
            headless=headless,
            executable=Path(executable) if executable is not None else DEFAULT_CHROMIUM,
            failures=Path(failures) if failures is not None else None,
            args=tuple(args),
        )
