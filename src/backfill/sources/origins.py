"""Origins: who may receive a source's credentials, and URLs that keep their query.

An origin is (scheme, host, port). A resource declares the origins its credentials go
to (``base_url``, ``allowed_hosts``); :func:`merge_query` adds those credentials to a
URL without disturbing the rest of its query.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import httpx

from backfill.errors import ConfigError

__all__ = [
    "DEFAULT_PORTS",
    "Origin",
    "absolute",
    "allowed_origins",
    "merge_query",
    "origin_of",
    "origin_text",
    "query_names",
]

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def origin_of(url: httpx.URL) -> Origin:
    """The origin of an absolute URL, its port made explicit."""
    return (url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme, 0))


def origin_text(origin: Origin) -> str:
    """``https://host`` or ``http://host:8080``, as a message names it."""
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if DEFAULT_PORTS.get(scheme) == port else f":{port}")


def absolute(url: str, what: str) -> httpx.URL:
    """``url`` as an http(s) origin or URL; ConfigError naming ``what`` otherwise."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError(f"{what} {url!r} is not a URL ({exc})") from exc
    if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
        raise ConfigError(f"{what} {url!r} must start with http:// or https:// and name a host")
    if parsed.userinfo or parsed.query or parsed.fragment:
        raise ConfigError(
            f"{what} {url!r} must not carry a user, a query or a fragment; put credentials "
            "in headers= or params="
        )
    return parsed


def allowed_origins(
    base_url: str | None, allowed_hosts: Iterable[str], *, owner: str = "the resource"
) -> frozenset[Origin]:
    """The origins that get a resource's credentials: ``base_url``'s and each entry of
    ``allowed_hosts`` (``host``, ``host:port`` or ``scheme://host[:port]``; without a
    scheme, that of ``base_url``, else https). ConfigError on anything else.

    >>> sorted(allowed_origins("https://api.example", ["cdn.example", "http://h:8080"]))
    [('http', 'h', 8080), ('https', 'api.example', 443), ('https', 'cdn.example', 443)]
    """
    if isinstance(allowed_hosts, str):
        raise ConfigError(f"{owner}: allowed_hosts must be a list of hosts, not one string")
    origins: set[Origin] = set()
    scheme = "https"
    if base_url is not None:
        base = absolute(base_url, f"{owner}: base_url")
        origins.add(origin_of(base))
        scheme = base.scheme
    for entry in allowed_hosts:
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"{owner}: allowed_hosts entry {entry!r} is not a host name")
        what = f"{owner}: allowed_hosts entry"
        url = absolute(entry if "://" in entry else f"{scheme}://{entry}", what)
        if url.raw_path not in (b"", b"/"):
            raise ConfigError(f"{what} {entry!r} must be a host, host:port or scheme://host")
        origins.add(origin_of(url))
    return frozenset(origins)


def query_names(params: Mapping[str, Any]) -> frozenset[str]:
    """The parameter names in ``params``, as httpx spells them."""
    return frozenset(httpx.QueryParams(params).keys())


def merge_query(url: httpx.URL, params: Any = None, drop: Collection[str] = ()) -> httpx.URL:
    """``url`` keeping its own query, with ``params`` (anything httpx takes as params)
    set, each replacing every value of its name already there, and the names in ``drop``
    removed. The query's other parts are kept byte for byte: a signed or opaque cursor
    must reach the source as it was."""
    add = httpx.QueryParams(params or {})
    names = set(add.keys()) | set(drop)
    if not names:
        return url
    kept = [
        part
        for part in url.query.split(b"&")
        if part
        and urllib.parse.unquote_plus(part.split(b"=", 1)[0].decode("ascii", "replace"))
        not in names
    ]
    if add:
        kept.append(str(add).encode("ascii"))
    return url.copy_with(query=b"&".join(kept) or None)
