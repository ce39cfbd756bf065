"""A stored event reads back as the event that was stored, through BSON as pymongo sends and
decodes it: a rebuild from MongoDB counts what live counting counted."""

from __future__ import annotations

import bson
from hypothesis import given
from hypothesis import strategies as st

from contracts.event import PageView
from contracts.mongo import EVENT_FIELDS, event_document, page_view_of
from contracts.timebuckets import datetime_to_ms, ms_to_datetime

NOW = 1_795_860_000_123
FULL = PageView("e1", "shop.example", "/pricing", "v" * 32, NOW, NOW + 5, name="signup",
                user_agent="Mozilla/5.0 (X11; Linux x86_64)", referrer="https://www.google.com/",
                host="shop.example", utm_source="news", utm_medium="email", utm_campaign="dec",
                props=(("plan", "pro"), ("seats", "3")), via="plausible")
PLAIN = PageView("e2", "shop.example", "/", "u", NOW, NOW + 7)
YEARS_1_TO_9999 = st.integers(-62_135_596_800_000, 253_402_300_799_999)


def through_bson(document: dict[str, object]) -> dict[str, object]:
    read = bson.decode(bson.encode(document))
    return {field: value for field, value in read.items() if field in EVENT_FIELDS}


def test_an_event_with_every_field_reads_back_whole() -> None:
    assert page_view_of(through_bson(event_document(FULL, 3, 9))) == FULL


def test_an_event_of_our_own_formats_reads_back_whole() -> None:
    assert page_view_of(through_bson(event_document(PLAIN, 0, 1))) == PLAIN


@given(YEARS_1_TO_9999)
def test_a_time_reads_back_to_the_millisecond(ms: int) -> None:
    assert datetime_to_ms(ms_to_datetime(ms)) == ms
    event = PageView("e", "s", "p", "u", ms, ms)
    assert page_view_of(through_bson(event_document(event, 0, 0))) == event
