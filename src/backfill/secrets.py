"""Secrets: what a job declares secret, and the one masker everything shown goes through.

A job declares secrets by giving them to a resource: every ``headers`` value and every
``params`` value, whatever its name, and ``secrets=``; the passwords in its sinks' URLs
and in the state URL are secrets too. :class:`Masker` replaces them with ``***`` in any
text, in the forms a source may echo them (URL-encoded, base64, JSON-escaped, the token
of ``Bearer TOKEN`` alone, the password inside a ``Basic`` header), and also masks what
merely looks secret: the password of ``scheme://user:password@host`` URLs, tokens after
``Authorization:``-style headers and ``Bearer``, and values of ``name=value`` pairs and
JSON-ish ``"name": "value"`` pairs whose name says secret (``api_key``, ``token``,
``password``, ``sig`` ... but not a bare ``key``, which partition keys use).

A checkpoint is data the engine must give back intact, so it is never pattern-masked:
:meth:`Masker.seal` replaces only the declared values in it by placeholders naming where
they come from (``~backfill-secret:results_api.params.api_key~``), and
:meth:`Masker.unseal` puts the values declared now back in (a rotated key is used on
resume; the ledger never holds the secret).

Example::

    masker = Masker([Secret("api.params.api_key", "s3cr3t-k3y")])
    masker.mask("GET /x?api_key=s3cr3t-k3y failed")  # 'GET /x?api_key=*** failed'

Core: no HTTP and no database here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

__all__ = [
    "MASK",
    "MIN_LENGTH",
    "Masker",
    "Secret",
    "is_secret_name",
    "mask_url",
    "notify_url_secrets",
    "redact",
    "secret_values",
    "url_secrets",
]

MASK = "***"
# A shorter value cannot be masked safely: every "a" or "42" in the output would go.
MIN_LENGTH = 4
# Masked short texts are remembered (bounded): most fields of log lines repeat.
_CACHED_LENGTH = 256
_CACHE_SIZE = 2048


@dataclass(frozen=True, slots=True)
class Secret:
    """A value declared secret, and where it was declared (``api.params.api_key``)."""

    where: str
    value: str = field(repr=False)


# -- what looks secret -------------------------------------------------------------------

_SECRET_NAME = re.compile(
    r"(?:^|[_.-])(?:"
    r"(?:api|app|access|secret|private|signing|client|master|encryption)[_-]?key|apikey|appkey"
    r"|secret|token|app[_-]?id|appid|password|passwd|passphrase|pwd|sig|signature"
    r"|auth|authorization|credentials?|cookie|session[_-]?id|sessionid"
    r")$",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether a parameter, field or header of this name holds a secret: ``api_key``,
    ``X-API-Key``, ``access_token``, ``client_secret``, ``appid``, ``password``,
    ``sig`` ...; not ``key`` or ``partition_key``."""
    return _SECRET_NAME.search(name.lstrip("-")) is not None


# scheme://user:password@host, in any text (the password may hold an unescaped "@").
_USERINFO = re.compile(
    r"(?i)\b(?P<head>[a-z][a-z0-9+.-]*://[^\s/?#@:]*:)(?P<value>[^\s/?#]*)(?P<tail>@)"
)
# Authorization-style headers, as a header dump or a log line shows them.
_HEADER = re.compile(
    r"(?i)(?<![\w-])(?P<head>(?:proxy-)?authorization|x-[\w-]*?(?:key|token|secret|auth|signature)"
    r"|api-key|apikey)(?P<sep>\s*:\s*)(?P<scheme>(?:bearer|token|basic|digest|negotiate|apikey"
    r"|key)\s+)?(?P<value>[^\s\"',;]+)"
)
_COOKIE = re.compile(r"(?i)(?<![\w-])(?P<head>(?:set-)?cookie\s*:\s*)(?P<value>[^\r\n\"']+)")
# "name": "value", 'name': 'value', "name": 1234 (JSON and Python reprs).
_QUOTED_PAIR = re.compile(
    r"(?P<kq>[\"'])(?P<name>[\w.-]{1,64})(?P=kq)\s*:\s*"
    r"(?:\"(?P<dq>(?:[^\"\\]|\\.)*)\"|'(?P<sq>(?:[^'\\]|\\.)*)'|(?P<bare>[^\s,}\]\"']+))"
)
# name=value in query strings, argv and free text; and name%3Dvalue inside an encoded URL.
_ASSIGNMENT = re.compile(
    r"(?<![\w.-])(?P<name>-{0,2}[A-Za-z_][\w.-]*)="
    r"(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|(?P<bare>[^\s&#'\"<>,;)\]}]+))"
)
_ENCODED_ASSIGNMENT = re.compile(
    r"(?:(?<=%3[Ff])|(?<=%26)|(?<![\w.%-]))(?P<name>[A-Za-z_][\w.-]*)%3[Dd]"
    r"(?P<bare>(?:(?!%26|%23)[^\s&#'\"<>,;)\]}])+)"
)
# Bearer TOKEN in free text: the word must be followed by something token-shaped.
_BEARER = re.compile(r"(?<![\w-])(?P<head>[Bb]earer\s+)(?P<value>[A-Za-z0-9._~+/-]{8,}=*)")


def _looks_like_token(value: str) -> bool:
    return len(value) >= 24 or any(c.isdigit() for c in value)


def _mask_groups(match: re.Match[str], *names: str) -> str:
    """The match with the first of the named groups that took part replaced by MASK."""
    text, start = match.group(), match.start()
    for name in names:
        if name in match.re.groupindex and match.group(name) is not None:
            begin, end = match.span(name)
            return text[: begin - start] + MASK + text[end - start :]
    return text


def _pair(match: re.Match[str]) -> str:
    if not is_secret_name(match.group("name")):
        return match.group()
    return _mask_groups(match, "dq", "sq", "bare")


def _bearer(match: re.Match[str]) -> str:
    if not _looks_like_token(match.group("value")):
        return match.group()
    return match.group("head") + MASK


def _userinfo(match: re.Match[str]) -> str:
    if not match.group("value"):
        return match.group()
    return match.group("head") + MASK + match.group("tail")


# Every secret name holds one of these. Log lines are masked one by one on the event loop
# (a debug line per network step), so the patterns run only on text that may need them.
_NAME_ROOTS = ("key", "token", "secret", "pass", "pwd", "sig", "auth", "credential",
               "cookie", "session", "appid", "app_id", "app-id")  # fmt: skip


_HEADER_ROOTS = ("authoriz", "x-", "apikey", "api-key")


def _mask_patterns(text: str) -> str:
    """``text`` with whatever looks secret masked (declared values aside)."""
    if "@" in text and "://" in text:
        text = _USERINFO.sub(_userinfo, text)
    low = text.lower()
    if any(map(low.__contains__, _NAME_ROOTS)):
        if ":" in text:
            if any(map(low.__contains__, _HEADER_ROOTS)):
                text = _HEADER.sub(lambda m: _mask_groups(m, "value"), text)
            if "cookie" in low:
                text = _COOKIE.sub(lambda m: m.group("head") + MASK, text)
            if '"' in text or "'" in text:
                text = _QUOTED_PAIR.sub(_pair, text)
        if "=" in text:
            text = _ASSIGNMENT.sub(_pair, text)
        if "%3d" in low:
            text = _ENCODED_ASSIGNMENT.sub(_pair, text)
    if "earer" in low:
        text = _BEARER.sub(_bearer, text)
    return text


# -- the forms a declared value takes ----------------------------------------------------


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode().rstrip("=")


def _b64url(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


# How a source may echo a value. Base64 forms lose their padding so that they are found
# inside a longer encoded text too.
_FORMS: dict[str, Callable[[str], str]] = {
    "": lambda v: v,
    "url": lambda v: quote(v, safe=""),
    "form": quote_plus,
    "json": lambda v: json.dumps(v)[1:-1],
    "b64": _b64,
    "b64url": _b64url,
}

_AUTH_SCHEME = re.compile(
    r"(?i)^(?P<scheme>bearer|token|basic|digest|negotiate|apikey|api-key|key|jwt|sso-key)\s+"
    r"(?P<credential>\S+)$"
)


def _derived(secret: Secret) -> Iterator[Secret]:
    """The secret, and the parts of it a source may echo alone: the token of ``Bearer
    TOKEN``; for ``Basic``, the decoded ``user:password`` and the password."""
    yield secret
    match = _AUTH_SCHEME.match(secret.value.strip())
    if match is None:
        return
    credential = match.group("credential")
    yield Secret(f"{secret.where}.credential", credential)
    if match.group("scheme").lower() != "basic":
        return
    try:
        decoded = base64.b64decode(credential + "=" * (-len(credential) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return
    _, colon, password = decoded.partition(":")
    if colon:
        yield Secret(f"{secret.where}.userinfo", decoded)
        if password:
            yield Secret(f"{secret.where}.password", password)


# -- declarations ------------------------------------------------------------------------


def secret_values(
    headers: Mapping[str, object] | None, params: Mapping[str, object] | None
) -> tuple[str, ...]:
    """The values to mask of a source's headers and query params: all of them, whatever
    their names."""
    found = [*(headers or {}).values(), *(params or {}).values()]
    return tuple(str(v) for v in found if v is not None and str(v))


def url_secrets(url: str | None, where: str) -> tuple[Secret, ...]:
    """The password of a database or HTTP URL (userinfo, or a ``password=`` parameter),
    as written and decoded, named ``WHERE.password``."""
    if not url:
        return ()
    try:
        parts = urlsplit(url)
        written = parts.netloc.rpartition("@")[0].partition(":")[2]
        from_query = [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    except ValueError:
        return ()
    found = [written, unquote(written), *from_query]
    unique = dict.fromkeys(v for v in found if v)
    return tuple(
        Secret(f"{where}.password" + (f".{i}" if i else ""), value)
        for i, value in enumerate(unique)
    )


def notify_url_secrets(url: str, where: str) -> tuple[Secret, ...]:
    """The secrets of a notification URL (``slack://TokenA/TokenB/TokenC``,
    ``mailto://user:password@host``, ``json://host/path?token=...``): the whole URL, its
    user and password, a host that is no host name (a token in the host's place), each
    path segment of 8 characters or more, and each query value named secret or of 16
    characters or more."""
    if not url:
        return ()
    found = [url]
    try:
        parts = urlsplit(url)
        userinfo, _, host = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        found += [user, password, unquote(password)]
        hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if hostname and "." not in hostname and hostname.lower() != "localhost":
            found.append(hostname)
        found += [seg for seg in parts.path.split("/") if len(seg) >= 8]
        found += [v for k, v in parse_qsl(parts.query) if is_secret_name(k) or len(v) >= 16]
    except ValueError:
        pass
    unique = dict.fromkeys(v for v in found if len(v) >= MIN_LENGTH)
    return tuple(Secret(f"{where}.{i}", value) for i, value in enumerate(unique))


# -- checkpoints -------------------------------------------------------------------------

# Placeholders, and escapes for text that a source made look like one (so that a
# crafted next link can never make the engine put another resource's secret in a URL).
_MARK = "~backfill-"
_ESCAPE = "~backfill-escaped~"
_PLACEHOLDER = re.compile(
    r"~backfill-(?:(?P<escaped>escaped)~|secret:(?P<where>[A-Za-z0-9_.%-]+)"
    r"(?::(?P<form>" + "|".join(f for f in _FORMS if f) + r"))?~)"
)


def _quote_where(where: str) -> str:
    return quote(where, safe=".").replace("~", "%7E")


# -- the masker --------------------------------------------------------------------------


class Masker:
    """Masks the declared secrets (and whatever looks secret) in text shown or stored.

    ``secrets`` are :class:`Secret` values, or plain strings (named by their position).
    Values under :data:`MIN_LENGTH` characters cannot be masked safely; they are listed
    in :attr:`too_short` instead.
    """

    def __init__(self, secrets: Iterable[Secret | str] = ()) -> None:
        declared: dict[str, Secret] = {}
        for index, item in enumerate(secrets):
            secret = item if isinstance(item, Secret) else Secret(f"secrets.{index}", item)
            if not secret.value:
                continue
            for part in _derived(secret):
                where, n = part.where, 1
                while where in declared and declared[where].value != part.value:
                    n += 1
                    where = f"{part.where}.{n}"
                declared.setdefault(where, Secret(where, part.value))
        self._by_where = declared
        self.too_short = tuple(s for s in declared.values() if len(s.value) < MIN_LENGTH)
        # Every form of every value, mapped to the placeholder that stands for it.
        forms: dict[str, str] = {}
        for secret in declared.values():
            if len(secret.value) < MIN_LENGTH:
                continue
            for form, encode in _FORMS.items():
                suffix = f":{form}" if form else ""
                forms.setdefault(
                    encode(secret.value),
                    f"~backfill-secret:{_quote_where(secret.where)}{suffix}~",
                )
        self._placeholders = forms
        # Longest first, so that a value holding another is masked whole.
        self._forms = sorted(forms, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, self._forms))) if forms else None
        self._cache: dict[str, str] = {}

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """Every secret the masker knows, the derived parts included."""
        return tuple(self._by_where.values())

    def mask(self, text: str) -> str:
        """``text`` with every declared secret, in any of its forms, and whatever looks
        secret replaced by ``***``."""
        # Log lines repeat most of their fields (job, stage, partition, worker ...).
        short = len(text) <= _CACHED_LENGTH
        if short and (hit := self._cache.get(text)) is not None:
            return hit
        masked = text
        if self._values is not None and any(map(text.__contains__, self._forms)):
            masked = self._values.sub(MASK, masked)
        masked = _mask_patterns(masked)
        if short:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[text] = masked
        return masked

    def mask_tree(self, value: Any) -> Any:
        """A JSON-like value (dicts, lists, strings ...) with every string masked."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, Mapping):
            return {k: self.mask_tree(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask_tree(v) for v in value]
        return value

    def mask_argv(self, argv: Sequence[str]) -> list[str]:
        """Command-line arguments masked, including the value after ``--token``-like
        options (``--api-key VALUE``)."""
        masked: list[str] = []
        hide_next = False
        for arg in argv:
            if hide_next:
                masked.append(MASK)
                hide_next = False
                continue
            hide_next = arg.startswith("-") and "=" not in arg and is_secret_name(arg)
            masked.append(self.mask(arg))
        return masked

    def seal(self, checkpoint: str) -> str:
        """The checkpoint with each declared secret replaced by a placeholder naming where
        it is declared; nothing else changes (a cursor named ``page_token`` survives)."""
        text = checkpoint.replace(_MARK, _ESCAPE)
        if self._values is None:
            return text
        return self._values.sub(lambda m: self._placeholders[m.group()], text)

    def unseal(self, checkpoint: str) -> tuple[str, tuple[str, ...]]:
        """The sealed checkpoint with the values declared now in place of its
        placeholders; and the names of those no longer declared (left as they are)."""
        missing: list[str] = []

        def restore(match: re.Match[str]) -> str:
            if match.group("escaped"):
                return _MARK
            where = unquote(match.group("where"))
            secret = self._by_where.get(where)
            if secret is None:
                missing.append(where)
                return match.group()
            return _FORMS[match.group("form") or ""](secret.value)

        return _PLACEHOLDER.sub(restore, checkpoint), tuple(missing)


@functools.lru_cache(maxsize=8)
def _masker_of(values: tuple[str, ...]) -> Masker:
    return Masker(values)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` masked: the given secret values, and whatever looks secret."""
    return _masker_of(tuple(secrets)).mask(text)


def mask_url(url: object) -> str:
    """A URL (or anything whose ``str`` is one) with its password and the values of
    secret-looking query parameters masked."""
    return _mask_patterns(str(url))
