"""Reading a request body into a list of raw JSON values, within hard limits.

Decompression is done here, not by aiohttp, so the size limit applies to the decompressed
bytes and a gzip bomb stops at the limit instead of filling memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import orjson
from aiohttp import web

JSON_TYPES = frozenset({"application/json", "text/plain"})  # text/plain: navigator.sendBeacon
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson"})
MIN_FEED = 64  # bytes handed to zlib at a time at the start of each gzip member


@dataclass(frozen=True, slots=True)
class BodyError(Exception):
    """A request body we refuse, with the HTTP status and error code to answer with."""

    status: int
    code: str
    message: str
    index: int | None = None
    events: int | None = None  # how many events the refused body held, when that is known

    def details(self) -> list[dict[str, object]]:
        """The uniform ``details`` list: about the whole body, or one NDJSON line's event."""
        return [{"index": self.index, "field": None, "reason": self.message}]


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The raw (still encoded) body, refusing more than ``limit`` bytes without buffering it."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(413, "body_too_large", f"body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise BodyError(413, "body_too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_content(raw: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip or deflate) with the output capped at ``limit``.

    A gzip body may be several members one after another (RFC 1952, 2.2): every member is
    inflated and the limit covers them all. Anything after the last member that is not
    another gzip member is refused, so no event hides where we would not read it.
    """
    encoding = encoding.strip().lower()
    if encoding in {"", "identity"}:
        return raw
    if encoding not in {"gzip", "deflate"}:
        raise BodyError(415, "unsupported_encoding",
                        f"Content-Encoding {encoding!r} is not supported (use gzip)")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    view = memoryview(raw)
    out = bytearray()
    pos = 0
    while True:  # one gzip member (or the one deflate stream) per turn
        decompressor = zlib.decompressobj(wbits)
        start = pos
        while not decompressor.eof:
            if pos == len(view):
                raise BodyError(400, "malformed_body", f"body is truncated {encoding}")
            # At a member's end zlib copies the input it did not need into ``unused_data``.
            # Feeding the whole rest of the body would make that copy quadratic in the member
            # count (tens of thousands of empty members in 1 MiB); feeding at most what this
            # member has used so far keeps each copy within its own size, the total linear.
            chunk = view[pos:pos + max(MIN_FEED, pos - start)]
            pos += len(chunk)
            try:
                # ``limit + 1 - len(out)`` is at least 1: 0 would mean "no limit" to zlib.
                out += decompressor.decompress(chunk, limit + 1 - len(out))
            except zlib.error as exc:
                raise BodyError(400, "malformed_body", f"body is not valid {encoding}: {exc}"
                                ) from None
            if len(out) > limit or decompressor.unconsumed_tail:
                raise BodyError(413, "body_too_large",
                                f"decompressed body exceeds {limit} bytes")
        pos -= len(decompressor.unused_data)
        if pos == len(view):
            return bytes(out)
        if encoding != "gzip":
            raise BodyError(400, "malformed_body", "data after the end of the deflate stream")


def media_type(request: web.Request) -> str:
    return request.content_type.lower()


def parse_json(data: bytes) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BodyError(400, "malformed_json", f"body is not valid JSON: {exc}") from None


def parse_ndjson(data: bytes, max_events: int) -> list[object]:
    """One JSON value per non-blank line; a refusal says how many lines (events) it held."""
    items: list[object] = []
    for index, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        if len(items) >= max_events:
            raise BodyError(413, "too_many_events", f"a batch holds at most {max_events} events",
                            events=_count_lines(data))
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise BodyError(400, "malformed_json", f"line {index + 1} is not valid JSON: {exc}",
                            index=len(items), events=_count_lines(data)) from None
    return items


def _count_lines(data: bytes) -> int:
    return sum(1 for line in data.splitlines() if line.strip())


@dataclass(frozen=True, slots=True)
class Body:
    """A received body, inflated within the limit, with its media type."""

    kind: str
    data: bytes

    @property
    def is_json(self) -> bool:
        return self.kind in JSON_TYPES


async def read_body(request: web.Request, *, limit: int, batch: bool) -> Body:
    """The body of a ``/track`` or ``/events`` request, its media type checked before it is
    read (no point reading a body we would refuse) and its content encoding undone."""
    kind = media_type(request)
    check_media_type(kind, batch=batch)
    raw = await read_limited(request, limit)
    return Body(kind, decode_content(raw, request.headers.get("Content-Encoding", ""), limit))


def check_media_type(kind: str, *, batch: bool) -> None:
    allowed = JSON_TYPES | NDJSON_TYPES if batch else JSON_TYPES
    if kind not in allowed:
        names = ", ".join(sorted(allowed))
        raise BodyError(415, "unsupported_media_type",
                        f"Content-Type {kind!r} is not supported; use one of: {names}")


def events_of_body(raw: bytes, kind: str, encoding: str, *, limit: int, max_events: int,
                   batch: bool) -> list[object]:
    """The pure part of ``read_events``: a received body to its raw events, or BodyError.
    The caller has already refused other media types with ``check_media_type``."""
    data = decode_content(raw, encoding, limit)
    if kind in NDJSON_TYPES:
        items = parse_ndjson(data, max_events)
    else:
        parsed = parse_json(data)
        if batch:
            if not isinstance(parsed, list):
                raise BodyError(400, "malformed_body", "body must be a JSON array of events")
            items = parsed
        else:
            if not isinstance(parsed, dict):
                raise BodyError(400, "malformed_body",
                                "body must be one JSON object; send batches to /events")
            items = [parsed]
    if not items:
        raise BodyError(400, "empty_batch", "the batch holds no events", events=0)
    if len(items) > max_events:
        raise BodyError(413, "too_many_events", f"a batch holds at most {max_events} events",
                        events=len(items))
    return items
