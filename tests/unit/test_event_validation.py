"""The v1 event contract: every rule, with named cases and generated hostile input."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.event import (
    MAX_TS_MS,
    FieldError,
    InvalidEvent,
    PageView,
    UndecodableRecord,
    ValidationPolicy,
    decode_event,
    encode_event,
    validate_batch,
    validate_event,
)
from contracts.examples import load_examples

NOW = 1_795_860_000_000  # 2026-11-28T10:00:00Z
POLICY = ValidationPolicy(now_ms=NOW)


def fixed_id() -> str:
    return "generated-id"


@pytest.mark.parametrize("case", load_examples("valid"), ids=lambda c: c["name"])
def test_valid_examples_are_accepted(case: dict[str, Any]) -> None:
    event = validate_event(case["event"], POLICY, fixed_id)
    assert event.page_id == case["event"]["page_id"]
    assert event.site_id == case["event"].get("site_id", "default")
    assert event.received_at == NOW


@pytest.mark.parametrize("case", load_examples("invalid"), ids=lambda c: c["name"])
def test_invalid_examples_name_the_field_and_reason(case: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_event(case["event"], POLICY, fixed_id)
    assert any(e.field == case["field"] and case["reason"] in e.reason
               for e in caught.value.errors), caught.value.errors


def test_missing_event_id_gets_the_generated_one() -> None:
    assert validate_event({"page_id": "h", "user_id": "u"}, POLICY, fixed_id).event_id == \
        "generated-id"


def test_client_event_id_is_kept() -> None:
    raw = {"page_id": "h", "user_id": "u", "event_id": "mine-1"}
    assert validate_event(raw, POLICY, fixed_id).event_id == "mine-1"


def test_missing_ts_means_time_of_receipt() -> None:
    assert validate_event({"page_id": "h", "user_id": "u"}, POLICY, fixed_id).ts == NOW


def test_rfc3339_and_epoch_ms_give_the_same_instant() -> None:
    a = validate_event({"page_id": "h", "user_id": "u", "ts": "2026-11-28T09:00:00Z"}, POLICY,
                       fixed_id)
    b = validate_event({"page_id": "h", "user_id": "u", "ts": NOW - 3_600_000}, POLICY, fixed_id)
    assert a.ts == b.ts == NOW - 3_600_000


@pytest.mark.parametrize("ts", [
    "2026-W48-6T05:00Z",  # ISO 8601 week date
    "20261128T050000Z",  # ISO 8601 basic format
    "2026-11-28T05Z",  # no minutes or seconds
    "2026-11-28T05:00Z",  # no seconds
    "2026-11-28T05:00:00",  # no time zone
    "2026-11-28T05:00:00+0100",  # offset without a colon
    "2026-11-28 05:00:00Z",  # space instead of T
    "2026-11-28T05:00:00.Z",  # empty fraction
    "2026-11-28",  # date only
    "2026-11-28T25:00:00Z",  # hour out of range
    "2026-02-30T05:00:00Z",  # no such day
    "2026-11-28T05:00:0\u0661Z",  # Arabic-Indic digit in the seconds
    "\uff12026-11-28T05:00:00Z",  # non-ASCII digit
    "",
])
def test_ts_strings_other_than_rfc3339_date_times_are_refused(ts: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_event({"page_id": "h", "user_id": "u", "ts": ts}, POLICY, fixed_id)
    assert [e.field for e in caught.value.errors] == ["ts"]
    assert "RFC 3339" in caught.value.errors[0].reason


@pytest.mark.parametrize(("ts", "ms"), [
    ("2026-11-28T09:00:00Z", NOW - 3_600_000),
    ("2026-11-28t09:00:00z", NOW - 3_600_000),  # RFC 3339 allows lower case T and Z
    ("2026-11-28T10:00:00+01:00", NOW - 3_600_000),
    ("2026-11-28T08:30:00-00:30", NOW - 3_600_000),
    ("2026-11-28T09:00:00.123Z", NOW - 3_600_000 + 123),
    ("2026-11-28T09:00:00.999999999Z", NOW - 3_600_000 + 999),
    (NOW - 1, NOW - 1),  # epoch milliseconds stay valid
])
def test_rfc3339_date_times_give_the_exact_millisecond(ts: object, ms: int) -> None:
    assert validate_event({"page_id": "h", "user_id": "u", "ts": ts}, POLICY, fixed_id).ts == ms


def test_late_window_is_configurable() -> None:
    raw = {"page_id": "h", "user_id": "u", "ts": NOW - 2 * 3_600_000}
    with pytest.raises(InvalidEvent):
        validate_event(raw, ValidationPolicy(now_ms=NOW, late_window_ms=3_600_000), fixed_id)


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_event({"page_id": 1, "user_id": "", "site_id": "!"}, POLICY, fixed_id)
    assert {e.field for e in caught.value.errors} == {"page_id", "user_id", "site_id"}


def test_batch_lists_every_invalid_event_by_index() -> None:
    raws: list[object] = [{"page_id": "a", "user_id": "u"}, {"user_id": "u"},
                          {"page_id": "c", "user_id": "u"}, 5]
    with pytest.raises(InvalidEvent) as caught:
        validate_batch(raws, POLICY, fixed_id)
    assert [(e.index, e.field) for e in caught.value.errors] == [(1, "page_id"), (3, "")]


def test_codec_round_trips() -> None:
    event = PageView("e1", "site", "/p", "u", NOW, NOW + 5)
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("value", [None, b"", b"not json", b"[]", b'{"v": 2}',
                                   b'{"v":1,"event_id":"e","site_id":"s","page_id":"p",'
                                   b'"user_id":"u","ts":"x","received_at":1}',
                                   b'{"v":1,"event_id":"e","site_id":"bad site","page_id":"p",'
                                   b'"user_id":"u","ts":1,"received_at":1}'])
def test_undecodable_records_are_named(value: bytes | None) -> None:
    with pytest.raises(UndecodableRecord):
        decode_event(value)


def record(**fields: object) -> bytes:
    """A Kafka record value as ``encode_event`` writes it, with some fields replaced."""
    good: dict[str, object] = {"v": 1, "event_id": "e", "site_id": "s", "page_id": "p",
                               "user_id": "u", "ts": NOW, "received_at": NOW}
    return orjson.dumps({**good, **fields})


def test_a_record_with_every_field_valid_decodes() -> None:
    assert decode_event(record()) == PageView("e", "s", "p", "u", NOW, NOW)


@pytest.mark.parametrize(("fields", "field"), [
    ({"ts": 10**17}, "ts"),  # year ~3.17 million: no datetime, no Mongo document
    ({"ts": -1}, "ts"),
    ({"ts": NOW + 5 * 60_000 + 1}, "ts"),  # further ahead of receipt than the gateway allows
    ({"ts": True}, "ts"),
    ({"ts": 1.5}, "ts"),
    ({"received_at": 10**17}, "received_at"),
    ({"received_at": -5}, "received_at"),
    ({"received_at": "now"}, "received_at"),
    ({"page_id": "p\u0000"}, "page_id"),
    ({"page_id": "p" * 513}, "page_id"),
    ({"page_id": ""}, "page_id"),
    ({"user_id": "u" * 129}, "user_id"),
    ({"user_id": "u\u0000"}, "user_id"),  # PostgreSQL under FerretDB cannot store NUL
    ({"user_id": "\x1b[31mu"}, "user_id"),
    ({"event_id": "e" * 129}, "event_id"),
    ({"event_id": "e\n"}, "event_id"),
    ({"event_id": 7}, "event_id"),
    ({"site_id": "bad site"}, "site_id"),
    ({"site_id": None}, "site_id"),
])
def test_records_breaking_a_gateway_rule_are_undecodable_naming_the_field(
        fields: dict[str, object], field: str) -> None:
    with pytest.raises(UndecodableRecord, match=f"^(.*; )?{field}: "):
        decode_event(record(**fields))


def test_a_bad_received_at_is_named_alone() -> None:
    with pytest.raises(UndecodableRecord) as caught:
        decode_event(record(received_at="now"))
    assert str(caught.value).startswith("received_at: ") and "ts:" not in str(caught.value)


def test_the_edges_of_the_stored_time_range_decode() -> None:
    assert decode_event(record(ts=0, received_at=0)).ts == 0
    last = MAX_TS_MS
    assert decode_event(record(ts=last, received_at=last)).ts == last
    assert decode_event(record(ts=NOW + 5 * 60_000)).ts == NOW + 5 * 60_000


def test_the_gateway_never_accepts_a_ts_it_could_not_store() -> None:
    policy = ValidationPolicy(now_ms=NOW, late_window_ms=10**15)
    with pytest.raises(InvalidEvent, match="ts: is outside"):
        validate_event({"page_id": "h", "user_id": "u", "ts": -1}, policy, fixed_id)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=12)
EVENTISH = st.fixed_dictionaries({}, optional={
    "page_id": JSON | st.text(max_size=600), "user_id": JSON | st.text(max_size=200),
    "site_id": JSON | st.from_regex(r"[A-Za-z0-9._ -]{0,70}", fullmatch=True),
    "event_id": JSON, "ts": JSON | st.integers() | st.datetimes().map(lambda d: d.isoformat())
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    "extra": JSON})


@settings(max_examples=400, deadline=None)
@given(raw=JSON | EVENTISH)
def test_any_input_is_accepted_or_rejected_with_a_validation_error(raw: object) -> None:
    try:
        event = validate_event(raw, POLICY, fixed_id)
    except InvalidEvent as exc:
        assert exc.errors and all(isinstance(e, FieldError) for e in exc.errors)
        return
    assert 1 <= len(event.page_id) <= 512 and 1 <= len(event.user_id) <= 128
    assert decode_event(encode_event(event)) == event


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=300))
def test_any_bytes_decode_or_raise_undecodable(value: bytes) -> None:
    with contextlib.suppress(UndecodableRecord):
        decode_event(value)
