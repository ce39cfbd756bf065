"""One page view through every part: NGINX -> gateway -> Kafka -> aggregator -> MongoDB and
Redis -> query API -> NGINX."""

from __future__ import annotations

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from contracts.mongo import event_key
from tests.stack import Stack, eventually

pytestmark = pytest.mark.smoke


async def stats(http: aiohttp.ClientSession, stack: Stack, site_id: str) -> dict[str, object]:
    async with http.get(f"{stack.http_url}/stats", params={"site_id": site_id}) as response:
        assert response.status == 200, await response.text()
        body: dict[str, object] = await response.json()
        return body


async def test_a_tracked_page_view_is_stored_and_shows_in_stats(
        stack: Stack, http: aiohttp.ClientSession, site_id: str) -> None:
    event = {"page_id": "home", "user_id": "u1", "site_id": site_id}
    async with http.post(f"{stack.http_url}/track", json=event) as response:
        assert response.status == 202, await response.text()
        accepted = await response.json()
    assert accepted["accepted"] == 1 and len(accepted["event_ids"]) == 1

    async def counted() -> dict[str, object] | None:
        body = await stats(http, stack, site_id)
        return body if body["total_views"] == 1 else None

    body = await eventually(counted, timeout_s=15, message="the view in /stats")
    assert body is not None and body["unique_visitors"] == 1
    assert body["pages"] == [{"page_id": "home", "views": 1, "unique_visitors": 1}]

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.mongo_url)
    try:
        doc = await client["pageviews"]["events"].find_one(
            {"_id": event_key(site_id, accepted["event_ids"][0])})
    finally:
        await client.close()
    assert doc is not None and doc["site_id"] == site_id and doc["page_id"] == "home"


async def test_stats_of_an_unknown_site_are_zero(stack: Stack, http: aiohttp.ClientSession,
                                                 site_id: str) -> None:
    body = await stats(http, stack, site_id)
    assert (body["total_views"], body["unique_visitors"], body["pages"]) == (0, 0, [])
