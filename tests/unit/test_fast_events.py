"""The one-pass accept path (msgspec) decides exactly as the reference path (orjson, then the
field checks that explain refusals): same events accepted, same values, on generated input
near every limit, and it does accept the everyday events it exists for."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.event import InvalidEvent, PageView, ValidationPolicy, validate_batch
from contracts.fast_events import accept_json
from ingest_gateway.body import BodyError, events_of_body

NOW = 1_795_860_000_000
POLICY = ValidationPolicy(now_ms=NOW, late_window_ms=7 * 86_400_000)
MAX_EVENTS = 5


def ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"id-{next(counter)}"


def reference(data: bytes, batch: bool) -> list[PageView] | None:
    try:
        raws = events_of_body(data, "application/json", "identity", limit=1 << 20,
                              max_events=MAX_EVENTS, batch=batch)
        return validate_batch(raws, POLICY, ids())
    except (BodyError, InvalidEvent):
        return None


def fast(data: bytes, batch: bool) -> list[PageView] | None:
    return accept_json(data, batch=batch, max_events=MAX_EVENTS, policy=POLICY,
                       new_event_id=ids())


def sized_text(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    sizes = st.sampled_from([0, 1, 2, 63, 64, 65, 127, 128, 129, 511, 512, 513])
    return sizes.flatmap(lambda n: st.text(alphabet, min_size=n, max_size=n))


PLAIN = st.characters(codec="utf-8", exclude_categories=["Cs"])
TEXT = st.one_of(sized_text(st.sampled_from("ab-_.Z9")), sized_text(PLAIN),
                 st.text(PLAIN, max_size=8),
                 st.sampled_from(["x\n", "\nx", "a\x00", "\x1b[31m", "é", "😀", "a b", "\u0085"]))
TS = st.one_of(
    st.integers(NOW - 8 * 86_400_000, NOW + 600_000),
    st.sampled_from([0, -1, 253_402_300_799_999, 253_402_300_800_000, NOW]),
    st.sampled_from(["2026-11-28T10:00:00Z", "2026-11-28T10:00:00.123+01:00", "2026-11-28",
                     "2026-11-28T10:00Z", "2026-W48-1T10:00:00Z", "9999-12-31T23:59:59+23:59",
                     "0001-01-01T00:00:00+23:59", "2026-11-28t10:00:00z"]),
    st.booleans(), st.floats(allow_nan=False), st.none())
VALUE = st.one_of(TEXT, TS, st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2))
FIELDS = {"page_id": TEXT, "user_id": TEXT, "site_id": TEXT, "event_id": TEXT, "ts": TS}


@st.composite
def raw_event(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 30)) == 0:
        return draw(VALUE)  # not an object at all
    event = {name: draw(values) for name, values in FIELDS.items() if draw(st.booleans())}
    if draw(st.integers(0, 3)) > 0:  # mostly events that could be valid
        event.setdefault("page_id", draw(sized_text(st.sampled_from("/ab"))))
        event.setdefault("user_id", draw(sized_text(st.sampled_from("u1"))))
    if draw(st.integers(0, 10)) == 0:
        event[draw(st.sampled_from(["extra", "Page_id", ""]))] = draw(VALUE)
    if draw(st.integers(0, 10)) == 0:
        event[draw(st.sampled_from(list(FIELDS)))] = draw(VALUE)
    return event


@settings(max_examples=500, deadline=None)
@given(events=st.lists(raw_event(), min_size=0, max_size=MAX_EVENTS + 1), batch=st.booleans())
def test_the_fast_path_accepts_exactly_what_the_reference_accepts(
        events: list[object], batch: bool) -> None:
    data = orjson.dumps(events if batch else (events[0] if events else {}))
    assert fast(data, batch) == reference(data, batch)


def test_everyday_events_take_the_fast_path_with_their_values() -> None:
    batch = [{"page_id": "/home", "user_id": "u1"},
             {"page_id": "/a", "user_id": "u2", "site_id": "shop", "event_id": "e-1",
              "ts": "2026-11-28T10:00:00Z"},
             {"page_id": "/b", "user_id": "u3", "ts": NOW - 1000}]
    accepted = fast(orjson.dumps(batch), True)
    assert accepted == [
        PageView("id-0", "default", "/home", "u1", NOW, NOW),
        PageView("e-1", "shop", "/a", "u2", NOW, NOW),  # NOW is 2026-11-28T10:00:00Z
        PageView("id-1", "default", "/b", "u3", NOW - 1000, NOW)]
    assert fast(orjson.dumps(batch[0]), False) == [PageView("id-0", "default", "/home", "u1",
                                                            NOW, NOW)]


def test_what_the_fast_path_leaves_to_the_reference_path() -> None:
    assert fast(b'{"page_id": "/a", "user_id": "u", "colour": "red"}', False) is None
    assert fast(b'{"page_id": "/a\\n", "user_id": "u"}', False) is None  # "$" would pass it
    assert fast(b'{"page_id": "/a", "user_id": "u", "site_id": "s\\n"}', False) is None
    assert fast(b"[]", True) is None
    assert fast(orjson.dumps([{"page_id": "/a", "user_id": "u"}] * 6), True) is None
    assert fast(b'{"page_id": "/a", "user_id": "u", "ts": 1.0}', False) is None
    huge = b'{"page_id": "/a", "user_id": "u", "ts": 100000000000000000000000}'
    assert fast(huge, False) is None and reference(huge, False) is None
    with_bom = b'\xef\xbb\xbf{"page_id": "/a", "user_id": "u"}'
    assert fast(with_bom, False) == reference(with_bom, False)
