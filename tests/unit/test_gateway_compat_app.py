"""The tracker endpoints through aiohttp's test client: Plausible's and Umami's answers and
error shapes, the cookieless visitor, the shared refusals, and what is published."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from contracts.event import encode_event
from contracts.redis_client import RedisClient
from contracts.registry import FixedRegistry
from contracts.settings import GatewaySettings
from contracts.tenancy import Registry, Site
from ingest_gateway.app import AUTO_DECOMPRESS, create_app
from ingest_gateway.publisher import PublishUnavailable
from ingest_gateway.visitor import SaltStore
from tests.unit.test_compat_parsers import PAGEVIEW, SIGNUP, WEBSITE
from tests.unit.test_gateway_app import NOW, FakePublisher
from tests.unit.test_visitor import FakeRedis

Client = TestClient[web.Request, web.Application]
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0.0.0 Safari/537.36"
SEND = orjson.dumps({"type": "event", "payload": {
    "website": WEBSITE, "url": "/home", "hostname": "shop.example", "title": "Home",
    "referrer": "https://news.ycombinator.com/", "language": "en-US", "screen": "1920x1080"}})


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make(aiohttp_client: Callable[..., Awaitable[Client]], publisher: FakePublisher,
         redis: FakeRedis) -> MakeClient:
    async def build(settings: GatewaySettings | None = None) -> Client:
        sites = {"shop.example": Site("shop.example"), "other.example": Site("other.example"),
                 "shop": Site("shop", umami_website=WEBSITE),
                 "slow.example": Site("slow.example", max_events_per_s=1, burst_events=1)}
        app = create_app(settings or GatewaySettings(), publisher=publisher,
                         clock_ms=lambda: NOW,
                         registry=FixedRegistry(Registry(sites=sites, grants={})),
                         monotonic_s=lambda: 0.0,
                         salts=SaltStore(cast(RedisClient, redis), lambda: NOW))
        server = TestServer(app)
        await server.start_server(auto_decompress=AUTO_DECOMPRESS)
        return await aiohttp_client(server)
    return build


async def post(client: Client, path: str, body: bytes, *, ua: str = UA, real_ip: str | None
               = None, content_type: str = "text/plain") -> tuple[int, bytes, dict[str, str]]:
    headers = {"Content-Type": content_type, "User-Agent": ua, "Origin": "https://shop.example"}
    if real_ip:
        headers["X-Real-IP"] = real_ip
    response = await client.post(path, data=body, headers=headers)
    return response.status, await response.read(), dict(response.headers)


async def test_a_plausible_page_view_is_202_ok_once_published_with_the_tracker_fields(
        make: MakeClient, publisher: FakePublisher) -> None:
    status, body, headers = await post(await make(), "/api/event", PAGEVIEW)
    assert (status, body) == (202, b"ok")
    assert headers["Access-Control-Allow-Origin"] == "*"
    [event] = publisher.published
    assert (event.site_id, event.page_id, event.name, event.via) == \
        ("shop.example", "/pricing", None, "plausible")
    assert (event.user_agent, event.utm_source, event.referrer) == \
        (UA, "newsletter", "https://www.google.com/")
    assert len(event.user_id) == 32


async def test_one_address_and_user_agent_is_one_visitor_and_another_ua_another(
        make: MakeClient, publisher: FakePublisher) -> None:
    client = await make()
    for _ in range(2):
        await post(client, "/api/event", PAGEVIEW, real_ip="127.0.0.77")
    await post(client, "/api/event", SIGNUP, real_ip="127.0.0.77")
    await post(client, "/api/event", PAGEVIEW, real_ip="127.0.0.77", ua=UA + " Edg/156")
    ids = [e.user_id for e in publisher.published]
    assert ids[0] == ids[1] == ids[2] != ids[3]


async def test_x_real_ip_counts_only_from_a_trusted_proxy(make: MakeClient,
                                                          publisher: FakePublisher) -> None:
    trusting = await make()  # the test client connects from loopback: trusted by default
    await post(trusting, "/api/event", PAGEVIEW, real_ip="127.0.0.77")
    await post(trusting, "/api/event", PAGEVIEW, real_ip="127.0.0.78")
    distrusting = await make(GatewaySettings(trusted_proxies=("10.9.9.9",)))
    await post(distrusting, "/api/event", PAGEVIEW, real_ip="127.0.0.77")
    await post(distrusting, "/api/event", PAGEVIEW, real_ip="127.0.0.78")
    ids = [e.user_id for e in publisher.published]
    assert ids[0] != ids[1] and ids[2] == ids[3]


async def test_the_address_is_in_no_published_record(make: MakeClient,
                                                     publisher: FakePublisher) -> None:
    client = await make()
    await post(client, "/api/event", PAGEVIEW, real_ip="127.0.0.77")
    await post(client, "/api/send", SEND, real_ip="127.0.0.77", content_type="application/json")
    assert len(publisher.published) == 2
    assert all(b"127.0.0.77" not in encode_event(e) for e in publisher.published)


async def test_a_comma_list_of_domains_publishes_one_event_per_site(
        make: MakeClient, publisher: FakePublisher) -> None:
    body = orjson.dumps({"n": "pageview", "u": "https://shop.example/",
                         "d": "shop.example,other.example"})
    assert (await post(await make(), "/api/event", body))[0] == 202
    assert [e.site_id for e in publisher.published] == ["shop.example", "other.example"]


@pytest.mark.parametrize(("body", "content_type", "status", "errors"), [
    (b"{", "text/plain", 400, {"request": ["Unable to parse request body as json"]}),
    (b'{"n":"pageview","d":"shop.example"}', "text/plain", 400, {"url": ["is required"]}),
    (b'{"n":"pageview","u":"https://a.example/","d":"unknown.example"}', "application/json",
     403, {"domain": ["site 'unknown.example' is not served here"]}),
    (PAGEVIEW, "application/xml", 415,
     {"request": ["Content-Type must be text/plain or application/json"]}),
    (b'{"n":"x","u":"/' + b"a" * 70_000 + b'"}', "text/plain", 413,
     {"request": ["body exceeds 65536 bytes"]}),
])
async def test_plausible_refusals_have_plausibles_error_shape(
        make: MakeClient, publisher: FakePublisher, body: bytes, content_type: str,
        status: int, errors: dict[str, list[str]]) -> None:
    got = await post(await make(), "/api/event", body, content_type=content_type)
    assert (got[0], orjson.loads(got[1])) == (status, {"errors": errors})
    assert publisher.published == []


async def test_kafka_not_acknowledging_is_503_with_retry_after(
        make: MakeClient, publisher: FakePublisher) -> None:
    publisher.unavailable = PublishUnavailable("kafka_timeout", retry_after_s=3)
    client = await make()
    status, body, headers = await post(client, "/api/event", PAGEVIEW)
    assert (status, headers["Retry-After"]) == (503, "3") and b"errors" in body
    status, body, headers = await post(client, "/api/send", SEND)
    assert (status, headers["Retry-After"]) == (503, "3")
    assert orjson.loads(body)["error"]["status"] == 503


async def test_redis_down_with_no_salt_cached_is_503_but_umami_events_with_an_id_flow(
        make: MakeClient, publisher: FakePublisher, redis: FakeRedis) -> None:
    redis.down = True
    client = await make()
    status, _, headers = await post(client, "/api/event", PAGEVIEW)
    assert (status, headers["Retry-After"]) == (503, "2")
    with_id = orjson.dumps({"type": "event", "payload": {"website": WEBSITE, "url": "/",
                                                         "id": "member-7"}})
    assert (await post(client, "/api/send", with_id))[0] == 200
    assert [e.page_id for e in publisher.published] == ["/"]


async def test_umami_send_is_200_without_cache_or_disabled(make: MakeClient,
                                                           publisher: FakePublisher) -> None:
    status, body, _ = await post(await make(), "/api/send", SEND,
                                       content_type="application/json")
    answer = orjson.loads(body)
    assert status == 200 and answer["accepted"] == 1 and len(answer["event_ids"]) == 1
    assert not {"cache", "disabled"} & set(answer)
    [event] = publisher.published
    assert (event.site_id, event.page_id, event.host, event.via) == \
        ("shop", "/home", "shop.example", "umami")


async def test_an_unknown_umami_website_is_400_website_not_found(make: MakeClient) -> None:
    body = orjson.dumps({"type": "event", "payload": {
        "website": "11111111-2222-4333-8444-555555555555", "url": "/"}})
    status, answer, _ = await post(await make(), "/api/send", body)
    assert (status, orjson.loads(answer)) == (400, {"error": {
        "message": "Website not found.", "code": "bad-request", "status": 400}})


async def test_umami_identify_is_200_and_publishes_nothing(make: MakeClient,
                                                           publisher: FakePublisher) -> None:
    body = orjson.dumps({"type": "identify", "payload": {"website": WEBSITE, "id": "u1"}})
    status, answer, _ = await post(await make(), "/api/send", body)
    assert (status, orjson.loads(answer)["accepted"]) == (200, 0)
    assert publisher.published == []


async def test_an_umami_batch_stores_the_valid_elements_and_lists_the_others(
        make: MakeClient, publisher: FakePublisher) -> None:
    good = orjson.loads(SEND)
    body = orjson.dumps([good, {"type": "nope", "payload": {"website": WEBSITE}}, good])
    status, answer, _ = await post(await make(), "/api/batch", body)
    result = orjson.loads(answer)
    assert status == 200 and (result["size"], result["processed"], result["errors"]) == (3, 2, 1)
    assert result["details"] == [{"index": 1, "response": {"error": {
        "message": "Invalid type.", "code": "bad-request", "status": 400}}}]
    assert len(publisher.published) == 2 == result["accepted"]


async def test_a_hash_key_pseudonymises_umamis_id_too(make: MakeClient,
                                                      publisher: FakePublisher) -> None:
    client = await make(GatewaySettings(user_id_hash_key="k" * 32))
    body = orjson.dumps({"type": "event", "payload": {"website": WEBSITE, "id": "alice@x.y"}})
    assert (await post(client, "/api/send", body))[0] == 200
    assert publisher.published[0].user_id != "alice@x.y"


@pytest.mark.parametrize("path", ["/api/event", "/api/send", "/api/batch"])
async def test_the_preflight_allows_any_origin_and_umamis_cache_header(
        make: MakeClient, path: str) -> None:
    response = await (await make()).options(path, headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "x-umami-cache" in response.headers["Access-Control-Allow-Headers"]


async def test_the_sites_rate_limit_applies_with_plausibles_shape_and_retry_after(
        make: MakeClient, publisher: FakePublisher) -> None:
    client = await make()
    body = orjson.dumps({"n": "pageview", "u": "https://slow.example/", "d": "slow.example"})
    assert (await post(client, "/api/event", body))[0] == 202
    status, answer, headers = await post(client, "/api/event", body)
    assert status == 429 and "Retry-After" in headers
    assert list(orjson.loads(answer)["errors"]) == ["request"]
    assert len(publisher.published) == 1


async def test_a_site_listing_origins_fences_tracker_requests_from_others(
        aiohttp_client: Callable[..., Awaitable[Client]], publisher: FakePublisher,
        redis: FakeRedis) -> None:
    sites = {"shop.example": Site("shop.example", origins=("https://shop.example",))}
    app = create_app(GatewaySettings(), publisher=publisher, clock_ms=lambda: NOW,
                     registry=FixedRegistry(Registry(sites=sites, grants={})),
                     salts=SaltStore(cast(RedisClient, redis), lambda: NOW))
    client = await aiohttp_client(app)
    ok = await client.post("/api/event", data=PAGEVIEW, headers={
        "Content-Type": "text/plain", "Origin": "https://shop.example"})
    other = await client.post("/api/event", data=PAGEVIEW, headers={
        "Content-Type": "text/plain", "Origin": "https://evil.example"})
    assert (ok.status, other.status) == (202, 403)
    assert list((await other.json())["errors"]) == ["domain"]
