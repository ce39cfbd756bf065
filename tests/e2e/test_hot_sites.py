"""A hot site split over several Redis units (``make sites ARGS="set shop --shards 4"``),
on the real stack: every endpoint's answer from Redis equals a recount of what was sent,
views and visitors alike, while the split grows from 1 to 2 to 4 shards midway (so some
pages are counted in two units), and each unit holds its own share; a replay rebuilds every
unit exactly."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import orjson
import pytest
from pymongo.asynchronous.collection import AsyncCollection

from contracts.aggregates import ALL_TIME, VIEWS
from contracts.generations import decode_pointer
from contracts.keys import SiteKeys, unit_of, units_of
from contracts.mongo import event_key
from contracts.redis_client import RedisClient
from tests.expectations import hll_estimates
from tests.stack import ROOT, Stack, admin, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.smoke, pytest.mark.timeout(240)]
CHANGE_S = 20.0  # the services re-read the registry every 2 s
PAGES = [f"/p/{i:03d}" for i in range(60)]
USERS = [f"u{i:04d}" for i in range(400)]


async def post_events(http: aiohttp.ClientSession, url: str, events: list[dict[str, str]]
                      ) -> None:
    async with http.post(f"{url}/events", json=events) as response:
        assert response.status == 202, await response.text()


def replay(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m aggregator.recovery.replay`` as an operator runs it (``make replay``)."""
    return subprocess.run([sys.executable, "-m", "aggregator.recovery.replay", *args],
                          cwd=ROOT, env={**os.environ, **stack.env()}, capture_output=True,
                          text=True, timeout=180)


async def get(http: aiohttp.ClientSession, stack: Stack, path: str, **query: str
              ) -> dict[str, Any]:
    async with http.get(f"{stack.http_url}{path}", params=query) as response:
        assert response.status == 200, await response.text()
        assert response.headers["X-Stats-Source"] == "redis"
        body: dict[str, Any] = await response.json()
        return body


def some_events(site: str, rng: random.Random, n: int) -> list[dict[str, str]]:
    """Skewed, as real traffic is: a few pages get most views."""
    return [{"site_id": site, "page_id": PAGES[min(int(rng.expovariate(1 / 12)), 59)],
             "user_id": rng.choice(USERS), "event_id": uuid.uuid4().hex} for _ in range(n)]


async def test_a_hot_site_is_counted_exactly_over_its_units_as_its_shards_grow(
        stack: Stack, http: aiohttp.ClientSession, redis: RedisClient,
        mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    site = f"t-{uuid.uuid4().hex[:16]}"
    added = admin(stack, "sites", "add", site, "--shards", "2")
    assert added.returncode == 0, added.stderr
    rng = random.Random(7)
    sent: list[dict[str, str]] = []

    async def every_gateway_accepts() -> bool:
        for url in stack.gateway_urls:
            batch = some_events(site, rng, 1)
            async with http.post(f"{url}/events", json=batch) as response:
                if response.status != 202:
                    return False
            sent.extend(batch)
        return True
    await eventually(every_gateway_accepts, timeout_s=CHANGE_S, interval_s=0.2,
                     message="the hot site accepted by every gateway")
    for _ in range(4):
        batch = some_events(site, rng, 250)
        await post_events(http, stack.http_url, batch)
        sent.extend(batch)

    lowered = admin(stack, "sites", "set", site, "--shards", "1")
    assert lowered.returncode != 0 and "can only grow" in lowered.stderr
    raised = admin(stack, "sites", "set", site, "--shards", "4")
    assert raised.returncode == 0, raised.stderr

    async def stamped_with_four() -> bool:
        """Events keep coming until every gateway stamps the new count."""
        batches = [some_events(site, rng, 50) for _ in stack.gateway_urls]
        for url, batch in zip(stack.gateway_urls, batches, strict=True):
            await post_events(http, url, batch)
            sent.extend(batch)
        ids = [e["event_id"] for batch in batches for e in batch]
        stamps = {doc.get("shards") async for doc in mongo_events.find(
            {"site_id": site, "_id": {"$in": [event_key(site, i) for i in ids]}})}
        return stamps == {4}
    await eventually(stamped_with_four, timeout_s=CHANGE_S + 30, interval_s=0.5,
                     message="events stamped with 4 shards by every gateway")
    # A count is stamped only once it settled (contracts.tenancy.SHARDS_SETTLE_MS): the
    # site's events were counted unsplit first, then over 2 units, then over 4.
    for stamp in ({"$exists": False}, 2, 4):
        assert await mongo_events.count_documents({"site_id": site, "shards": stamp}) > 0

    views = Counter(e["page_id"] for e in sent)
    visitors: dict[str, set[str]] = defaultdict(set)
    for e in sent:
        visitors[e["page_id"]].add(e["user_id"])

    async def all_counted() -> dict[str, Any] | None:
        body = await get(http, stack, "/stats", site_id=site, limit="100")
        return body if body["total_views"] == len(sent) else None
    body = await eventually(all_counted, timeout_s=60, interval_s=0.2,
                            message=f"{len(sent)} views of the hot site")
    assert body is not None

    site_visitors, *page_visitors = await hll_estimates(
        redis, site, [{e["user_id"] for e in sent}, *(visitors[p] for p in sorted(views))])
    ranked = sorted(zip(sorted(views.items()), page_visitors, strict=True),
                    key=lambda row: (-row[0][1], row[0][0]))
    expected_pages = [{"page_id": p, "views": n, "unique_visitors": u}
                      for (p, n), u in ranked]
    assert body["unique_visitors"] == site_visitors
    assert body["total_pages"] == len(views)
    assert body["pages"] == expected_pages

    top = max(views, key=lambda p: (views[p], p))
    page = await get(http, stack, "/stats", site_id=site, page_id=top)
    assert (page["total_views"], page["unique_visitors"]) == (
        views[top], page_visitors[sorted(views).index(top)])
    second = await get(http, stack, "/stats", site_id=site, limit="5", offset="5")
    assert second["pages"] == expected_pages[5:10]
    now = await get(http, stack, "/stats/realtime", site_id=site)
    assert now["visitors_last_5_minutes"] == site_visitors  # all sent within the test
    series = await get(http, stack, "/stats/timeseries", site_id=site, interval="minute",
                       period="24h")
    assert sum(row["views"] for row in series["buckets"]) == len(sent)

    # Each unit holds a share: the units' all-time views add up to the site's.
    shares = []
    for unit in units_of(site, 4):
        pointer = await redis.get(SiteKeys(unit).generation_pointer())
        keys = SiteKeys(unit) if pointer is None else decode_pointer(unit, pointer)
        shares.append(int(await redis.get(keys.key(VIEWS, ALL_TIME)) or 0))
    assert sum(shares) == len(sent) and all(shares), shares
    assert {unit_of(site, p, 4) for p in views} == set(units_of(site, 4))

    # A replay rebuilds every unit into a new generation, from the topic and from the raw
    # events in MongoDB (as after a Redis loss: each stored event keeps its stamp): the
    # answers stay exact, and --verify finds nothing different.
    for args in ((), ("--source", "mongo"), ("--verify",)):
        before = {unit: await redis.get(SiteKeys(unit).generation_pointer())
                  for unit in units_of(site, 4)}
        done = await asyncio.to_thread(replay, stack, "--site", site, *args)
        summary = orjson.loads(done.stdout.splitlines()[-1])
        assert done.returncode == 0, done.stderr
        verify = args == ("--verify",)
        assert (summary["sites"], summary["differences"]) == (None if verify else 1, 0)
        if not verify:
            for unit, pointer in before.items():
                assert await redis.get(SiteKeys(unit).generation_pointer()) != pointer, unit
        again = await get(http, stack, "/stats", site_id=site, limit="100")
        assert (again["total_views"], again["unique_visitors"], again["pages"]) == (
            len(sent), site_visitors, expected_pages), args
