"""Reading request bodies: content decoding within the limit, NDJSON lines, named refusals."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_gateway import body as body_module
from ingest_gateway.body import (
    BodyError,
    check_media_type,
    decode_content,
    events_of_body,
    parse_ndjson,
)

LIMIT = 1024 * 1024


def test_identity_bodies_pass_through() -> None:
    assert decode_content(b"[1]", "identity", LIMIT) == b"[1]"
    assert decode_content(b"[1]", "", LIMIT) == b"[1]"


def test_every_member_of_a_multi_member_gzip_body_is_inflated() -> None:
    body = gzip.compress(b'{"page_id": "a", "user_id": "u"}\n') + \
        gzip.compress(b'{"page_id": "b", "user_id": "u"}\n')
    assert decode_content(body, "gzip", LIMIT) == \
        b'{"page_id": "a", "user_id": "u"}\n{"page_id": "b", "user_id": "u"}\n'


def test_the_limit_covers_all_gzip_members_together() -> None:
    member = gzip.compress(b" " * (LIMIT // 2 + 1))
    assert decode_content(member, "gzip", LIMIT) == b" " * (LIMIT // 2 + 1)
    with pytest.raises(BodyError) as caught:
        decode_content(member + member, "gzip", LIMIT)
    assert (caught.value.status, caught.value.code) == (413, "body_too_large")


def test_a_multi_member_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b" " * (8 * LIMIT)) * 4
    with pytest.raises(BodyError) as caught:
        decode_content(bomb, "gzip", LIMIT)
    assert (caught.value.status, caught.value.code) == (413, "body_too_large")


def test_exactly_the_limit_across_members_is_accepted() -> None:
    body = gzip.compress(b"x" * (LIMIT - 10)) + gzip.compress(b"y" * 10)
    assert len(decode_content(body, "gzip", LIMIT)) == LIMIT


@pytest.mark.parametrize("trailer", [b"garbage", b"\x00\x00\x00\x00", b"\x1f",
                                     b"\x1f\x8b\x08\x00", gzip.compress(b"x")[:-3]])
def test_anything_after_a_gzip_member_that_is_not_a_whole_member_is_a_400(
        trailer: bytes) -> None:
    with pytest.raises(BodyError) as caught:
        decode_content(gzip.compress(b"[1]") + trailer, "gzip", LIMIT)
    assert (caught.value.status, caught.value.code) == (400, "malformed_body")


def test_data_after_a_deflate_stream_is_a_400() -> None:
    assert decode_content(zlib.compress(b"[1]"), "deflate", LIMIT) == b"[1]"
    with pytest.raises(BodyError) as caught:
        decode_content(zlib.compress(b"[1]") + zlib.compress(b"[2]"), "deflate", LIMIT)
    assert (caught.value.status, caught.value.code) == (400, "malformed_body")


def test_a_truncated_gzip_body_is_a_400() -> None:
    with pytest.raises(BodyError) as caught:
        decode_content(gzip.compress(b"[1, 2, 3]")[:-5], "gzip", LIMIT)
    assert (caught.value.status, caught.value.code) == (400, "malformed_body")


class CountingZlib:
    """``zlib`` as ``body`` uses it, counting the compressed bytes handed to decompressors."""

    error = zlib.error
    MAX_WBITS = zlib.MAX_WBITS

    def __init__(self) -> None:
        self.fed = 0

    def decompressobj(self, wbits: int) -> CountingZlib.Decompressor:
        return CountingZlib.Decompressor(self, zlib.decompressobj(wbits))

    class Decompressor:
        def __init__(self, counter: CountingZlib, real: Any) -> None:
            self.counter, self.real = counter, real

        def decompress(self, data: bytes, max_length: int) -> bytes:
            self.counter.fed += len(data)
            return self.real.decompress(data, max_length)  # type: ignore[no-any-return]

        def __getattr__(self, name: str) -> Any:  # eof, unused_data, unconsumed_tail
            return getattr(self.real, name)


def test_many_gzip_members_cost_work_linear_in_the_body(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Handing each member the whole rest of the body made 52k empty members in 1 MiB take
    seconds of event-loop time; what zlib sees must stay a small multiple of the body."""
    counting = CountingZlib()
    monkeypatch.setattr(body_module, "zlib", counting)
    members = gzip_members([b""] * 20_000 + [b"[1]"])
    assert decode_content(members, "gzip", LIMIT) == b"[1]"
    assert counting.fed <= 4 * len(members), (counting.fed, len(members))


def test_tens_of_thousands_of_members_are_all_inflated() -> None:
    members = gzip_members([b'{"page_id": "p", "user_id": "u"}\n'] * 30_000)
    data = decode_content(members, "gzip", LIMIT)
    assert data.count(b"\n") == 30_000 and len(data) == 30_000 * 33


def test_unknown_encodings_are_a_415() -> None:
    with pytest.raises(BodyError) as caught:
        decode_content(b"x", "br", LIMIT)
    assert (caught.value.status, caught.value.code) == (415, "unsupported_encoding")


def gzip_members(parts: list[bytes]) -> bytes:
    return b"".join(gzip.compress(part) for part in parts)


JSONISH = st.one_of(
    st.binary(max_size=400),
    st.lists(st.dictionaries(st.sampled_from(["page_id", "user_id", "ts", "x"]),
                             st.text(max_size=5) | st.integers(-(2**63), 2**63 - 1)), max_size=8)
    .map(lambda events: orjson.dumps(events)),
    st.sampled_from([b"[]", b"{}", b"[{}]", b"\n\n", b"[" * 2000 + b"]" * 2000,
                     b'{"a": 1}\n{oops\n', b"\xff\xfe", b"null", b'"s"', b"[1, 2, 3]"]),
)
BODY = st.one_of(
    JSONISH,
    st.lists(JSONISH, min_size=1, max_size=3).map(gzip_members),
    st.tuples(st.lists(JSONISH, min_size=1, max_size=2).map(gzip_members), st.binary(max_size=20))
    .map(lambda t: t[0] + t[1]),  # members followed by anything
    JSONISH.map(zlib.compress),
    st.tuples(JSONISH.map(gzip.compress), st.integers(min_value=1, max_value=30))
    .map(lambda t: t[0][: -t[1]]),  # truncated
)
MEDIA_TYPES = st.sampled_from(["application/json", "text/plain", "application/x-ndjson",
                               "application/ndjson", "application/xml", ""]) | st.text(max_size=20)
ENCODINGS = st.sampled_from(["", "identity", "gzip", "GZIP ", "deflate", "br", "gzip, gzip"]) \
    | st.text(max_size=10)


@settings(max_examples=600, deadline=None)
@given(raw=BODY, kind=MEDIA_TYPES, encoding=ENCODINGS, batch=st.booleans(),
       limit=st.sampled_from([64, 1024, LIMIT]), max_events=st.sampled_from([1, 3, 1000]))
def test_any_body_gives_raw_events_or_a_body_error_never_another_exception(
        raw: bytes, kind: str, encoding: str, batch: bool, limit: int, max_events: int) -> None:
    try:
        check_media_type(kind, batch=batch)  # as read_events does, before reading the body
        items = events_of_body(raw, kind, encoding, limit=limit, max_events=max_events,
                               batch=batch)
    except BodyError as exc:
        assert exc.status in {400, 413, 415}
        assert exc.code and exc.message and exc.details()[0]["reason"] == exc.message
        return
    assert 1 <= len(items) <= max_events
    if not batch:
        assert len(items) == 1 and isinstance(items[0], dict)


@settings(max_examples=300, deadline=None)
@given(data=BODY, max_events=st.integers(min_value=1, max_value=5))
def test_any_ndjson_gives_values_or_a_body_error(data: bytes, max_events: int) -> None:
    try:
        assert len(parse_ndjson(data, max_events)) <= max_events
    except BodyError as exc:
        assert exc.status in {400, 413}
