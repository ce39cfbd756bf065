"""Visitor ids are pseudonymised at the gateway, on the real servers: with
``USER_ID_HASH_KEY`` set, a user id posted raw is found neither in the Kafka topic (nor its
dead-letter topic) nor in MongoDB, only its keyed hash; and unique-visitor counts stay exact.

The shared private stack runs its gateways without a key (other tests compare the ids they
sent); this test starts a gateway of its own with one, publishing to the stack's topic, so
the stack's own aggregators store and count what it sends.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from tests.expectations import hll_estimate, total_views
from tests.gateway_process import GatewayProcess
from tests.kafka_tools import end_offsets, read_between
from tests.stack import Stack, eventually

pytestmark = pytest.mark.e2e
KEY = "e2e-" + "k" * 40
USERS, VIEWS_EACH = 40, 3


def keyed_hash(user_id: str) -> str:
    return hmac.new(KEY.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


async def test_a_raw_user_id_reaches_neither_kafka_nor_mongodb_and_uniques_stay_exact(
        stack: Stack, http: aiohttp.ClientSession, redis: Redis, site_id: str,
        mongo_events: AsyncCollection[dict[str, Any]], tmp_path: Path) -> None:
    marker = uuid.uuid4().hex  # in every raw id, so any copy of one is found by a substring
    raw_ids = [f"visitor-{i}-{marker}@example.com" for i in range(USERS)]
    topics = (stack.topic, stack.dead_letter_topic)
    before = {t: await end_offsets(stack.kafka_bootstrap, t) for t in topics}
    gateway = GatewayProcess(stack, 5, tmp_path / "gateway.log",
                             env={"USER_ID_HASH_KEY": KEY})
    await gateway.start(http)
    try:
        body = [{"site_id": site_id, "page_id": f"/p{n % 4}", "user_id": user}
                for user in raw_ids for n in range(VIEWS_EACH)]
        async with http.post(f"{gateway.url}/events", data=orjson.dumps(body),
                             headers={"Content-Type": "application/json"}) as response:
            assert response.status == 202, await response.text()
    finally:
        await gateway.kill()

    async def counted() -> bool:
        return await total_views(redis, site_id) == len(body)

    await eventually(counted, timeout_s=60, interval_s=0.2, message="every view counted")

    for topic in topics:
        records = await read_between(stack.kafka_bootstrap, before[topic])
        assert not [r for r in records if marker.encode() in r.value
                    or marker.encode() in (r.key or b"")], f"a raw user id in {topic}"
        if topic == stack.topic:
            ours = [orjson.loads(r.value) for r in records if site_id.encode() in r.value]
            assert {e["user_id"] for e in ours} == {keyed_hash(u) for u in raw_ids}

    stored = [doc async for doc in mongo_events.find({"site_id": site_id})]
    assert len(stored) == len(body)
    assert {doc["user_id"] for doc in stored} == {keyed_hash(u) for u in raw_ids}
    assert await mongo_events.count_documents({"user_id": {"$regex": marker}}) == 0

    # Uniques: the same id always hashes the same, so each visitor is one visitor.
    async with http.get(f"{stack.http_url}/stats", params={"site_id": site_id}) as response:
        stats = await response.json()
    assert stats["total_views"] == len(body)
    assert stats["unique_visitors"] == await hll_estimate(
        redis, site_id, [keyed_hash(u) for u in raw_ids])
    assert stats["unique_visitors"] == USERS  # what this HyperLogLog gives for 40 members
