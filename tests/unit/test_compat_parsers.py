"""Plausible's and Umami's bodies, as their real trackers send them (captured in
research17/PLAN.md sections 1.1 and 1.2), to tracked events; and their refusals."""

from __future__ import annotations

import orjson
import pytest

from contracts.event import ValidationPolicy
from ingest_gateway.compat_plausible import PlausibleError, events_of_plausible
from ingest_gateway.compat_umami import IGNORED, UmamiError, event_of_umami
from ingest_gateway.tracked import Tracked

NOW = 1_795_860_000_000  # 2026-11-28T10:00:00Z
POLICY = ValidationPolicy(now_ms=NOW)
WEBSITE = "50429a93-8479-4073-be80-d5d29c09c2ec"

# @plausible-analytics/tracker 0.4.6, captured from the real file.
PAGEVIEW = (b'{"n":"pageview","v":36,"u":"http://127.0.0.1:9000/pricing?utm_source=newsletter'
            b'&utm_medium=email&utm_campaign=dec#plans","d":"shop.example",'
            b'"r":"https://www.google.com/"}')
SIGNUP = (b'{"n":"Signup","v":36,"u":"http://127.0.0.1:9000/checkout","d":"shop.example",'
          b'"r":"https://www.google.com/","p":{"plan":"pro"},"i":false}')
ENGAGEMENT = (b'{"n":"engagement","sd":42,"d":"shop.example","u":"http://127.0.0.1:9000/pricing'
              b'?utm_source=newsletter","e":48,"v":36}')
# plausible-tracker 0.3.9 (src/lib/request.ts): props as a JSON string, h always sent.
LEGACY = (b'{"n":"pageview","u":"https://shop.example/app#/settings","d":"shop.example",'
          b'"r":null,"w":1280,"h":1,"p":"{\\"plan\\":\\"pro\\"}"}')


def test_a_tracker_page_view_is_the_path_with_utm_tags_and_the_referrer() -> None:
    [event] = events_of_plausible(PAGEVIEW)
    assert event == Tracked(site_id="shop.example", page_id="/pricing", name=None,
                            referrer="https://www.google.com/", host="127.0.0.1",
                            utm_source="newsletter", utm_medium="email", utm_campaign="dec")


def test_a_custom_event_keeps_its_name_and_props() -> None:
    [event] = events_of_plausible(SIGNUP)
    assert (event.name, event.page_id, event.props) == ("Signup", "/checkout",
                                                        (("plan", "pro"),))


def test_an_engagement_event_is_accepted_and_is_not_a_page_view() -> None:
    [event] = events_of_plausible(ENGAGEMENT)
    assert event.name == "engagement" and event.referrer is None


def test_the_legacy_tracker_sends_props_as_a_json_string_and_hash_mode_adds_the_fragment(
        ) -> None:
    [event] = events_of_plausible(LEGACY)
    assert (event.page_id, event.props, event.referrer) == ("/app#/settings",
                                                            (("plan", "pro"),), None)


def test_long_names_work_as_short_ones() -> None:
    body = orjson.dumps({"name": "pageview", "url": "https://www.Shop.example/a%20b/",
                         "domain": "www.shop.example", "referrer": "x", "props": {"n": 3}})
    [event] = events_of_plausible(body)
    assert (event.site_id, event.page_id, event.host, event.props) == \
        ("shop.example", "/a b/", "shop.example", (("n", "3"),))


def test_a_comma_list_of_domains_is_one_event_per_site() -> None:
    body = orjson.dumps({"n": "pageview", "u": "https://a.example/",
                         "d": "a.example, www.b.example"})
    assert [e.site_id for e in events_of_plausible(body)] == ["a.example", "b.example"]


def test_without_a_domain_the_url_host_names_the_site_and_no_path_is_root() -> None:
    [event] = events_of_plausible(b'{"n":"pageview","u":"https://www.shop.example"}')
    assert (event.site_id, event.page_id) == ("shop.example", "/")


@pytest.mark.parametrize(("body", "field"), [
    (b"not json", "request"),
    (b"[1]", "request"),
    (b'{"u":"https://s.example/","d":"s"}', "event_name"),
    (b'{"n":"","u":"https://s.example/","d":"s"}', "event_name"),
    (b'{"n":"pageview","d":"s"}', "url"),
    (b'{"n":"pageview","u":"data:text/html,hi","d":"s"}', "url"),
    (b'{"n":"pageview","u":"https://s.example/' + b"p" * 600 + b'","d":"s"}', "url"),
    (b'{"n":"pageview","u":"https://s.example/%00","d":"s"}', "url"),
    (b'{"n":"pageview","u":"https://s.example/","d":" , "}', "domain"),
    (b'{"n":"pageview","u":"https://s.example/","d":"bad site"}', "domain"),
    (b'{"n":"' + b"n" * 121 + b'","u":"https://s.example/","d":"s"}', "event_name"),
    (b'{"n":"x","u":"https://s.example/","d":"s","p":{"k":"' + b"v" * 2001 + b'"}}', "props"),
    (b'{"n":"x","u":"https://s.example/","d":"s","p":"{not json"}', "props"),
    (b'{"n":"engagement","u":"https://s.example/","d":"s"}', "event_name"),
    (b'{"n":"engagement","u":"https://s.example/","d":"s","sd":"x","e":-1}', "event_name"),
])
def test_refusals_name_the_field_as_plausible_does(body: bytes, field: str) -> None:
    with pytest.raises(PlausibleError) as caught:
        events_of_plausible(body)
    assert list(caught.value.body()["errors"]) == [field]


def test_unknown_keys_are_ignored_and_blank_or_nested_props_dropped() -> None:
    body = orjson.dumps({"n": "x", "u": "https://s.example/", "d": "s", "new_field": 1,
                         "p": {"a": "", "b": [1], "c": None, "d": True}})
    [event] = events_of_plausible(body)
    assert event.props == (("d", "true"),)


def umami(payload: dict[str, object], kind: str = "event") -> Tracked:
    result = event_of_umami({"type": kind, "payload": {"website": WEBSITE, **payload}},
                            lambda w: "shop" if w == WEBSITE else None, POLICY)
    assert isinstance(result, Tracked)
    return result


def test_umami_node_page_view_with_a_path_url_and_hostname() -> None:
    # @umami/node 0.4.0: track({url:'/home', hostname:'shop.example', referrer, ...})
    event = umami({"url": "/home", "hostname": "shop.example", "title": "Home",
                   "referrer": "https://news.ycombinator.com/", "language": "en-US",
                   "screen": "1920x1080"})
    assert event == Tracked(site_id="shop", page_id="/home", host="shop.example",
                            referrer="https://news.ycombinator.com/")


def test_umami_script_sends_a_full_url_and_an_empty_referrer_when_same_origin() -> None:
    event = umami({"url": "https://shop.example/docs?utm_campaign=dec#intro",
                   "hostname": "shop.example", "referrer": ""})
    assert (event.page_id, event.utm_campaign, event.referrer) == ("/docs#intro", "dec", None)


def test_umami_custom_event_without_url_is_on_the_root_page_with_its_data() -> None:
    # @umami/node track('signup', {plan: 'pro'})
    event = umami({"name": "signup", "data": {"plan": "pro", "seats": 3}})
    assert (event.page_id, event.name, event.props, event.host) == \
        ("/", "signup", (("plan", "pro"), ("seats", "3")), None)


def test_umami_id_is_the_visitor_and_ip_user_agent_vid_are_never_read() -> None:
    event = umami({"url": "/", "id": "member-7", "ip": "203.0.113.9", "userAgent": "bot",
                   "vid": "x"})
    assert event.user_id == "member-7"
    assert "203.0.113.9" not in repr(event) and "bot" not in repr(event)


def test_umami_timestamp_is_epoch_seconds() -> None:
    assert umami({"url": "/", "timestamp": NOW // 1000 - 60}).ts == NOW - 60_000


@pytest.mark.parametrize("kind", ["identify", "performance", "engagement"])
def test_umami_types_without_a_page_view_are_answered_and_ignored(kind: str) -> None:
    result = event_of_umami({"type": kind, "payload": {"website": WEBSITE}},
                            lambda w: "shop", POLICY)
    assert result is IGNORED


@pytest.mark.parametrize(("element", "message"), [
    ({"type": "event", "payload": {"website": "6a1f2b6e-0000-4000-8000-000000000000"}},
     "Website not found."),
    ({"type": "other", "payload": {"website": WEBSITE}}, "Invalid type."),
    ({"type": "event"}, "Invalid payload."),
    ([], "Invalid payload."),
    ({"type": "event", "payload": {"website": WEBSITE, "name": "=cmd()"}}, "Invalid name."),
    ({"type": "event", "payload": {"website": WEBSITE, "timestamp": 10**12}},
     "Invalid timestamp."),
    ({"type": "event", "payload": {"website": WEBSITE, "url": 5}}, "Invalid url"),
])
def test_umami_refusals_have_umamis_shape(element: object, message: str) -> None:
    with pytest.raises(UmamiError) as caught:
        event_of_umami(element, lambda w: "shop" if w == WEBSITE else None, POLICY)
    body = caught.value.body()
    assert body["error"]["message"].startswith(message)
    assert body["error"]["status"] == 400 and body["error"]["code"] == "bad-request"
