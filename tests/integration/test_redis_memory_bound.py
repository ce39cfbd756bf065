"""A Redis over its ``maxmemory`` (policy noeviction) on the real server: the aggregator treats
the OOM replies as a store outage. It holds its batch (in MongoDB, not committed, not
counted), ``/readyz`` says why, and once memory is raised every event is counted exactly.

The test lowers the private stack's real Redis below what it uses (``CONFIG SET``) and puts
the setting back in a ``finally``; its own aggregator runs on a topic of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from tests.aggregator_harness import Aggregator, create_topic, produce_events
from tests.expectations import assert_redis_matches, recount, total_views
from tests.integration.test_aggregator_exactness import (
    committed_total,
    make_events,
    wait_for_total,
)
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration
BEFORE, HELD = 2_000, 2_000


async def readyz(aggregator: Aggregator, http: aiohttp.ClientSession) -> tuple[int, Any]:
    async with http.get(f"{aggregator.url}/readyz") as response:
        return response.status, await response.json()


async def test_a_redis_over_maxmemory_holds_the_batch_says_why_and_then_counts_exactly(
        stack: Stack, redis: Redis, http: aiohttp.ClientSession, site_id: str,
        tmp_path: Path, mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    topic = await create_topic(stack)
    events = make_events(site_id, BEFORE + HELD, seed=23)
    aggregator = Aggregator(stack, topic, tmp_path)
    aggregator.start()
    original = str((await redis.config_get("maxmemory"))["maxmemory"])
    try:
        await produce_events(stack, topic.name, events[:BEFORE])
        await wait_for_total(redis, site_id, BEFORE)
        await eventually(lambda: _committed(stack, topic.group, BEFORE), timeout_s=30)

        used = int((await redis.info("memory"))["used_memory"])
        await redis.config_set("maxmemory", used // 2)
        try:
            await produce_events(stack, topic.name, events[BEFORE:])

            async def says_oom() -> Any:
                status, body = await readyz(aggregator, http)
                why = body.get("reasons", {}).get("redis", "")
                return body if status == 503 and "OutOfMemoryError" in why else None

            body = await eventually(says_oom, timeout_s=60, interval_s=0.1,
                                    message="/readyz says Redis refuses writes (OOM)")
            assert body["checks"]["redis"] is False

            async def batch_in_mongo() -> bool:  # the held batch got as far as MongoDB
                return await mongo_events.count_documents({"site_id": site_id}) > BEFORE

            await eventually(batch_in_mongo, timeout_s=60, interval_s=0.2,
                             message="the held batch written to MongoDB")
            await eventually(says_oom, timeout_s=30, message="still holding")
            assert await committed_total(stack, topic.group) == BEFORE  # nothing past it
            assert await total_views(redis, site_id) == BEFORE
            assert aggregator.running()
        finally:
            await redis.config_set("maxmemory", original)

        await wait_for_total(redis, site_id, len(events))
        await eventually(lambda: _committed(stack, topic.group, len(events)), timeout_s=30)

        async def ready_again() -> bool:
            return (await readyz(aggregator, http))[0] == 200

        await eventually(ready_again, timeout_s=30, message="/readyz 200 again")
    finally:
        assert await aggregator.terminate() == 0, aggregator.log_tail()
    await assert_redis_matches(redis, site_id, recount(events))
    assert await mongo_events.count_documents({"site_id": site_id}) == len(events)
    assert [e["store"] for e in aggregator.log_events("store_unavailable")] == ["redis"]


async def _committed(stack: Stack, group: str, n: int) -> bool:
    return await committed_total(stack, group) == n
