"""The v2 event contract: optional tracker fields, their limits, and v1 records still decoding."""

from __future__ import annotations

import orjson
import pytest

from contracts.event import (
    MAX_REFERRER,
    MAX_USER_AGENT,
    PageView,
    UndecodableRecord,
    clip_text,
    decode_event,
    encode_event,
    extra_errors,
    page_host,
)
from contracts.mongo import event_document

NOW = 1_795_860_000_000  # 2026-11-28T10:00:00Z
FULL = PageView("e1", "shop.example", "/pricing", "v" * 32, NOW, NOW + 5, name="Signup",
                user_agent="Mozilla/5.0 (X11; Linux x86_64)", referrer="https://www.google.com/",
                host="shop.example", utm_source="newsletter", utm_medium="email",
                utm_campaign="dec", props=(("plan", "pro"), ("seats", "3")), via="plausible")
V1_RECORD = {"v": 1, "event_id": "e", "site_id": "s", "page_id": "p", "user_id": "u",
             "ts": NOW, "received_at": NOW}


def record(**fields: object) -> bytes:
    return orjson.dumps({**V1_RECORD, "v": 2, **fields})


def test_an_event_with_every_v2_field_round_trips() -> None:
    assert decode_event(encode_event(FULL)) == FULL


def test_an_event_of_our_own_formats_encodes_as_v1_except_the_version() -> None:
    plain = PageView("e", "s", "p", "u", NOW, NOW)
    assert orjson.loads(encode_event(plain)) == {**V1_RECORD, "v": 2}
    assert decode_event(encode_event(plain)) == plain


def test_a_v1_record_still_decodes() -> None:
    assert decode_event(orjson.dumps(V1_RECORD)) == PageView("e", "s", "p", "u", NOW, NOW)


@pytest.mark.parametrize("version", [0, 3, "2", True, None])
def test_other_schema_versions_are_undecodable(version: object) -> None:
    with pytest.raises(UndecodableRecord, match="schema version"):
        decode_event(orjson.dumps({**V1_RECORD, "v": version}))


def test_a_pageview_name_in_a_record_is_a_page_view() -> None:
    assert decode_event(record(name="pageview")).name is None


def test_null_v2_fields_are_absent() -> None:
    assert decode_event(record(name=None, props=None, via=None)) == \
        PageView("e", "s", "p", "u", NOW, NOW)


@pytest.mark.parametrize(("fields", "field"), [
    ({"name": ""}, "name"),
    ({"name": "n" * 121}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": 7}, "name"),
    ({"user_agent": "u" * (MAX_USER_AGENT + 1)}, "user_agent"),
    ({"user_agent": "ua\u0000"}, "user_agent"),
    ({"referrer": "r" * (MAX_REFERRER + 1)}, "referrer"),
    ({"host": "Shop.example"}, "host"),
    ({"host": "www.shop.example"}, "host"),
    ({"host": "shop.example:8080"}, "host"),
    ({"utm_source": "s" * 201}, "utm_source"),
    ({"utm_medium": ["email"]}, "utm_medium"),
    ({"utm_campaign": "c\x7f"}, "utm_campaign"),
    ({"props": {f"k{i}": "v" for i in range(31)}}, "props"),
    ({"props": {"plan": 3}}, "props"),
    ({"props": {"": "v"}}, "props"),
    ({"props": {"k" * 301: "v"}}, "props"),
    ({"props": {"k": "v" * 2001}}, "props"),
    ({"props": ["plan"]}, "props"),
    ({"via": "track"}, "via"),
])
def test_records_breaking_a_v2_rule_are_undecodable_naming_the_field(
        fields: dict[str, object], field: str) -> None:
    with pytest.raises(UndecodableRecord, match=f"^(.*; )?{field}: "):
        decode_event(record(**fields))


def test_the_limits_themselves_decode() -> None:
    event = decode_event(record(name="n" * 120, user_agent="u" * 512, referrer="r" * 2000,
                                utm_source="s" * 200, props={f"k{i}": "v" * 2000
                                                             for i in range(30)}))
    assert event.props is not None and len(event.props) == 30


def test_clip_text_cuts_and_cleans_what_clients_cannot_help() -> None:
    assert clip_text("a" * 600, MAX_USER_AGENT) == "a" * 512
    assert clip_text(" Moz\u0000illa \n", 100) == "Mozilla"
    assert clip_text("", 10) is None
    assert clip_text(None, 10) is None
    assert clip_text(5, 10) is None


@pytest.mark.parametrize(("given", "stored"), [
    ("WWW.Shop.Example", "shop.example"), ("shop.example:8443", "shop.example"),
    ("127.0.0.1:9000", "127.0.0.1"), ("[::1]:80", "[::1]"), ("", None), ("x" * 254, None),
    (None, None)])
def test_page_host_is_lowercase_without_www_or_port(given: object, stored: str | None) -> None:
    assert page_host(given) == stored


def test_extra_errors_checks_a_built_event() -> None:
    assert extra_errors(FULL) == []
    assert [e.field for e in extra_errors(PageView("e", "s", "p", "u", 1, 1, name="x" * 121,
                                                   via="other"))] == ["name", "via"]


def test_the_mongo_document_stores_v2_fields_only_when_set() -> None:
    document = event_document(FULL, 0, 7)
    assert document["name"] == "Signup" and document["props"] == {"plan": "pro", "seats": "3"}
    assert document["via"] == "plausible" and document["utm_campaign"] == "dec"
    plain = event_document(PageView("e", "s", "p", "u", NOW, NOW), 0, 7)
    assert not {"name", "user_agent", "referrer", "host", "props", "via",
                "utm_source"} & set(plain)
