"""Breakdowns on the real stack: events with User-Agents, referrers and UTM tags written
straight to Kafka (as the tracker formats will publish them) are counted per source, UTM
tag, device, browser, OS and event name, exactly, through ``/stats/breakdown``; bots only as
``filtered_bots``; MongoDB's fallback gives the same figures; and a replay recomputes them."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, cast

import aiohttp
import pytest
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from aggregator.counting.source import Record
from aggregator.recovery.history import stored_events
from contracts.aggregates import (
    ALL_TIME,
    DIMENSION_RANKINGS,
    DIMENSIONS,
    OVERFLOW_PAGE,
    UTM_CAMPAIGN,
)
from contracts.event import PageView, encode_event
from contracts.keys import SiteKeys, unit_of, units_of
from contracts.tenancy import SITES
from query_api.mongo_reader import MongoReader
from query_api.ranges import TimeRange
from tests.aggregator_harness import produce_events, scrape
from tests.expectations import assert_redis_matches, recount
from tests.integration.test_page_quota import pipeline_on
from tests.integration.test_replay import replay
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
          "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/156.0.0.0 Safari/537.36")
GOOGLE, HN, SELF = ("https://www.google.com/", "https://news.ycombinator.com/item?id=1",
                    "https://shop.example/pricing")

# (views, unique visitors) per value of each dimension, for the events of ``make_events``.
EXPECTED: dict[str, dict[str, tuple[int, int]]] = {
    "source": {"Google": (3, 2), "Hacker News": (2, 1)},
    "utm_source": {"news": (3, 2)},
    "utm_medium": {"email": (3, 2)},
    "utm_campaign": {"dec": (3, 2)},
    "device": {"Desktop": (3, 2), "Mobile": (3, 1)},
    "browser": {"Chrome": (3, 2), "Safari": (3, 1)},
    "os": {"Windows": (3, 2), "iOS": (3, 1)},
    "event": {"engagement": (2, 2), "signup": (1, 1)},
}
VIEWS, VISITORS, BOTS = 8, 5, 4


def make_events(site_id: str) -> list[PageView]:
    now = int(time.time() * 1000)

    def event(user: str, ua: str | None, referrer: str | None = None, name: str | None = None,
              utm: bool = False, page: str = "/", via: str | None = None) -> PageView:
        return PageView(str(uuid.uuid4()), site_id, page, user, now, now, name=name,
                        user_agent=ua, referrer=referrer,
                        host=None if ua is None else "shop.example",
                        utm_source="news" if utm else None, utm_medium="email" if utm else None,
                        utm_campaign="dec" if utm else None,
                        via=via or (None if ua is None else "plausible"))

    return [
        event("u1", CHROME, GOOGLE, utm=True), event("u1", CHROME, GOOGLE, utm=True,
                                                      page="/pricing"),
        event("u2", CHROME, GOOGLE, utm=True),
        event("u3", IPHONE, HN), event("u3", IPHONE, HN, page="/docs"),
        event("u3", IPHONE, SELF, page="/pricing"),  # a self-referral: no source
        # Our own /track: no User-Agent, never a bot, views and visitors but no breakdown.
        event("u4", None), event("u5", None),
        event("u1", CHROME, name="engagement"), event("u3", IPHONE, name="engagement"),
        event("u2", CHROME, name="signup"),
        event("b1", GOOGLEBOT, GOOGLE), event("b2", HEADLESS),
        event("b3", None, via="umami"),  # a tracker's request without a User-Agent header
        event("b1", GOOGLEBOT, name="signup"),
    ]


async def breakdowns(http: aiohttp.ClientSession, stack: Stack, site_id: str
                     ) -> tuple[dict[str, dict[str, tuple[int, int]]], set[str]]:
    """Every dimension's rows as value -> (views, visitors), and the sources that answered."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    sources: set[str] = set()
    for dimension in DIMENSIONS:
        async with http.get(f"{stack.http_url}/stats/breakdown", params={
                "site_id": site_id, "dimension": dimension.api_name, "limit": "50"}) as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
            sources.add(r.headers["X-Stats-Source"])
        assert body["total_values"] == len(body["rows"])
        out[dimension.api_name] = {row["value"]: (row["views"], row["unique_visitors"])
                                   for row in body["rows"]}
    return out, sources


async def stats(http: aiohttp.ClientSession, stack: Stack, site_id: str,
                url: str | None = None) -> dict[str, Any]:
    """Through NGINX, or from one query API (``url``)."""
    async with http.get(f"{url or stack.http_url}/stats", params={"site_id": site_id}) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def assert_units_match(redis: Redis, site_id: str, shards: int,
                             events: list[PageView]) -> None:
    """Each unit of the site (the site itself when it is not hot) holds exactly the
    aggregates of its own events."""
    for unit in units_of(site_id, shards):
        await assert_redis_matches(redis, unit, recount(
            e for e in events if unit_of(site_id, e.page_id, e.shards) == unit))


@pytest.mark.smoke
@pytest.mark.parametrize("shards", [1, 4], ids=["normal", "hot"])
async def test_breakdowns_count_exactly_bots_only_as_filtered_and_a_replay_recomputes_them(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        mongo_events: AsyncCollection[dict[str, Any]], shards: int) -> None:
    """A hot site (its events stamped with 4 shards, so spread over 4 units) answers the
    same figures as a normal one."""
    events = [dataclasses.replace(e, shards=shards) for e in make_events(site_id)]
    if shards > 1:
        await mongo_events.database[SITES].update_one({"_id": site_id},
                                                      {"$set": {"shards": shards}})
        assert len({unit_of(site_id, e.page_id, shards) for e in events}) > 1
    await produce_events(stack, stack.topic, events)

    async def all_counted() -> bool:
        """By every query API: each re-reads the registry (the shard count written above
        straight into MongoDB, where the gateways' stamp would wait for that) on its own
        2-s clock, and until then reads only the site's first unit."""
        totals = [(await stats(http, stack, site_id, url))["total_views"]
                  for url in stack.query_urls]
        return totals == [VIEWS] * len(totals)

    await eventually(all_counted, timeout_s=60, interval_s=0.2,
                     message="every view counted (and every unit read by every query API)")

    async def bots_counted() -> bool:
        return bool((await stats(http, stack, site_id))["filtered_bots"] == BOTS)

    await eventually(bots_counted, timeout_s=60, interval_s=0.2,
                     message="the bots counted as filtered")
    label = f'aggregator_events_filtered_total{{reason="bot",site="{site_id}"}}'

    async def bots_on_metrics() -> bool:
        found = [await scrape(http, url) for url in stack.aggregator_urls]
        return sum(m.get(label, 0) for m in found) == BOTS

    await eventually(bots_on_metrics, timeout_s=30, interval_s=0.2,
                     message="the bots on the aggregators' /metrics")
    body = await stats(http, stack, site_id)
    assert (body["total_views"], body["unique_visitors"]) == (VIEWS, VISITORS)
    assert {p["page_id"]: p["views"] for p in body["pages"]} == {"/": 5, "/pricing": 2,
                                                                  "/docs": 1}
    found, sources = await breakdowns(http, stack, site_id)
    assert sources == {"redis"}
    assert found == EXPECTED
    await assert_units_match(redis, site_id, shards, events)

    # The MongoDB fallback, from what the aggregator stored with each raw event.
    mongo = MongoReader(mongo_events)
    everything = TimeRange(None, None)

    async def stored() -> bool:
        return await mongo_events.count_documents({"site_id": site_id}) == len(events)

    await eventually(stored, timeout_s=30, interval_s=0.2, message="every event in MongoDB")
    assert await mongo.filtered(site_id, everything) == BOTS
    totals = await mongo.totals(site_id, everything, None)
    assert (totals.views, totals.unique_visitors) == (VIEWS, VISITORS)
    for dimension in DIMENSIONS:
        _, rows = await mongo.breakdown(site_id, everything, dimension, 0, 50)
        assert {v: (n, u) for v, n, u in rows} == EXPECTED[dimension.api_name], \
            dimension.api_name

    # A rebuild after a Redis loss starts from MongoDB: it must read back the whole events
    # (a bot or a named event read back without its User-Agent or name is a page view).
    every_offset = {partition: 2**62 for partition in range(256)}
    read_back = [e async for batch in stored_events(mongo_events, every_offset, site_id)
                 for e in batch]
    assert sorted(read_back, key=lambda e: e.event_id) == sorted(
        events, key=lambda e: e.event_id)

    # A replay recomputes every breakdown from the raw events.
    status, _, err = await replay(stack, "--site", site_id)
    assert status == 0, err[-2000:]
    found_again, _ = await breakdowns(http, stack, site_id)
    assert found_again == EXPECTED
    assert (await stats(http, stack, site_id))["filtered_bots"] == BOTS
    await assert_units_match(redis, site_id, shards, events)


async def test_the_apply_script_folds_values_past_a_dimensions_quota_into_other(
        redis: Redis) -> None:
    """Client-controlled values (here ``utm_campaign``) past the dimension's quota count as
    ``(other)`` through the real apply script; every aggregate stays exact."""
    site_id = f"q-{uuid.uuid4().hex[:12]}"
    now = int(time.time() * 1000)
    campaigns = [f"c{i:04d}" for i in range(UTM_CAMPAIGN.max_values + 20)] + ["c0000"] * 2
    events = [PageView(str(uuid.uuid4()), site_id, "/", f"u{i % 7}", now, now,
                       user_agent=CHROME, via="plausible", utm_campaign=c)
              for i, c in enumerate(campaigns)]
    records = [Record(i % 2, i // 2, e.kafka_key, encode_event(e)) for i, e in enumerate(events)]
    pipeline, source = pipeline_on(redis, records, max_pages=100)
    while batch := await source.poll(300, 0):
        await pipeline.process(batch)
    key = SiteKeys(site_id).key(DIMENSION_RANKINGS[UTM_CAMPAIGN], ALL_TIME)
    rows = cast(list[tuple[bytes, float]], await redis.zrange(key, 0, -1, withscores=True))
    ranking = {bytes(m).decode(): -int(s) for m, s in rows}
    named = set(ranking) - {OVERFLOW_PAGE}
    assert len(named) == UTM_CAMPAIGN.max_values
    assert ranking[OVERFLOW_PAGE] == 20 and ranking["c0000"] == 3
    assert sum(ranking.values()) == len(events)
    folded = [dataclasses.replace(e, utm_campaign=e.utm_campaign if e.utm_campaign in named
                                  else OVERFLOW_PAGE) for e in events]
    await assert_redis_matches(redis, site_id, recount(folded))
