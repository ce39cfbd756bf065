"""Reading request bodies: content decoding within the limit, NDJSON lines, named refusals."""

from __future__ import annotations

import gzip
import zlib

import pytest

from ingest_gateway.body import BodyError, decode_content

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


def test_unknown_encodings_are_a_415() -> None:
    with pytest.raises(BodyError) as caught:
        decode_content(b"x", "br", LIMIT)
    assert (caught.value.status, caught.value.code) == (415, "unsupported_encoding")
