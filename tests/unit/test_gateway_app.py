"""The gateway through aiohttp's test client, with an in-memory publisher: every rule of
ingestion (formats, limits, errors, CORS, allowlist, 503) without a broker."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from contracts.event import KNOWN_FIELDS, PageView
from contracts.registry import FixedRegistry, RegistrySource
from contracts.settings import GatewaySettings
from contracts.tenancy import Registry, Site
from ingest_gateway import body as body_module
from ingest_gateway.app import AUTO_DECOMPRESS, create_app
from ingest_gateway.publisher import PublishUnavailable

NOW = 1_795_860_000_000
Client = TestClient[web.Request, web.Application]


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[PageView] = []
        self.unavailable: PublishUnavailable | None = None
        self.ready = True
        self.in_flight = 0

    async def publish(self, events: Sequence[PageView]) -> None:
        if self.unavailable:
            raise self.unavailable
        self.published.extend(events)


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
async def client(aiohttp_client: Callable[..., Awaitable[Client]],
                 publisher: FakePublisher) -> Client:
    return await make_client(aiohttp_client, publisher, GatewaySettings())


def registered(*sites: str) -> FixedRegistry:
    return FixedRegistry(Registry(sites={s: Site(s) for s in sites}, grants={}))


class NeverLoaded:
    """A registry whose first read from MongoDB has not succeeded yet."""

    loaded = False

    def current(self) -> Registry:
        return Registry(sites={}, grants={})


async def make_client(aiohttp_client: Callable[..., Awaitable[Client]],
                      publisher: FakePublisher, settings: GatewaySettings,
                      registry: RegistrySource | None = None,
                      monotonic_s: Callable[[], float] = lambda: 0.0) -> Client:
    app = create_app(settings, publisher=publisher, clock_ms=lambda: NOW,
                     registry=registry or registered("default", "shop"),
                     monotonic_s=monotonic_s)
    server = TestServer(app)
    # As in __main__: the gateway inflates bodies itself, within its limit.
    await server.start_server(auto_decompress=AUTO_DECOMPRESS)
    return await aiohttp_client(server)


async def post(client: Client, path: str, body: bytes, content_type: str = "application/json",
               **headers: str) -> tuple[int, Any]:
    response = await client.post(path, data=io.BytesIO(body),
                                 headers={"Content-Type": content_type, **headers})
    payload = await response.read()
    assert response.content_type == "application/json", payload
    answer = orjson.loads(payload)
    if response.status >= 400:
        assert_error_shape(answer)
    return response.status, answer


def assert_error_shape(answer: Any) -> None:
    """Every refusal: ``{"error": code, "message": text, "details": [{index, field, reason}]}``."""
    assert isinstance(answer["error"], str) and isinstance(answer["message"], str), answer
    assert isinstance(answer["details"], list) and answer["details"], answer
    for detail in answer["details"]:
        assert {"index", "field", "reason"} <= set(detail), answer
        assert detail["index"] is None or isinstance(detail["index"], int), answer
        assert isinstance(detail["reason"], str) and detail["reason"], answer


async def test_track_accepts_the_seed_shape(client: Client, publisher: FakePublisher) -> None:
    status, body = await post(client, "/track", b'{"page_id": "home", "user_id": "u1"}')
    assert status == 202
    assert body["accepted"] == 1 and body["event_ids"] == [publisher.published[0].event_id]
    event = publisher.published[0]
    assert (event.site_id, event.page_id, event.user_id, event.ts) == ("default", "home", "u1",
                                                                       NOW)


async def test_beacon_text_plain_bodies_are_json(client: Client,
                                                 publisher: FakePublisher) -> None:
    status, _ = await post(client, "/track", b'{"page_id": "p", "user_id": "u"}', "text/plain")
    assert status == 202 and len(publisher.published) == 1


async def test_a_batch_keeps_order_and_client_ids(client: Client,
                                                  publisher: FakePublisher) -> None:
    events = [{"page_id": f"/p{i}", "user_id": "u", "event_id": f"id-{i}"} for i in range(5)]
    status, body = await post(client, "/events", orjson.dumps(events))
    assert status == 202
    assert body == {"accepted": 5, "event_ids": [f"id-{i}" for i in range(5)]}
    assert [e.page_id for e in publisher.published] == [f"/p{i}" for i in range(5)]


async def test_ndjson_batches_are_accepted(client: Client, publisher: FakePublisher) -> None:
    body = b'{"page_id": "a", "user_id": "u"}\n\n{"page_id": "b", "user_id": "u"}\n'
    status, answer = await post(client, "/events", body, "application/x-ndjson")
    assert status == 202 and answer["accepted"] == 2


async def test_gzip_bodies_are_inflated(client: Client, publisher: FakePublisher) -> None:
    body = gzip.compress(orjson.dumps([{"page_id": "a", "user_id": "u"}] * 10))
    status, answer = await post(client, "/events", body, **{"Content-Encoding": "gzip"})
    assert status == 202 and answer["accepted"] == 10


async def test_a_body_of_fifty_thousand_gzip_members_is_read_whole(
        client: Client, publisher: FakePublisher) -> None:
    """1 MB of empty members (20 bytes each) ending in one event: inflated, not refused."""
    body = gzip.compress(b"") * 50_000 + gzip.compress(b'{"page_id": "z", "user_id": "u"}\n')
    status, answer = await post(client, "/events", body, "application/x-ndjson",
                                **{"Content-Encoding": "gzip"})
    assert status == 202 and answer["accepted"] == 1
    assert [e.page_id for e in publisher.published] == ["z"]


async def test_every_gzip_member_of_an_ndjson_body_is_accepted(
        client: Client, publisher: FakePublisher) -> None:
    body = gzip.compress(b'{"page_id": "a", "user_id": "u"}\n') + \
        gzip.compress(b'{"page_id": "b", "user_id": "u"}\n')
    status, answer = await post(client, "/events", body, "application/x-ndjson",
                                **{"Content-Encoding": "gzip"})
    assert (status, answer["accepted"]) == (202, 2)
    assert [e.page_id for e in publisher.published] == ["a", "b"]


async def test_garbage_after_a_gzip_member_is_a_400(client: Client,
                                                    publisher: FakePublisher) -> None:
    body = gzip.compress(b'{"page_id": "a", "user_id": "u"}') + b"garbage"
    status, answer = await post(client, "/track", body, **{"Content-Encoding": "gzip"})
    assert (status, answer["error"]) == (400, "malformed_body")
    assert publisher.published == []


async def test_a_gzip_bomb_is_refused_at_the_decompressed_limit(
        client: Client, publisher: FakePublisher) -> None:
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]")
    assert len(bomb) < 1024 * 1024
    status, answer = await post(client, "/events", bomb, **{"Content-Encoding": "gzip"})
    assert (status, answer["error"]) == (413, "body_too_large")
    assert publisher.published == []


async def test_corrupt_gzip_is_a_400(client: Client) -> None:
    status, answer = await post(client, "/track", b"\x1f\x8bnot gzip at all",
                                **{"Content-Encoding": "gzip"})
    assert (status, answer["error"]) == (400, "malformed_body")


async def test_unknown_content_encoding_is_a_415(client: Client) -> None:
    status, answer = await post(client, "/track", b"{}", **{"Content-Encoding": "br"})
    assert (status, answer["error"]) == (415, "unsupported_encoding")


async def test_oversized_bodies_are_a_413(client: Client) -> None:
    body = orjson.dumps([{"page_id": "p" * 500, "user_id": "u"}] * 2100)
    assert len(body) > 1024 * 1024
    status, answer = await post(client, "/events", body)
    assert (status, answer["error"]) == (413, "body_too_large")


async def test_more_than_1000_events_is_a_413(client: Client,
                                              publisher: FakePublisher) -> None:
    status, answer = await post(client, "/events",
                                orjson.dumps([{"page_id": "a", "user_id": "u"}] * 1001))
    assert (status, answer["error"]) == (413, "too_many_events")
    assert publisher.published == []


async def test_one_invalid_event_rejects_the_whole_batch_naming_it(
        client: Client, publisher: FakePublisher) -> None:
    events = [{"page_id": "a", "user_id": "u"}, {"page_id": "", "user_id": "u"},
              {"page_id": "c", "user_id": "u", "ts": "not a time"}]
    status, answer = await post(client, "/events", orjson.dumps(events))
    assert status == 400 and answer["error"] == "validation_failed"
    assert [(d["index"], d["field"]) for d in answer["details"]] == [(1, "page_id"), (2, "ts")]
    assert publisher.published == []


@pytest.mark.parametrize(("path", "body", "error"), [
    ("/track", b"{not json", "malformed_json"),
    ("/track", b"", "malformed_json"),
    ("/track", b"[]", "malformed_body"),
    ("/events", b'{"page_id": "a", "user_id": "u"}', "malformed_body"),
    ("/events", b"[]", "empty_batch"),
    ("/track", b'"just a string"', "malformed_body"),
])
async def test_malformed_bodies_are_a_400(client: Client, path: str, body: bytes,
                                          error: str) -> None:
    status, answer = await post(client, path, body)
    assert (status, answer["error"]) == (400, error)


async def test_a_bad_ndjson_line_is_named(client: Client) -> None:
    status, answer = await post(client, "/events", b'{"page_id": "a", "user_id": "u"}\n{oops\n',
                                "application/x-ndjson")
    assert status == 400 and answer["details"][0]["index"] == 1


async def test_the_media_type_is_checked_once_per_request(
        client: Client, publisher: FakePublisher, monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    real = body_module.check_media_type

    def counting(kind: str, *, batch: bool) -> None:
        checked.append(kind)
        real(kind, batch=batch)

    monkeypatch.setattr(body_module, "check_media_type", counting)
    status, _ = await post(client, "/events", b'[{"page_id": "a", "user_id": "u"}]')
    assert status == 202 and checked == ["application/json"]


@pytest.mark.parametrize("content_type", ["application/xml", "multipart/form-data",
                                          "application/octet-stream"])
async def test_other_content_types_are_a_415(client: Client, content_type: str) -> None:
    status, answer = await post(client, "/track", b"{}", content_type)
    assert (status, answer["error"]) == (415, "unsupported_media_type")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_wrong_method_is_a_json_405_naming_the_allowed_ones(client: Client,
                                                                  method: str) -> None:
    response = await client.request(method, "/track")
    assert response.status == 405
    answer = await response.json()
    assert_error_shape(answer)
    assert answer["error"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(",")) == {"POST", "OPTIONS"}


async def test_an_unknown_path_is_a_json_404(client: Client) -> None:
    response = await client.get("/nope")
    assert response.status == 404
    answer = await response.json()
    assert_error_shape(answer)
    assert answer == {"error": "not_found", "message": "Not Found: GET /nope", "details": [
        {"index": None, "field": None, "reason": "Not Found: GET /nope"}]}


async def test_an_unexpected_error_is_a_500_in_the_error_shape_that_says_nothing_more(
        client: Client, publisher: FakePublisher, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(events: Sequence[PageView]) -> None:
        raise RuntimeError("internals the client must not see")

    monkeypatch.setattr(publisher, "publish", broken)
    status, answer = await post(client, "/track", b'{"page_id": "a", "user_id": "u"}')
    message = "internal error; see the service log"
    assert (status, answer) == (500, {"error": "internal_error", "message": message,
                                      "details": [{"index": None, "field": None,
                                                   "reason": message}]})


async def test_body_level_refusals_carry_a_detail_without_index(client: Client) -> None:
    status, answer = await post(client, "/events", b"[]")
    assert (status, answer["error"]) == (400, "empty_batch")
    assert answer["details"] == [{"index": None, "field": None,
                                  "reason": "the batch holds no events"}]


async def test_sites_outside_the_registry_get_a_403_naming_the_site(
        aiohttp_client: Callable[..., Awaitable[Client]], publisher: FakePublisher) -> None:
    client = await make_client(aiohttp_client, publisher, GatewaySettings(),
                               registered("shop"))
    events = [{"page_id": "a", "user_id": "u", "site_id": "shop"},
              {"page_id": "a", "user_id": "u", "site_id": "junk"}]
    status, answer = await post(client, "/events", orjson.dumps(events))
    assert status == 403 and answer["error"] == "site_not_allowed"
    assert answer["details"] == [{"index": 1, "field": "site_id",
                                  "reason": "site 'junk' is not served here"}]
    assert publisher.published == []


class ChangingRegistry:
    """A registry replaced while the app runs, as the background refresh does."""

    loaded = True

    def __init__(self, *sites: Site) -> None:
        self.registry = Registry(sites={s.site_id: s for s in sites}, grants={})

    def current(self) -> Registry:
        return self.registry


def views(site: str, count: int) -> list[dict[str, str]]:
    return [{"page_id": f"/{i}", "user_id": "u", "site_id": site} for i in range(count)]


async def test_a_site_over_its_rate_gets_a_429_for_the_whole_request_with_retry_after(
        aiohttp_client: Callable[..., Awaitable[Client]], publisher: FakePublisher) -> None:
    sites = ChangingRegistry(Site("shop", max_events_per_s=2, burst_events=5), Site("blog"))
    client = await make_client(aiohttp_client, publisher, GatewaySettings(), sites)
    assert (await post(client, "/events", orjson.dumps(views("shop", 4))))[0] == 202
    response = await client.post("/events", data=orjson.dumps(
        views("blog", 2) + views("shop", 3)), headers={"Content-Type": "application/json",
                                                      "Origin": "https://shop.example"})
    answer = await response.json()
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"  # 2 missing at 2/s
    assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
    assert_error_shape(answer)
    assert answer["error"] == "site_rate_limited"
    assert answer["details"] == [{"index": 2, "field": "site_id", "reason": "site 'shop' is "
                                  "over its rate limit of 2 events/s (burst 5)"}]
    assert len(publisher.published) == 4  # nothing of the refused request, blog's neither
    assert (await post(client, "/events", orjson.dumps(views("blog", 2))))[0] == 202
    assert (await post(client, "/track", orjson.dumps(views("shop", 1)[0])))[0] == 202
    seen = await metrics(client)
    assert seen['site_rate_limited_events_total{site="shop"}'] == 3
    assert 'site_rate_limited_events_total{site="blog"}' not in seen
    assert seen['events_rejected_total{reason="site_rate_limited"}'] == 5


async def test_a_changed_site_limit_applies_without_a_restart(
        aiohttp_client: Callable[..., Awaitable[Client]], publisher: FakePublisher) -> None:
    now = [0.0]
    sites = ChangingRegistry(Site("shop", max_events_per_s=1, burst_events=1))
    client = await make_client(aiohttp_client, publisher, GatewaySettings(), sites,
                               monotonic_s=lambda: now[0])
    assert (await post(client, "/events", orjson.dumps(views("shop", 1))))[0] == 202
    now[0] += 0.1
    assert (await post(client, "/events", orjson.dumps(views("shop", 1))))[0] == 429
    sites.registry = Registry(sites={"shop": Site("shop", max_events_per_s=1000)}, grants={})
    now[0] += 0.1  # 100 events at the new rate
    assert (await post(client, "/events", orjson.dumps(views("shop", 50))))[0] == 202
    sites.registry = Registry(sites={"shop": Site("shop", max_events_per_s=1)}, grants={})
    assert (await post(client, "/events", orjson.dumps(views("shop", 1))))[0] == 202
    assert (await post(client, "/events", orjson.dumps(views("shop", 1))))[0] == 429


async def test_before_the_registry_was_ever_read_events_get_a_503_and_readyz_says_why(
        aiohttp_client: Callable[..., Awaitable[Client]], publisher: FakePublisher) -> None:
    client = await make_client(aiohttp_client, publisher, GatewaySettings(), NeverLoaded())
    status, answer = await post(client, "/track", b'{"page_id": "a", "user_id": "u"}')
    assert (status, answer["error"]) == (503, "unavailable")
    assert answer["reason"] == "site_registry_unavailable"
    assert publisher.published == []
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"] == {"kafka": True, "sites": False}


async def test_kafka_unavailable_is_a_503_with_retry_after_and_the_ids(
        client: Client, publisher: FakePublisher) -> None:
    publisher.unavailable = PublishUnavailable("kafka_timeout", retry_after_s=2)
    response = await client.post("/track", json={"page_id": "a", "user_id": "u",
                                                  "event_id": "keep-me"})
    assert response.status == 503
    assert response.headers["Retry-After"] == "2"
    body = await response.json()
    assert_error_shape(body)
    assert body["error"] == "unavailable" and body["event_ids"] == ["keep-me"]


async def test_cors_preflight_is_answered(client: Client) -> None:
    response = await client.options("/events", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


async def test_cors_header_is_on_the_answer(client: Client) -> None:
    response = await client.post("/track", json={"page_id": "a", "user_id": "u"},
                                 headers={"Origin": "https://shop.example"})
    assert response.status == 202
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_readyz_follows_the_publisher(client: Client, publisher: FakePublisher) -> None:
    assert (await client.get("/readyz")).status == 200
    publisher.ready = False
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["checks"] == {"kafka": False, "sites": True}


async def metrics(client: Client) -> dict[str, float]:
    """The app's /metrics as {sample with labels: value}."""
    text = await (await client.get("/metrics")).text()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def test_metrics_count_accepted_and_rejected_events(client: Client) -> None:
    await post(client, "/events", orjson.dumps([{"page_id": "a", "user_id": "u"}] * 3))
    await post(client, "/track", b"{bad")
    await post(client, "/events", orjson.dumps([{"page_id": "a"}, {"user_id": "u"}]))
    seen = await metrics(client)
    assert seen["events_accepted_total"] == 3
    assert seen['bodies_rejected_total{reason="malformed_json"}'] == 1
    assert 'events_rejected_total{reason="malformed_json"}' not in seen  # events unknown
    assert seen['events_rejected_total{reason="validation_failed"}'] == 2
    assert seen['http_requests_total{method="POST",route="/events",status="202"}'] == 1


async def test_made_up_methods_are_counted_as_other_and_do_not_grow_the_metrics(
        client: Client) -> None:
    # aiohttp's parser refuses unknown tokens itself (400); these it knows but we don't serve.
    others = ["PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE"]
    for method in others:
        response = await client.request(method, "/track")
        assert response.status == 405
    seen = await metrics(client)
    assert seen['http_requests_total{method="OTHER",route="unmatched",status="405"}'] == 8
    assert not [sample for sample in seen if any(m in sample for m in others)]
    assert seen["http_requests_in_flight"] == 1  # the /metrics request itself


async def test_a_refused_oversized_batch_counts_every_event_it_held(client: Client) -> None:
    await post(client, "/events", orjson.dumps([{"page_id": "a", "user_id": "u"}] * 1001))
    await post(client, "/events", b'{"page_id": "a", "user_id": "u"}\n' * 1005,
               "application/x-ndjson")
    await post(client, "/events", b'{"page_id": "a", "user_id": "u"}\n{oops\n\n',
               "application/x-ndjson")
    await post(client, "/events", b"[]")
    seen = await metrics(client)
    assert seen['events_rejected_total{reason="too_many_events"}'] == 1001 + 1005
    assert seen['bodies_rejected_total{reason="too_many_events"}'] == 2
    assert seen['events_rejected_total{reason="malformed_json"}'] == 2  # both NDJSON lines
    assert seen['bodies_rejected_total{reason="empty_batch"}'] == 1
    assert 'events_rejected_total{reason="empty_batch"}' not in seen


async def test_produce_latency_is_recorded_for_every_outcome(
        client: Client, publisher: FakePublisher) -> None:
    await post(client, "/track", b'{"page_id": "a", "user_id": "u"}')
    publisher.unavailable = PublishUnavailable("kafka_timeout")
    await post(client, "/track", b'{"page_id": "a", "user_id": "u"}')
    await post(client, "/track", b'{"page_id": "a", "user_id": "u"}')
    publisher.unavailable = PublishUnavailable("kafka_error")
    await post(client, "/events", b'[{"page_id": "a", "user_id": "u"}]')
    seen = await metrics(client)
    assert seen['produce_latency_seconds_count{outcome="ok"}'] == 1
    assert seen['produce_latency_seconds_count{outcome="timeout"}'] == 2
    assert seen['produce_latency_seconds_count{outcome="error"}'] == 1
    assert seen['events_rejected_total{reason="kafka_timeout"}'] == 2


async def test_events_in_flight_is_the_publishers_count_at_scrape_time(
        client: Client, publisher: FakePublisher) -> None:
    publisher.in_flight = 7  # e.g. messages of a request that gave up, still in the producer
    assert (await metrics(client))["events_in_flight"] == 7
    publisher.in_flight = 0
    assert (await metrics(client))["events_in_flight"] == 0


async def test_openapi_document_describes_exactly_the_routes_served(client: Client) -> None:
    response = await client.get("/openapi.json")
    document = await response.json()
    assert response.status == 200 and document["openapi"].startswith("3.1")
    served = {(r.method.lower(), r.resource.canonical) for r in client.app.router.routes()
              if r.resource is not None and r.method in ("GET", "POST")}
    described = {(method, path) for path, item in document["paths"].items()
                 for method in item}
    assert served == described
    event = document["components"]["schemas"]["PageView"]
    assert set(event["properties"]) == KNOWN_FIELDS and event["additionalProperties"] is False


KEY = "a-test-secret-of-32-characters!!"


@pytest.mark.parametrize(("path", "body", "content_type"), [
    ("/track", b'{"page_id":"/a","user_id":"alice@example.com"}', "application/json"),
    ("/events", b'[{"page_id":"/a","user_id":"alice@example.com"},'
                b'{"page_id":"/b","user_id":"alice@example.com"}]', "application/json"),
    ("/events", b'{"page_id":"/a","user_id":"alice@example.com"}\n', "application/x-ndjson"),
])
async def test_with_a_hash_key_the_gateway_publishes_a_keyed_hash_of_user_id_never_the_raw(
        aiohttp_client: Callable[..., Awaitable[Client]], publisher: FakePublisher,
        path: str, body: bytes, content_type: str) -> None:
    client = await make_client(aiohttp_client, publisher,
                               GatewaySettings(user_id_hash_key=KEY))
    status, _ = await post(client, path, body, content_type)
    assert status == 202
    expected = hmac.new(KEY.encode(), b"alice@example.com", hashlib.sha256).hexdigest()[:32]
    assert {e.user_id for e in publisher.published} == {expected}


async def test_without_a_hash_key_user_id_is_published_as_sent(
        client: Client, publisher: FakePublisher) -> None:
    status, _ = await post(client, "/track", b'{"page_id":"/a","user_id":"u1"}')
    assert status == 202 and publisher.published[0].user_id == "u1"


def test_a_hash_key_too_short_to_be_a_secret_stops_the_gateway() -> None:
    with pytest.raises(ValueError, match="USER_ID_HASH_KEY"):
        create_app(GatewaySettings(user_id_hash_key="short"), publisher=FakePublisher())


@pytest.mark.parametrize("user_id", ["a\x00b", "esc\x1b[31m", "tab\there", "del\x7f", "c1\x85"])
async def test_user_id_refuses_control_characters(client: Client, user_id: str) -> None:
    body = orjson.dumps({"page_id": "/a", "user_id": user_id})
    status, answer = await post(client, "/track", body)
    assert status == 400
    assert answer["details"][0]["field"] == "user_id"


async def test_a_browser_request_from_an_origin_the_site_does_not_list_is_refused(
        aiohttp_client: Callable[..., Awaitable[Client]], publisher: FakePublisher) -> None:
    sites = ChangingRegistry(Site("shop", origins=("https://shop.example",)), Site("blog"))
    client = await make_client(aiohttp_client, publisher, GatewaySettings(), sites)

    async def post_from(origin: str | None, events: list[dict[str, str]]) -> ClientResponse:
        headers = {"Content-Type": "application/json"}
        if origin is not None:
            headers["Origin"] = origin
        return await client.post("/events", data=orjson.dumps(events), headers=headers)

    refused = await post_from("https://evil.example", views("blog", 1) + views("shop", 2))
    answer = await refused.json()
    assert refused.status == 403
    assert_error_shape(answer)
    assert answer["error"] == "origin_not_allowed"
    assert [d["index"] for d in answer["details"]] == [1, 2]
    assert publisher.published == []
    assert (await post_from("https://shop.example", views("shop", 2))).status == 202
    assert (await post_from(None, views("shop", 1))).status == 202  # a server-side sender
    assert (await post_from("https://evil.example", views("blog", 1))).status == 202
    assert len(publisher.published) == 4
    seen = await metrics(client)
    assert seen['events_rejected_total{reason="origin_not_allowed"}'] == 2
