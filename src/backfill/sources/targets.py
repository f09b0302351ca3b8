"""Where a client's requests go, and how they are named: a stage's URL made absolute, the
origins a call's credentials go to, and every URL redacted in messages."""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from backfill.errors import PermanentError
from backfill.secrets import mask_url, redact
from backfill.sources.hops import Call
from backfill.sources.origins import DEFAULT_PORTS, absolute, allowed_origins, origin_of


class Targets:
    """A client's targets: relative URLs are appended to ``base_url``'s path (as httpx
    does), only http and https are fetched, the resource's credentials go to the origins
    of ``base_url`` and ``allowed_hosts`` (when neither is given, to the origin of the
    URL the stage asked for). Messages name a request with ``resource``'s name, its
    secrets redacted."""

    def __init__(
        self,
        resource: str | None,
        *,
        base_url: str | None,
        allowed_hosts: Iterable[str],
        owner: str,
        secrets: tuple[str, ...],
    ) -> None:
        self.resource = resource
        self.base_url = absolute(base_url, f"{owner}: base_url") if base_url else None
        self._declared = allowed_origins(base_url, allowed_hosts, owner=owner)
        self.secrets = secrets
        self._prefix = f"resource {resource}: " if resource is not None else ""

    def where(self, method: str, url: str | httpx.URL) -> str:
        """A request as messages name it."""
        return self._prefix + redact(f"{method} {mask_url(url)}", self.secrets)

    def source(self, url: str | httpx.URL) -> str:
        """A URL as messages name it."""
        return self._prefix + redact(mask_url(url), self.secrets)

    def resolve(self, url: str | httpx.URL) -> httpx.URL:
        """The absolute URL a stage means: a relative one is appended to ``base_url``."""
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise PermanentError(f"{url!r} is not a URL ({exc})", category="bad_url") from None
        if target.is_relative_url:
            if self.base_url is None:
                owner = f"resource {self.resource}" if self.resource is not None else "ctx.http"
                raise PermanentError(
                    f"{redact(mask_url(target), self.secrets)} is a relative URL and "
                    f"{owner} has no base_url; declare base_url= on the resource or pass "
                    "an absolute URL",
                    category="bad_url",
                )
            path = self.base_url.raw_path.rstrip(b"/") + b"/" + target.raw_path.lstrip(b"/")
            target = self.base_url.copy_with(raw_path=path)
        if target.scheme not in DEFAULT_PORTS:
            raise PermanentError(
                f"{self.source(target)}: only http and https URLs can be fetched",
                category="bad_url",
            )
        return target

    def call(self, url: httpx.URL) -> Call:
        """Where a call to ``url`` (a request, or a walk of pages) may take what."""
        own = origin_of(url)
        origins = self._declared or frozenset({own})
        return Call(origins, origins | {own})
