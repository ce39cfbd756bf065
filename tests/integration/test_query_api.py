"""The query API on the real stack: every endpoint's numbers equal a straightforward recount
of the events the test sent through the gateway (several pages, users and hours, past
timestamps), from Redis and from MongoDB, exactly. Unique visitors from Redis are compared
with what a HyperLogLog holding exactly the expected visitors reports (PFADD into a scratch
key, ``tests.expectations.hll_estimate``), never with a tolerance: a missing or extra
visitor changes that number, and a tolerance would hide it.

The app runs in-process (aiohttp's test server) on the stack's Redis and MongoDB, so these
tests exercise the code in this checkout, not the query API processes already running.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from contracts.aggregates import ALL_TIME, VIEWS
from contracts.event import PageView
from contracts.keys import SiteKeys
from contracts.mongo import EVENTS, event_document
from contracts.settings import Backends, QuerySettings
from contracts.timebuckets import DAY_MS, HOUR_MS, MINUTE_MS, iso_z
from query_api.app import create_app
from query_api.mongo_reader import MongoReader
from query_api.ranges import TimeRange
from query_api.routes import DEPS
from tests.expectations import hll_estimate
from tests.stack import Stack, drop_database, eventually

pytestmark = pytest.mark.integration
Client = TestClient[web.Request, web.Application]
PAGES = ("home", "/pricing", "docs/a b", "=cmd")
Uniques = Callable[[set[str]], Awaitable[int]]  # the visitors -> the number to expect


@dataclass(frozen=True)
class Sent:
    page_id: str
    user_id: str
    ts: int


def recount(events: list[Sent], start: int | None = None, end: int | None = None,
            page: str | None = None) -> tuple[int, int]:
    """(views, exact unique visitors) of the events in [start, end), optionally one page."""
    chosen = [e for e in events
              if (start is None or e.ts >= start) and (end is None or e.ts < end)
              and (page is None or e.page_id == page)]
    return len(chosen), len({e.user_id for e in chosen})


def visitors(events: list[Sent], start: int | None = None, end: int | None = None,
             page: str | None = None) -> set[str]:
    return {e.user_id for e in events
            if (start is None or e.ts >= start) and (end is None or e.ts < end)
            and (page is None or e.page_id == page)}


def pages_of(events: list[Sent], start: int | None = None, end: int | None = None
             ) -> dict[str, tuple[int, int]]:
    return {p: recount(events, start, end, p) for p in {e.page_id for e in events}
            if recount(events, start, end, p)[0]}


def hll_of(redis: Redis, site_id: str) -> Uniques:
    """What Redis must answer for these visitors: a HyperLogLog of exactly them."""
    async def estimate(users: set[str]) -> int:
        return await hll_estimate(redis, site_id, users)
    return estimate


def settings_for(stack: Stack, mongo_db: str, redis_url: str | None = None) -> QuerySettings:
    env = {**stack.env(), "MONGO_DB": mongo_db}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return QuerySettings(backends=Backends.from_env(env), auth_disabled=True)


async def start_client(settings: QuerySettings) -> Client:
    client: Client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    return client


@pytest.fixture
async def mongo_db(stack: Stack) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    """A private MongoDB database for the fallback's answers.

    FerretDB uses no index for queries: every aggregation scans the whole collection, and
    the stack's shared ``pageviews.events`` holds whatever benchmarks and other tests wrote
    (gigabytes on a busy machine). The test writes the very events it sent through the
    gateway, in the aggregator's document shape, to a database of its own, and points the
    API's ``MONGO_DB`` at it: the same queries on the same server, without the shared scan.
    """
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_url)
    db = client[f"qtest_{uuid.uuid4().hex[:12]}"]
    try:
        yield db
        await drop_database(client, db.name)  # retried: FerretDB can refuse with a deadlock
    finally:
        await client.close()


@pytest.fixture
async def api(stack: Stack, mongo_db: AsyncDatabase[dict[str, Any]]) -> AsyncIterator[Client]:
    client = await start_client(settings_for(stack, mongo_db.name))
    yield client
    await client.close()


@pytest.fixture
async def mongo_only_api(stack: Stack, mongo_db: AsyncDatabase[dict[str, Any]]
                         ) -> AsyncIterator[Client]:
    """The API with a Redis that refuses connections: what it does when Redis is down."""
    client = await start_client(settings_for(stack, mongo_db.name, "redis://127.0.0.1:1/0"))
    yield client
    await client.close()


@dataclass(frozen=True)
class Scenario:
    site_id: str
    events: list[Sent]
    hour0: int  # start of the first recent hour with events
    old_hour: int  # an hour three days back: its minute buckets are past retention


async def send(http: aiohttp.ClientSession, stack: Stack, site_id: str,
               events: list[Sent]) -> list[PageView]:
    body: list[dict[str, Any]] = [
        {"site_id": site_id, "page_id": e.page_id, "user_id": e.user_id,
         "event_id": str(uuid.uuid4()), "ts": e.ts} for e in events]
    async with http.post(f"{stack.http_url}/events", json=body) as response:
        assert response.status == 202, await response.text()
    now = int(time.time() * 1000)
    return [PageView(b["event_id"], site_id, b["page_id"], b["user_id"], b["ts"], now)
            for b in body]


@pytest.fixture
async def scenario(stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
                   mongo_db: AsyncDatabase[dict[str, Any]]) -> Scenario:
    now = int(time.time() * 1000)
    hour0 = now // HOUR_MS * HOUR_MS - 5 * HOUR_MS
    old_hour = now // HOUR_MS * HOUR_MS - 3 * DAY_MS
    events: list[Sent] = []
    for i in range(120):  # three recent hours, four pages, 15 users, uneven spread
        hour = i % 3
        ts = hour0 + hour * HOUR_MS + (i * 7 % 60) * MINUTE_MS + i * 13
        events.append(Sent(PAGES[(i + i // 7) % 4 if i % 5 else 0], f"user-{i * 7 % 17}", ts))
    for i in range(20):  # three days back, within the gateway's late window
        events.append(Sent(PAGES[i % 3], f"old-{i % 6}", old_hour + (i * 3) * MINUTE_MS + i))
    views = await send(http, stack, site_id, events)
    await mongo_db[EVENTS].insert_many(
        [event_document(v, partition=0, offset=i) for i, v in enumerate(views)])

    async def counted() -> bool:
        return int(await redis.get(SiteKeys(site_id).key(VIEWS, ALL_TIME)) or 0) == len(events)

    await eventually(counted, timeout_s=60, interval_s=0.2, message="events counted in Redis")
    return Scenario(site_id, events, hour0, old_hour)


async def get(client: Client, path: str, **query: str) -> tuple[dict[str, Any], str]:
    response = await client.get(path, params=query)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body, response.headers["X-Stats-Source"]


async def assert_pages(got: list[dict[str, Any]], events: list[Sent], start: int | None,
                       end: int | None, uniques: Uniques | None) -> None:
    """Views exactly; visitors exactly (``uniques`` None, MongoDB) or as ``uniques`` says."""
    expected = pages_of(events, start, end)
    assert {p["page_id"]: p["views"] for p in got} == {p: v for p, (v, _) in expected.items()}
    for p in got:
        users = visitors(events, start, end, p["page_id"])
        want = len(users) if uniques is None else await uniques(users)
        assert p["unique_visitors"] == want, p
    views = [p["views"] for p in got]
    assert views == sorted(views, reverse=True)


@pytest.mark.smoke
async def test_stats_over_all_time_and_hour_ranges_match_a_recount_from_redis(
        api: Client, scenario: Scenario, redis: Redis) -> None:
    s = scenario
    hll = hll_of(redis, s.site_id)
    body, source = await get(api, "/stats", site_id=s.site_id)
    assert source == "redis"
    views, _ = recount(s.events)
    assert (body["total_views"], body["total_pages"]) == (views, len(pages_of(s.events)))
    assert body["unique_visitors"] == await hll(visitors(s.events))
    await assert_pages(body["pages"], s.events, None, None, hll)

    start, end = s.hour0, s.hour0 + 2 * HOUR_MS
    body, source = await get(api, "/stats", site_id=s.site_id, **{
        "from": iso_z(start), "to": iso_z(end)})
    assert source == "redis"
    assert (body["from"], body["to"]) == (iso_z(start), iso_z(end))
    assert body["total_views"] == recount(s.events, start, end)[0]
    assert body["unique_visitors"] == await hll(visitors(s.events, start, end))
    await assert_pages(body["pages"], s.events, start, end, hll)

    for page in PAGES:  # all time, one page: the running per-page totals
        body, source = await get(api, "/stats", site_id=s.site_id, page_id=page)
        views, _ = recount(s.events, page=page)
        assert source == "redis" and (body["total_views"], body["total_pages"]) == (views, 1)
        assert body["pages"][0]["unique_visitors"] == await hll(visitors(s.events, page=page))

    body, _ = await get(api, "/stats", site_id=s.site_id, limit="2", offset="1")
    ordered = sorted(pages_of(s.events).items(), key=lambda kv: (-kv[1][0], kv[0]))
    assert [p["page_id"] for p in body["pages"]] == [p for p, _ in ordered[1:3]]


def ms_of(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


async def test_named_periods_match_a_recount_over_the_range_they_report(
        api: Client, scenario: Scenario, redis: Redis) -> None:
    s = scenario
    hll = hll_of(redis, s.site_id)
    for period in ("today", "24h", "7d", "30d", "month"):
        body, source = await get(api, "/stats", site_id=s.site_id, period=period)
        start, end = ms_of(body["from"]), ms_of(body["to"])
        assert source == "redis", period
        assert body["total_views"] == recount(s.events, start, end)[0], period
        assert body["unique_visitors"] == await hll(visitors(s.events, start, end)), period
        await assert_pages(body["pages"], s.events, start, end, hll)


async def test_answers_follow_the_sites_generation_pointer(
        api: Client, scenario: Scenario, redis: Redis) -> None:
    keys = SiteKeys(scenario.site_id)
    await redis.set(keys.generation_pointer(), "rebuild-1", ex=60)
    try:
        body, source = await get(api, "/stats", site_id=scenario.site_id)
        assert source == "redis" and body["total_views"] == 0  # nothing in that generation
    finally:
        await redis.delete(keys.generation_pointer())

    async def back() -> bool:  # an answer may be reused for QUERY_ANSWER_CACHE_MS (20 ms)
        body, _ = await get(api, "/stats", site_id=scenario.site_id)
        return bool(body["total_views"] == len(scenario.events))

    await eventually(back, timeout_s=5, message="answers from the default generation again")


@pytest.mark.smoke
async def test_minute_precise_ranges_match_a_recount_from_redis(
        api: Client, scenario: Scenario, redis: Redis) -> None:
    s = scenario
    hll = hll_of(redis, s.site_id)
    start, end = s.hour0 + 10 * MINUTE_MS, s.hour0 + HOUR_MS + 25 * MINUTE_MS
    body, source = await get(api, "/stats", site_id=s.site_id, **{
        "from": iso_z(start), "to": iso_z(end)})
    assert source == "redis"  # minute buckets, per-page visitors included
    assert body["total_views"] == recount(s.events, start, end)[0]
    assert body["unique_visitors"] == await hll(visitors(s.events, start, end))
    await assert_pages(body["pages"], s.events, start, end, hll)
    series, source = await get(api, "/stats/timeseries", site_id=s.site_id, interval="minute",
                               **{"from": iso_z(start), "to": iso_z(end)})
    assert source == "redis"
    assert len(series["buckets"]) == (end - start) // MINUTE_MS
    for bucket in series["buckets"]:
        b = ms_of(bucket["bucket"])
        assert bucket["views"] == recount(s.events, b, b + MINUTE_MS)[0]
        assert bucket["unique_visitors"] == await hll(visitors(s.events, b, b + MINUTE_MS))


@pytest.mark.smoke
async def test_page_timeseries_top_and_compare_match_a_recount(
        api: Client, scenario: Scenario, redis: Redis) -> None:
    s = scenario
    hll = hll_of(redis, s.site_id)
    start, end = s.hour0, s.hour0 + 3 * HOUR_MS
    window = {"from": iso_z(start), "to": iso_z(end)}
    for page in PAGES:
        body, source = await get(api, f"/stats/pages/{page}", site_id=s.site_id, **window)
        views, _ = recount(s.events, start, end, page)
        assert source == "redis" and body["page_id"] == page and body["views"] == views
        assert body["unique_visitors"] == await hll(visitors(s.events, start, end, page))

    body, source = await get(api, "/stats/timeseries", site_id=s.site_id, interval="hour",
                             **window)
    assert source == "redis"
    assert [b["bucket"] for b in body["buckets"]] == [iso_z(start + i * HOUR_MS)
                                                      for i in range(3)]
    for i, bucket in enumerate(body["buckets"]):
        hour = (start + i * HOUR_MS, start + (i + 1) * HOUR_MS)
        assert bucket["views"] == recount(s.events, *hour)[0]
        assert bucket["unique_visitors"] == await hll(visitors(s.events, *hour))

    for by in ("views", "unique_visitors"):
        body, _ = await get(api, "/stats/top", site_id=s.site_id, by=by, limit="3", **window)
        pages = pages_of(s.events, start, end)
        assert len(body["pages"]) == 3 and body["pages"][0]["rank"] == 1
        if by == "views":
            best = max(v for v, _ in pages.values())
        else:
            best = max([await hll(visitors(s.events, start, end, p)) for p in pages])
        assert body["pages"][0][by] == best

    current = {"from": iso_z(start + HOUR_MS), "to": iso_z(start + 2 * HOUR_MS)}
    body, _ = await get(api, "/stats/compare", site_id=s.site_id, **current)
    now_views = recount(s.events, start + HOUR_MS, start + 2 * HOUR_MS)[0]
    before_views = recount(s.events, start, start + HOUR_MS)[0]
    assert (body["total_views"], body["previous"]["total_views"]) == (now_views, before_views)
    assert body["previous"]["from"] == iso_z(start)
    assert body["change"]["total_views"]["absolute"] == now_views - before_views
    stats, _ = await get(api, "/stats", site_id=s.site_id, compare="previous_period",
                         **current)
    assert stats["previous"] == body["previous"] and stats["change"] == body["change"]


async def test_ranges_past_redis_retention_are_answered_exactly_from_mongo(
        api: Client, scenario: Scenario) -> None:
    s = scenario
    start, end = s.old_hour, s.old_hour + HOUR_MS - 2 * MINUTE_MS  # needs minute buckets
    window = {"from": iso_z(start), "to": iso_z(end)}
    body, source = await get(api, "/stats", site_id=s.site_id, **window)
    assert source == "mongo"
    assert (body["total_views"], body["unique_visitors"]) == recount(s.events, start, end)
    await assert_pages(body["pages"], s.events, start, end, None)
    series, source = await get(api, "/stats/timeseries", site_id=s.site_id,
                               interval="minute", **window)
    assert source == "mongo"
    assert sum(b["views"] for b in series["buckets"]) == recount(s.events, start, end)[0]
    # The whole hour is still in Redis (hour buckets live 90 days).
    hour = {"from": iso_z(s.old_hour), "to": iso_z(s.old_hour + HOUR_MS)}
    body, source = await get(api, "/stats", site_id=s.site_id, **hour)
    assert source == "redis"
    assert body["total_views"] == recount(s.events, s.old_hour, s.old_hour + HOUR_MS)[0]


async def test_with_redis_down_every_endpoint_answers_from_mongo_with_exact_numbers(
        mongo_only_api: Client, scenario: Scenario) -> None:
    s, api = scenario, mongo_only_api
    body, source = await get(api, "/stats", site_id=s.site_id)
    assert source == "mongo"
    assert (body["total_views"], body["unique_visitors"]) == recount(s.events)
    await assert_pages(body["pages"], s.events, None, None, None)
    start, end = s.hour0, s.hour0 + 3 * HOUR_MS
    window = {"from": iso_z(start), "to": iso_z(end)}
    body, source = await get(api, "/stats/pages/home", site_id=s.site_id, **window)
    assert source == "mongo"
    assert (body["views"], body["unique_visitors"]) == recount(s.events, start, end, "home")
    body, source = await get(api, "/stats/timeseries", site_id=s.site_id, interval="hour",
                             page_id="/pricing", **window)
    assert source == "mongo"
    assert [(b["views"], b["unique_visitors"]) for b in body["buckets"]] == [
        recount(s.events, start + i * HOUR_MS, start + (i + 1) * HOUR_MS, "/pricing")
        for i in range(3)]
    body, source = await get(api, "/stats/top", site_id=s.site_id, by="unique_visitors",
                             **window)
    expected = pages_of(s.events, start, end)
    assert [(p["page_id"], p["views"], p["unique_visitors"]) for p in body["pages"]] == sorted(
        ((p, v, u) for p, (v, u) in expected.items()), key=lambda t: (-t[2], -t[1], t[0]))


async def test_realtime_counts_a_view_sent_just_now(
        api: Client, stack: Stack, site_id: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{stack.http_url}/track", json={
            "site_id": site_id, "page_id": "home", "user_id": "live-user"}) as response:
        assert response.status == 202, await response.text()

    async def live() -> dict[str, Any] | None:
        body, source = await get(api, "/stats/realtime", site_id=site_id)
        assert source == "redis"
        return body if body["views_last_5_minutes"] == 1 else None

    body = await eventually(live, timeout_s=30, message="the live view in /stats/realtime")
    assert body is not None and body["visitors_last_5_minutes"] == 1


async def test_csv_parses_to_the_same_numbers_as_json(api: Client, scenario: Scenario
                                                      ) -> None:
    s = scenario
    body, _ = await get(api, "/stats", site_id=s.site_id)
    response = await api.get("/stats", params={"site_id": s.site_id},
                             headers={"Accept": "text/csv"})
    assert response.status == 200 and response.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    as_json = {p["page_id"]: (p["views"], p["unique_visitors"]) for p in body["pages"]}
    as_csv = {r["page_id"].removeprefix("'"): (int(r["views"]), int(r["unique_visitors"]))
              for r in rows}
    assert as_csv == as_json


async def test_visitors_of_twenty_megabytes_of_page_ids_are_asked_in_pieces_under_16_mib(
        mongo_db: AsyncDatabase[dict[str, Any]], site_id: str) -> None:
    """A site with tens of thousands of long page ids: one ``$in`` of them all would be a
    command over MongoDB's 16 MiB limit, which pymongo refuses before sending
    (``DocumentTooLarge``, a 500 if it reached the handler). The fallback asks in pieces."""
    pages = [f"{i:05d}" + "\U0001f600" * 507 for i in range(10_000)]  # 2 KB each, 20 MB
    now = int(time.time() * 1000)
    hour = now // HOUR_MS * HOUR_MS - HOUR_MS
    seen = [pages[0], pages[5_000], pages[-1]]  # in the first, a middle and the last piece
    views = [PageView(str(uuid.uuid4()), site_id, page, f"u{n}", hour + n, now)
             for n, page in enumerate(p for p in seen for _ in range(2))]
    await mongo_db[EVENTS].insert_many(
        [event_document(v, partition=0, offset=i) for i, v in enumerate(views)])
    reader = MongoReader(mongo_db[EVENTS])
    uniques = await reader.page_uniques(site_id, TimeRange(hour, hour + HOUR_MS), pages)
    assert {p: n for p, n in uniques.items() if n} == {p: 2 for p in seen}
    assert len(uniques) == len(pages)


async def test_a_ten_year_range_with_a_big_limit_is_refused_at_once(
        api: Client, scenario: Scenario) -> None:
    s = scenario
    end = (int(time.time() * 1000) // DAY_MS + 1) * DAY_MS  # tomorrow, UTC
    ten_years = {"from": iso_z(end - 3650 * DAY_MS), "to": iso_z(end)}
    for path, query, field in [
            ("/stats", {"limit": "10000"}, "limit"),
            ("/stats/top", {"limit": "10000"}, "limit"),
            ("/stats/top", {"by": "unique_visitors"}, "limit"),  # 10 pages x 3,650 days
            ("/stats/timeseries", {"interval": "minute"}, "interval")]:
        response = await api.get(path, params={"site_id": s.site_id, **ten_years, **query})
        assert response.status == 400, (path, await response.text())
        assert (await response.json())["details"][0]["field"] == field, path
    # Within the bounds the same range is answered, from Redis, with every view.
    body, source = await get(api, "/stats", site_id=s.site_id, limit="5", **ten_years)
    assert source == "redis" and body["total_views"] == len(s.events)


async def test_ranking_more_bucket_entries_than_allowed_is_a_400_naming_the_range(
        stack: Stack, mongo_db: AsyncDatabase[dict[str, Any]], scenario: Scenario) -> None:
    s = scenario  # four pages in each of three hours: twelve (hour, page) entries
    settings = settings_for(stack, mongo_db.name)
    hours = {"from": iso_z(s.hour0), "to": iso_z(s.hour0 + 3 * HOUR_MS)}
    tight = await start_client(replace(settings, max_ranking_entries=11))
    try:
        response = await tight.get("/stats", params={"site_id": s.site_id, **hours})
        assert response.status == 400, await response.text()
        body = await response.json()
        assert body["details"][0]["field"] == "from" and "at most 11" in body["message"]
    finally:
        await tight.close()
    enough = await start_client(replace(settings, max_ranking_entries=12))
    try:
        body, source = await get(enough, "/stats", site_id=s.site_id, **hours)
        assert source == "redis" and body["total_pages"] == 4
    finally:
        await enough.close()


class Valve:
    """A TCP relay to MongoDB that the test can close: what a client sends while it is
    closed waits in the relay, so a query sent then stays unanswered until it opens."""

    def __init__(self, upstream: str) -> None:
        parsed = urlsplit(upstream)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 27017
        self.open = asyncio.Event()
        self.open.set()
        self.listen_port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return f"mongodb://127.0.0.1:{self.listen_port}/"

    async def stop(self) -> None:
        self.open.set()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(self._pump(reader, up_writer, held=True),
                             self._pump(up_reader, writer, held=False),
                             return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    held: bool) -> None:
        while data := await source.read(65536):
            if held:
                await self.open.wait()
            sink.write(data)
            await sink.drain()
        sink.close()


async def test_mongo_answers_beyond_the_cap_get_503_busy_with_retry_after(
        stack: Stack, mongo_db: AsyncDatabase[dict[str, Any]], site_id: str) -> None:
    """One MongoDB answer at a time (MONGO_QUERY_CONCURRENCY=1), 100 ms of queue: while
    one fallback query is held in MongoDB's connection, three more are turned away with a
    503 and Retry-After, and the held one is answered once MongoDB answers again."""
    valve = Valve(stack.mongo_url)
    env = {**stack.env(), "MONGO_DB": mongo_db.name, "MONGO_URL": await valve.start()}
    settings = QuerySettings(backends=Backends.from_env(env), auth_disabled=True,
                             mongo_max_concurrent=1, mongo_queue_ms=100)
    api = await start_client(settings)
    try:
        old = int(time.time() * 1000) // HOUR_MS * HOUR_MS - 3 * DAY_MS  # minutes: MongoDB
        def window(minutes: int) -> dict[str, str]:
            return {"site_id": site_id, "from": iso_z(old + MINUTE_MS),
                    "to": iso_z(old + (1 + minutes) * MINUTE_MS)}
        warm, source = await get(api, "/stats", **window(7))  # connected, server known
        assert source == "mongo"
        valve.open.clear()
        held = asyncio.create_task(api.get("/stats", params=window(1)))
        gate = api.app[DEPS].service.gate
        await eventually(lambda: asyncio.sleep(0, gate.in_use == 1), timeout_s=20,
                         message="the first fallback query holds the only slot")
        refused = await asyncio.gather(*(api.get("/stats", params=window(n))
                                         for n in (2, 3, 4)))
        for response in refused:
            assert response.status == 503, await response.text()
            assert response.headers["Retry-After"] == "2"
            assert (await response.json())["error"] == "busy"
        valve.open.set()
        answered = await held
        assert answered.status == 200, await answered.text()
        assert answered.headers["X-Stats-Source"] == "mongo"
        assert (await answered.json())["total_views"] == 0 == warm["total_views"]
    finally:
        await api.close()
        await valve.stop()
