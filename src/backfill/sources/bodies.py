"""Reading a response body within a bound, whatever the source sends.

The body is decoded (gzip, deflate: what the client asks for) while it streams in, and
decoding stops as soon as the bound is passed: a gzip bomb is never inflated, an endless
stream never kept. The pieces are joined once, at the end.
"""

from __future__ import annotations

import math
import zlib

import httpx

from backfill.sources import DEFAULT_MAX_BODY

__all__ = [
    "ACCEPT_ENCODING",
    "DEFAULT_MAX_BODY",
    "BodyTooLarge",
    "UndecodableBody",
    "describe_size",
    "read_body",
]

# Only what read_body decodes itself, within the bound.
ACCEPT_ENCODING = "gzip, deflate"


class BodyTooLarge(Exception):
    """The body is larger than the bound (what was read of it is dropped)."""


class UndecodableBody(Exception):
    """The body cannot be decoded: an encoding not asked for, or not what it claims."""


def describe_size(count: int) -> str:
    """A byte count the way a bound is usually written: ``64 MiB``, ``512 KiB``."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= factor:
            return f"{count / factor:g} {unit}"
    return f"{count} bytes"


async def read_body(response: httpx.Response, max_body: int) -> bytes:
    """The decoded body of a streamed ``response``, at most ``max_body`` bytes, which
    also becomes its ``content``; the response is closed either way."""
    try:
        if response.is_stream_consumed:
            # A transport that hands over answers already read (httpx.MockTransport).
            body = response.content
            if len(body) > max_body:
                raise BodyTooLarge
            return body
        encoding = response.headers.get("Content-Encoding", "")
        length = _length(response.headers.get("Content-Length"))
        if not encoding and length is not None and length > max_body:
            raise BodyTooLarge
        decoders = _decoders(encoding)
        chunks: list[bytes] = []
        size = 0
        async for raw in response.aiter_raw():
            try:
                pieces = _decode(decoders, raw, max_body - size)
            except zlib.error:
                raise UndecodableBody(f"the body is not valid {encoding[:40]}") from None
            size += sum(len(piece) for piece in pieces)
            if size > max_body:
                raise BodyTooLarge
            chunks += pieces
    finally:
        await response.aclose()
    body = b"".join(chunks)
    del chunks
    # What httpx's own read would have kept: response.content, .text and .json() work.
    response._content = body
    return body


def _length(value: str | None) -> float | None:
    try:
        length = float(value or "x")
    except ValueError:
        return None
    return length if math.isfinite(length) else None


# Decoded in steps of this much at most: zlib assembles each step's output in blocks it
# then copies into one, so a step costs twice its size for a moment.
_INFLATE_STEP = 1 << 20


class _Inflate:
    """A gzip or deflate decoder that never produces more than it is allowed to."""

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding in ("gzip", "x-gzip")
        # deflate is meant to be zlib-wrapped, but servers also send it raw.
        self._wbits = 16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS
        self._inflate = zlib.decompressobj(self._wbits)
        self._started = False

    def decode(self, data: bytes, budget: int) -> list[bytes]:
        """``data`` decoded, in pieces; more than ``budget`` bytes only by one (the caller
        then stops)."""
        out: list[bytes] = []
        made = 0
        while data and made <= budget:
            try:
                piece = self._inflate.decompress(data, min(budget - made + 1, _INFLATE_STEP))
            except zlib.error:
                if self._started or self._gzip:
                    raise
                self._wbits = -zlib.MAX_WBITS
                self._inflate = zlib.decompressobj(self._wbits)
                self._started = True
                continue
            self._started = True
            out.append(piece)
            made += len(piece)
            if self._inflate.eof:
                # Another gzip member may follow (allowed by RFC 1952); anything after
                # the end of a deflate stream is not part of the body.
                data = self._inflate.unused_data if self._gzip else b""
                if data:
                    self._inflate = zlib.decompressobj(self._wbits)
            else:
                data = self._inflate.unconsumed_tail
        return out


def _decoders(encoding: str) -> list[_Inflate]:
    """The decoders of a ``Content-Encoding``, last applied first."""
    decoders = []
    for name in reversed([e.strip().lower() for e in encoding.split(",")]):
        if name in ("", "identity"):
            continue
        if name not in ("gzip", "x-gzip", "deflate"):
            raise UndecodableBody(
                f"the body comes in content encoding {name[:40]!r}, which was not asked "
                f"for (Accept-Encoding: {ACCEPT_ENCODING})"
            )
        decoders.append(_Inflate(name))
    return decoders


def _decode(decoders: list[_Inflate], raw: bytes, budget: int) -> list[bytes]:
    """``raw`` through every decoder in turn, each within ``budget``."""
    pieces = [raw]
    for decoder in decoders:
        pieces = [out for piece in pieces for out in decoder.decode(piece, budget)]
    return pieces
