"""The dashboard page and the site list behind its picker, without servers: the page is
public, self-contained and locked to its own origin; ``/stats/sites`` needs the token, and
falls back to MongoDB when Redis cannot say."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pymongo.errors import ServerSelectionTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts.keys import intact_key, sites_key
from contracts.registry import FixedRegistry
from contracts.settings import QuerySettings
from contracts.tenancy import registry_of, token_document
from query_api.app import create_app
from query_api.dashboard import render_dashboard
from query_api.service import Unavailable
from query_api.sites import FixedSites, SiteDirectory
from tests.unit.test_query_app import MemoryReader

Client = TestClient[web.Request, web.Application]
Factory = Callable[..., Awaitable[Client]]
TOKEN = "s3cret"


@pytest.fixture
async def client(aiohttp_client: Factory) -> Client:
    app = create_app(QuerySettings(),
                     readers=(MemoryReader("redis"), MemoryReader("mongo")),
                     sites=FixedSites(["shop", "blog", "default"]),
                     registry=FixedRegistry(registry_of([], [token_document("t", TOKEN,
                                                                             admin=True)])))
    return await aiohttp_client(TestServer(app))


def csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


async def test_the_dashboard_page_is_public_even_with_auth_on(client: Client) -> None:
    response = await client.get("/dashboard")
    assert response.status == 200 and response.content_type == "text/html"
    assert "<title>" in await response.text()
    etag = response.headers["ETag"]
    again = await client.get("/dashboard", headers={"If-None-Match": etag})
    assert again.status == 304


async def test_the_page_loads_nothing_from_elsewhere_and_csp_allows_only_its_own_code(
        client: Client) -> None:
    response = await client.get("/dashboard")
    page = await response.text()
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", page)
    assert "/*STYLE*/" not in page and "/*SCRIPT*/" not in page
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    script = re.search(r"<script>(.*?)</script>", page, re.S)
    assert style and script
    policy = response.headers["Content-Security-Policy"]
    assert f"style-src {csp_hash(style.group(1))}" in policy
    assert f"script-src {csp_hash(script.group(1))}" in policy
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


async def test_the_page_keeps_the_token_in_session_storage_only() -> None:
    page, _ = render_dashboard()
    assert "sessionStorage" in page and "localStorage" not in page
    assert "document.cookie" not in page


async def test_the_site_list_needs_the_token_and_is_sorted(client: Client) -> None:
    assert (await client.get("/stats/sites")).status == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = await client.get("/stats/sites", headers=headers)
    assert response.status == 200 and response.headers["X-Stats-Source"] == "redis"
    assert await response.json() == {"total_sites": 3, "sites": ["blog", "default", "shop"]}
    response = await client.get("/stats/sites", params={"format": "csv"}, headers=headers)
    assert (await response.text()).split() == ["site_id", "blog", "default", "shop"]
    response = await client.get("/stats/sites", params={"site_id": "x"}, headers=headers)
    assert response.status == 400
    assert (await response.json())["details"] == [
        {"field": "site_id", "reason": "is not a parameter of this endpoint"}]


class FakeRedis:
    def __init__(self, members: set[bytes], error: Exception | None = None,
                 intact: bool = True) -> None:
        self.members = members
        self.error = error
        self.intact = intact

    async def exists(self, key: str) -> int:
        assert key == intact_key()
        if self.error:
            raise self.error
        return int(self.intact)

    async def smembers(self, key: str) -> set[bytes]:
        assert key == sites_key()
        if self.error:
            raise self.error
        return self.members


class FakeEvents:
    def __init__(self, site_ids: list[str], error: Exception | None = None) -> None:
        self.site_ids = site_ids
        self.error = error
        self.asked: list[dict[str, Any]] = []

    async def aggregate(self, pipeline: list[dict[str, Any]], **options: Any
                        ) -> AsyncIterator[dict[str, Any]]:
        assert pipeline == [{"$group": {"_id": "$site_id"}}]
        self.asked.append(options)
        if self.error:
            raise self.error

        async def cursor() -> AsyncIterator[dict[str, Any]]:
            for site_id in self.site_ids:
                yield {"_id": site_id}
        return cursor()


def directory(redis: FakeRedis, events: FakeEvents) -> SiteDirectory:
    return SiteDirectory(redis, events, mongo_timeout_ms=1234)  # type: ignore[arg-type]


async def test_sites_come_from_redis_when_it_knows_them() -> None:
    events = FakeEvents(["never-asked"])
    found = await directory(FakeRedis({b"shop", b"blog"}), events).sites()
    assert found == (["blog", "shop"], "redis") and events.asked == []


@pytest.mark.parametrize("redis", [FakeRedis(set()),
                                   FakeRedis({b"shop"}, intact=False),
                                   FakeRedis(set(), RedisConnectionError("down"))],
                         ids=["redis-set-empty", "redis-lost-its-state", "redis-down"])
async def test_sites_come_from_mongo_when_redis_is_empty_lost_or_down(
        redis: FakeRedis) -> None:
    events = FakeEvents(["shop", "blog"])
    assert await directory(redis, events).sites() == (["blog", "shop"], "mongo")
    assert events.asked == [{"maxTimeMS": 1234}]


async def test_sites_are_unavailable_when_neither_store_answers() -> None:
    events = FakeEvents([], ServerSelectionTimeoutError("down"))
    with pytest.raises(Unavailable):
        await directory(FakeRedis(set(), RedisConnectionError("down")), events).sites()
