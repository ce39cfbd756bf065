"""The query API through aiohttp's test client, with exact in-memory readers in place of
Redis and MongoDB: routing between them, every endpoint's shape (checked against
/openapi.json), CSV, 400s, 503, auth and the docs page, without servers."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from pymongo.errors import ServerSelectionTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts.aggregates import Dimension
from contracts.ingest_openapi import ingest_paths
from contracts.registry import FixedRegistry
from contracts.settings import QuerySettings
from contracts.tenancy import registry_of, token_document
from contracts.timebuckets import HOUR_MS, MINUTE_MS
from query_api.app import create_app
from query_api.model import RangeTooCostly, Totals
from query_api.openapi import openapi_document
from query_api.ranges import TimeRange
from query_api.routes import ENDPOINT_PARAMS, answer_key
from query_api.sites import FixedSites

Client = TestClient[web.Request, web.Application]
NOW = 1_795_860_000_000 + 17 * MINUTE_MS + 42_500  # 2026-11-28T10:17:42.5Z
HOUR = NOW // HOUR_MS * HOUR_MS
SITE = "shop"
# (page, user, ts): two recent hours, and one view a minute ago.
EVENTS = [("home", "u1", HOUR - 50 * MINUTE_MS), ("home", "u2", HOUR - 40 * MINUTE_MS),
          ("/pricing", "u1", HOUR - 30 * MINUTE_MS), ("home", "u1", HOUR + 2 * MINUTE_MS),
          ("docs", "u3", HOUR + 5 * MINUTE_MS), ("=evil", "u4", NOW - MINUTE_MS)]
# (dimension, value, user, ts) of the breakdowns, and the times of filtered bot requests.
MEMBERS = [("source", "Google", "u1", HOUR - 50 * MINUTE_MS),
           ("source", "Google", "u2", HOUR - 40 * MINUTE_MS),
           ("source", "(direct)", "u1", HOUR - 30 * MINUTE_MS),
           ("source", "=cmd", "u3", HOUR + 5 * MINUTE_MS),
           ("event", "signup", "u1", HOUR + 2 * MINUTE_MS)]
BOTS = [HOUR - 45 * MINUTE_MS, HOUR + 1 * MINUTE_MS, NOW - MINUTE_MS]


class MemoryReader:
    """Counts the events above exactly; can be told to fail like a store that is down."""

    def __init__(self, source: str, error: Exception | None = None) -> None:
        self.source = source
        self.error = error
        self.calls = 0
        self.intact = True

    def _select(self, site_id: str, rng: TimeRange, page: str | None
                ) -> list[tuple[str, str, int]]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return [e for e in EVENTS if site_id == SITE
                and (rng.start_ms is None or e[2] >= rng.start_ms)
                and (rng.end_ms is None or e[2] < rng.end_ms) and page in (None, e[0])]

    async def ping(self) -> bool:
        self._select(SITE, TimeRange(None, None), None)
        return True

    async def complete(self) -> bool:
        return self.intact

    async def totals(self, site_id: str, rng: TimeRange, page_id: str | None) -> Totals:
        chosen = self._select(site_id, rng, page_id)
        return Totals(len(chosen), len({u for _, u, _ in chosen}))

    async def ranked_pages(self, site_id: str, rng: TimeRange, offset: int, limit: int
                           ) -> tuple[int, list[tuple[str, int]]]:
        out: dict[str, int] = {}
        for page, _, _ in self._select(site_id, rng, None):
            out[page] = out.get(page, 0) + 1
        ranked = sorted(out.items(), key=lambda pv: (-pv[1], pv[0]))
        return len(ranked), ranked[offset:offset + limit]

    async def page_uniques(self, site_id: str, rng: TimeRange, pages: list[str]
                           ) -> dict[str, int]:
        return {p: (await self.totals(site_id, rng, p)).unique_visitors for p in pages}

    async def series(self, site_id: str, slots: list[TimeRange], interval: str,
                     page_id: str | None) -> list[Totals]:
        return [await self.totals(site_id, s, page_id) for s in slots]

    def _members(self, site_id: str, rng: TimeRange, dimension: Dimension
                 ) -> list[tuple[str, str]]:
        self._select(site_id, rng, None)  # counts the call, fails like the store
        return [(v, u) for d, v, u, ts in MEMBERS if site_id == SITE and d == dimension.api_name
                and (rng.start_ms is None or ts >= rng.start_ms)
                and (rng.end_ms is None or ts < rng.end_ms)]

    async def breakdown(self, site_id: str, rng: TimeRange, dimension: Dimension,
                        offset: int, limit: int) -> tuple[int, list[tuple[str, int, int]]]:
        chosen = self._members(site_id, rng, dimension)
        out: dict[str, int] = {}
        for value, _ in chosen:
            out[value] = out.get(value, 0) + 1
        ranked = sorted(out.items(), key=lambda vn: (-vn[1], vn[0]))
        return len(ranked), [(v, n, len({u for value, u in chosen if value == v}))
                             for v, n in ranked[offset:offset + limit]]

    async def filtered(self, site_id: str, rng: TimeRange) -> int:
        self._select(site_id, rng, None)
        return sum(1 for ts in BOTS if site_id == SITE
                   and (rng.start_ms is None or ts >= rng.start_ms)
                   and (rng.end_ms is None or ts < rng.end_ms))


Factory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make(aiohttp_client: Factory) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    async def build(redis: MemoryReader | None = None, mongo: MemoryReader | None = None,
                    settings: QuerySettings | None = None,
                    tokens: dict[str, tuple[str, ...] | None] | None = None,
                    sites: FixedSites | None = None) -> Client:
        """``tokens``: token -> the sites it reads (None: an admin token); with tokens,
        auth is on."""
        registry = FixedRegistry(registry_of([], [
            token_document(f"id{i}", token, scope or (), admin=scope is None)
            for i, (token, scope) in enumerate((tokens or {}).items())]))
        app = create_app(settings or QuerySettings(auth_disabled=tokens is None),
                         clock_ms=lambda: NOW,
                         readers=(redis or MemoryReader("redis"), mongo or MemoryReader("mongo")),
                         sites=sites, registry=registry)
        return await aiohttp_client(TestServer(app))
    yield build


@pytest.fixture
async def client(make: Callable[..., Awaitable[Client]]) -> Client:
    return await make()


async def get_json(client: Client, path: str, **query: str) -> tuple[dict[str, Any], str]:
    response = await client.get(path, params={"site_id": SITE, **query})
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body, response.headers["X-Stats-Source"]


# A small JSON Schema check for what openapi.py uses; objects are closed (an undocumented
# key in an answer is a failure, so the document cannot fall behind the code).
DOCUMENT = openapi_document()


def conforms(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    if "$ref" in schema:
        schema = DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds] if kinds else []
    checks = {"string": lambda v: isinstance(v, str), "null": lambda v: v is None,
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
              "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list)}
    assert not kinds or any(checks[k](value) for k in kinds), (where, value, kinds)
    if "enum" in schema:
        assert value in schema["enum"], (where, value)
    if "minimum" in schema and value is not None:
        assert value >= schema["minimum"], where
    if isinstance(value, dict):
        props = schema.get("properties", {})
        assert set(value) <= set(props), (where, set(value) - set(props))
        assert set(schema.get("required", [])) <= set(value), where
        for key, item in value.items():
            conforms(item, props[key], f"{where}.{key}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            conforms(item, schema.get("items", {}), f"{where}[{i}]")


def response_schema(path: str) -> dict[str, Any]:
    content = DOCUMENT["paths"][path]["get"]["responses"]["200"]["content"]
    schema: dict[str, Any] = content["application/json"]["schema"]
    return schema


LAST_2H = {"from": "2026-11-28T09:00:00Z", "to": "2026-11-28T11:00:00Z"}
REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("/stats", "/stats", {}),
    ("/stats", "/stats", {**LAST_2H, "compare": "previous_period"}),
    ("/stats", "/stats", {"page_id": "home", "period": "today"}),
    ("/stats/pages/{page_id}", "/stats/pages/home", LAST_2H),
    ("/stats/timeseries", "/stats/timeseries", {**LAST_2H, "interval": "hour"}),
    ("/stats/top", "/stats/top", {"by": "unique_visitors"}),
    ("/stats/realtime", "/stats/realtime", {}),
    ("/stats/compare", "/stats/compare", {"period": "24h", "page_id": "home"}),
    ("/stats/breakdown", "/stats/breakdown", {"dimension": "source"}),
    ("/stats/breakdown", "/stats/breakdown", {**LAST_2H, "dimension": "event"}),
]


@pytest.mark.parametrize(("spec_path", "path", "query"), REQUESTS)
async def test_every_answer_matches_its_openapi_schema_and_parses_as_csv(
        client: Client, spec_path: str, path: str, query: dict[str, str]) -> None:
    body, _ = await get_json(client, path, **query)
    conforms(body, response_schema(spec_path))
    response = await client.get(path, params={"site_id": SITE, "format": "csv", **query})
    assert response.status == 200 and response.content_type == "text/csv"
    rows = list(csv.reader(io.StringIO(await response.text())))
    assert len(rows[0]) >= 2 and all(len(r) == len(rows[0]) for r in rows)


async def test_stats_pages_are_sorted_and_paged(client: Client) -> None:
    body, source = await get_json(client, "/stats", limit="2", offset="1")
    assert source == "redis"
    assert (body["total_views"], body["unique_visitors"], body["total_pages"]) == (6, 4, 4)
    assert body["pages"] == [{"page_id": "/pricing", "views": 1, "unique_visitors": 1},
                             {"page_id": "=evil", "views": 1, "unique_visitors": 1}]


async def test_a_breakdown_ranks_values_by_views_with_visitors_and_pages(
        client: Client) -> None:
    body, source = await get_json(client, "/stats/breakdown", dimension="source")
    assert source == "redis"
    assert (body["dimension"], body["total_values"]) == ("source", 3)
    assert body["rows"] == [
        {"rank": 1, "value": "Google", "views": 2, "unique_visitors": 2},
        {"rank": 2, "value": "(direct)", "views": 1, "unique_visitors": 1},
        {"rank": 3, "value": "=cmd", "views": 1, "unique_visitors": 1}]
    paged, _ = await get_json(client, "/stats/breakdown", dimension="source", limit="1",
                              offset="1")
    assert paged["rows"] == [{"rank": 2, "value": "(direct)", "views": 1,
                              "unique_visitors": 1}]
    hour, _ = await get_json(client, "/stats/breakdown", dimension="source",
                             **{"from": "2026-11-28T10:00:00Z", "to": "2026-11-28T11:00:00Z"})
    assert [r["value"] for r in hour["rows"]] == ["=cmd"]


async def test_a_breakdown_as_csv_defuses_formulas(client: Client) -> None:
    response = await client.get("/stats/breakdown", params={
        "site_id": SITE, "dimension": "source", "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert [r["value"] for r in rows] == ["Google", "(direct)", "'=cmd"]
    assert rows[0] == {"rank": "1", "value": "Google", "views": "2", "unique_visitors": "2"}


@pytest.mark.parametrize("query", [{}, {"dimension": "referrer"}, {"dimension": "page"}])
async def test_a_breakdown_needs_a_known_dimension(client: Client, query: dict[str, str]
                                                  ) -> None:
    response = await client.get("/stats/breakdown", params={"site_id": SITE, **query})
    assert response.status == 400
    assert (await response.json())["details"][0]["field"] == "dimension"


async def test_stats_shows_the_filtered_bots_of_the_range(client: Client) -> None:
    body, _ = await get_json(client, "/stats")
    assert body["filtered_bots"] == 3
    hour, _ = await get_json(client, "/stats",
                             **{"from": "2026-11-28T10:00:00Z", "to": "2026-11-28T11:00:00Z"})
    assert hour["filtered_bots"] == 2


async def test_page_path_accepts_slashes_and_encoded_slashes(client: Client) -> None:
    for path in ("/stats/pages//pricing", "/stats/pages/%2Fpricing"):
        body, _ = await get_json(client, path)
        assert (body["page_id"], body["views"]) == ("/pricing", 1), path


async def test_minute_precise_ranges_and_pages_are_answered_from_redis(
        make: Callable[..., Awaitable[Client]]) -> None:
    redis, mongo = MemoryReader("redis"), MemoryReader("mongo")
    client = await make(redis, mongo)
    minutes = {"from": "2026-11-28T09:15:00Z", "to": "2026-11-28T10:10:00Z"}
    for path, extra in (("/stats", {}), ("/stats/realtime", {}),
                        ("/stats/compare", {"page_id": "home"})):
        _, source = await get_json(client, path, **({} if path.endswith("realtime")
                                                     else minutes), **extra)
        assert source == "redis", path
    body, source = await get_json(client, "/stats/timeseries", interval="hour", **minutes)
    assert source == "redis"
    assert [(b["bucket"], b["views"]) for b in body["buckets"]] == [
        ("2026-11-28T09:15:00Z", 2), ("2026-11-28T10:00:00Z", 2)]
    assert mongo.calls == 0


async def test_while_redis_is_known_to_have_lost_its_state_mongo_answers(
        make: Callable[..., Awaitable[Client]]) -> None:
    redis, mongo = MemoryReader("redis"), MemoryReader("mongo")
    redis.intact = False
    client = await make(redis, mongo)
    response = await client.get("/stats", params={"site_id": SITE})
    assert response.status == 200 and response.headers["X-Stats-Source"] == "mongo"
    assert redis.calls == 0 and (await response.json())["total_views"] == len(EVENTS)


async def test_ranges_older_than_minute_retention_come_from_mongo(client: Client) -> None:
    _, source = await get_json(client, "/stats/timeseries", interval="minute",
                               **{"from": "2026-11-20T10:00:00Z", "to": "2026-11-20T11:00:00Z"})
    assert source == "mongo"
    _, source = await get_json(client, "/stats/timeseries", interval="hour",
                               **{"from": "2026-11-20T10:00:00Z", "to": "2026-11-20T11:00:00Z"})
    assert source == "redis"


async def test_timeseries_fills_gaps_with_zeros(client: Client) -> None:
    body, _ = await get_json(client, "/stats/timeseries", period="today", interval="hour")
    assert len(body["buckets"]) == 24
    assert sum(b["views"] for b in body["buckets"]) == 6
    assert body["buckets"][9]["views"] == 3 and body["buckets"][11]["views"] == 0
    assert body["buckets"][0] == {"bucket": "2026-11-28T00:00:00Z", "views": 0,
                                  "unique_visitors": 0}


async def test_realtime_counts_the_last_five_minutes(client: Client) -> None:
    body, _ = await get_json(client, "/stats/realtime")
    assert (body["views_last_5_minutes"], body["visitors_last_5_minutes"],
            body["views_last_minute"]) == (1, 1, 0)


async def test_compare_reports_the_previous_range_and_the_change(client: Client) -> None:
    body, _ = await get_json(client, "/stats/compare", **{
        "from": "2026-11-28T10:00:00Z", "to": "2026-11-28T10:30:00Z"})
    assert body["previous"]["from"] == "2026-11-28T09:30:00Z"
    assert (body["total_views"], body["previous"]["total_views"]) == (3, 1)
    assert body["change"]["total_views"] == {"absolute": 2, "percent": 200.0}


async def test_top_by_views_ranks_ties_by_page_id(client: Client) -> None:
    body, _ = await get_json(client, "/stats/top", limit="2")
    assert [(p["rank"], p["page_id"]) for p in body["pages"]] == [(1, "home"), (2, "/pricing")]


async def test_csv_defuses_formulas_and_is_chosen_by_accept(client: Client) -> None:
    response = await client.get("/stats", params={"site_id": SITE},
                                headers={"Accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert response.headers["X-Stats-Source"] == "redis"
    assert {r["page_id"] for r in rows} == {"home", "/pricing", "docs", "'=evil"}


@pytest.mark.parametrize(("path", "query", "name"), [
    ("/stats", {"limit": "10001"}, "limit"),
    ("/stats", {"limit": "x"}, "limit"),
    ("/stats", {"offset": "-3"}, "offset"),
    ("/stats", {"site_id": "bad site"}, "site_id"),
    ("/stats", {"period": "1y"}, "period"),
    ("/stats", {"from": "2026-02-30"}, "from"),
    ("/stats", {"compare": "previous_period"}, "compare"),
    ("/stats", {"compare": "yes", "period": "7d"}, "compare"),
    ("/stats", {"format": "xlsx"}, "format"),
    ("/stats", {"peroid": "7d"}, "peroid"),
    ("/stats", {"page_id": "a\u0000b"}, "page_id"),
    ("/stats/timeseries", {"period": "all"}, "period"),
    ("/stats/timeseries", {"interval": "week"}, "interval"),
    ("/stats/timeseries", {"period": "30d", "interval": "minute"}, "interval"),
    ("/stats/top", {"by": "bounce_rate"}, "by"),
    ("/stats/realtime", {"period": "7d"}, "period"),
    ("/stats/compare", {"period": "all"}, "period"),
    ("/stats/pages/home", {"limit": "5"}, "limit"),
])
async def test_bad_parameters_get_a_400_naming_them(client: Client, path: str,
                                                    query: dict[str, str], name: str) -> None:
    response = await client.get(path, params=query)
    assert response.status == 400
    body = await response.json()
    assert body["error"] == "bad_parameter" and body["details"][0]["field"] == name


async def test_a_request_reading_too_many_page_visitor_counts_is_refused_not_run(
        client: Client, make: Callable[..., Awaitable[Client]]) -> None:
    """pages x buckets is bounded: limit 1,000 over a range of odd minutes (about 30
    buckets) would read 30,000 HyperLogLogs; the same on whole days is answered."""
    odd = {"from": "2026-11-20T10:17:00Z", "to": "2026-11-27T10:13:00Z"}
    response = await client.get("/stats", params={**odd, "limit": "1000"})
    assert response.status == 400
    body = await response.json()
    assert body["details"][0]["field"] == "limit" and "fewer pages" in body["message"]
    whole_days = {"from": "2026-11-20", "to": "2026-11-26"}
    assert (await client.get("/stats", params={**whole_days, "limit": "1000"})).status == 200
    assert (await client.get("/stats/top", params={**odd, "limit": "1000"})).status == 400

    # Ranking by visitors reads every page's: refused when the pages x buckets are too many.
    small = await make(settings=QuerySettings(auth_disabled=True, max_page_buckets=2 * 8))
    by_visitors = {"by": "unique_visitors", "from": "2026-11-21", "to": "2026-11-28",
                   "site_id": SITE, "limit": "1"}  # 4 pages x 8 days
    response = await small.get("/stats/top", params=by_visitors)
    assert response.status == 400 and (await response.json())["details"][0]["field"] == "by"
    enough = await make(settings=QuerySettings(auth_disabled=True, max_page_buckets=4 * 8))
    assert (await enough.get("/stats/top", params=by_visitors)).status == 200


async def test_redis_down_falls_back_to_mongo_and_both_down_is_a_503(
        make: Callable[..., Awaitable[Client]]) -> None:
    client = await make(MemoryReader("redis", RedisConnectionError("refused")))
    body, source = await get_json(client, "/stats")
    assert source == "mongo" and body["total_views"] == 6
    client = await make(MemoryReader("redis", RedisConnectionError("refused")),
                        MemoryReader("mongo", ServerSelectionTimeoutError("down")))
    response = await client.get("/stats")
    assert response.status == 503 and response.headers["Retry-After"]
    body = await response.json()
    assert body["error"] == "unavailable"
    assert body["details"] == [{"index": None, "field": None, "reason": body["message"]}]
    response = await client.get("/readyz")
    assert response.status == 503


class GatedReader(MemoryReader):
    """Holds every whole-site totals question until ``gate`` opens, and counts them: one
    per /stats computation."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.gate = asyncio.Event()
        self.site_totals = 0

    async def totals(self, site_id: str, rng: TimeRange, page_id: str | None) -> Totals:
        if page_id is None:
            self.site_totals += 1
            await self.gate.wait()
        return await super().totals(site_id, rng, page_id)


async def cache_outcomes(client: Client) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    found = re.findall(r'^query_api_answer_cache_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    return {outcome: float(value) for outcome, value in found}


async def test_concurrent_identical_requests_in_any_parameter_order_ask_the_store_once(
        make: Callable[..., Awaitable[Client]]) -> None:
    redis = GatedReader("redis")
    client = await make(redis)
    first = asyncio.create_task(client.get(f"/stats?site_id={SITE}&limit=2&offset=1"))
    second = asyncio.create_task(client.get(f"/stats?offset=1&limit=2&site_id={SITE}"))
    for _ in range(200):  # until the second request has joined the first's computation
        if (await cache_outcomes(client)).get("coalesced") == 1:
            break
        await asyncio.sleep(0.005)
    redis.gate.set()
    responses = await asyncio.gather(first, second)
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200, 200] and bodies[0] == bodies[1]
    assert bodies[0]["total_views"] == 6 and len(bodies[0]["pages"]) == 2
    assert redis.site_totals == 1
    assert await cache_outcomes(client) == {"hit": 0, "coalesced": 1, "miss": 1}


def test_the_answer_key_ignores_parameter_order_but_not_repeated_values_or_format() -> None:
    def key(url: str, fmt: str = "json", method: str = "GET") -> object:
        return answer_key(make_mocked_request(method, url), fmt)

    assert key("/stats?site_id=a&limit=2") == key("/stats?limit=2&site_id=a", method="HEAD")
    assert key("/stats?limit=1&limit=2") != key("/stats?limit=2&limit=1")  # the first counts
    assert key("/stats?limit=2") != key("/stats?limit=2", "csv")
    assert key("/stats") != key("/stats/top")


async def test_a_503_is_not_kept_the_next_request_asks_the_stores_again(
        make: Callable[..., Awaitable[Client]]) -> None:
    redis = MemoryReader("redis", RedisConnectionError("refused"))
    mongo = MemoryReader("mongo", ServerSelectionTimeoutError("down"))
    client = await make(redis, mongo, QuerySettings(auth_disabled=True,
                                                    answer_cache_ms=60_000))
    assert (await client.get("/stats", params={"site_id": SITE})).status == 503
    redis.error = None
    body, source = await get_json(client, "/stats")
    assert source == "redis" and body["total_views"] == 6
    assert (await client.get("/stats", params={"site_id": SITE, "bogus": "1"})).status == 400
    assert await cache_outcomes(client) == {"hit": 0, "coalesced": 0, "miss": 3}
    _, source = await get_json(client, "/stats")  # the kept answer this time
    assert await cache_outcomes(client) == {"hit": 1, "coalesced": 0, "miss": 3}


async def test_stats_need_a_valid_token_but_docs_do_not(
        make: Callable[..., Awaitable[Client]]) -> None:
    client = await make(tokens={"s3cret": None})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                    {"Authorization": "Bearer "}, {"Authorization": "Bearer s3cret-and-more"}):
        response = await client.get("/stats", headers=headers)
        assert response.status == 401 and "Bearer" in response.headers["WWW-Authenticate"]
        assert (await response.json())["details"] == [
            {"index": None, "field": None, "reason": "a valid bearer token is required"}]
    response = await client.get("/stats", headers={"Authorization": "Bearer s3cret"})
    assert response.status == 200
    for path in ("/openapi.json", "/docs", "/healthz"):
        assert (await client.get(path)).status == 200, path


SITE_PATHS = ("/stats", "/stats/compare", "/stats/pages/home", "/stats/timeseries",
              "/stats/top", "/stats/realtime", "/stats/breakdown")


async def test_a_token_for_one_site_gets_403_for_another_on_every_endpoint_that_takes_one(
        make: Callable[..., Awaitable[Client]]) -> None:
    assert set(SITE_PATHS) | {"/stats/sites"} >= {
        p.replace("{page_id}", "home") for p in ENDPOINT_PARAMS}, "a new endpoint: list it"
    client = await make(tokens={"shop-token": ("shop",), "root": None})
    shop = {"Authorization": "Bearer shop-token"}
    for path in SITE_PATHS:
        query = {"interval": "hour", "period": "24h"} if path == "/stats/timeseries" else {}
        query = {"dimension": "source"} if path == "/stats/breakdown" else query
        own = await client.get(path, params={**query, "site_id": "shop"}, headers=shop)
        assert own.status == 200, (path, await own.text())
        for other in ({"site_id": "blog"}, {},  # no site_id: the default site, not granted
                      {"site_id": ["shop", "blog"]}):
            response = await client.get(path, params={**query, **other}, headers=shop)
            assert response.status == 403, (path, other)
            assert (await response.json())["error"] == "forbidden_site"
        admin = await client.get(path, params={**query, "site_id": "blog"},
                                 headers={"Authorization": "Bearer root"})
        assert admin.status == 200, path


async def test_stats_sites_lists_only_the_sites_of_the_token(
        make: Callable[..., Awaitable[Client]]) -> None:
    client = await make(tokens={"two": ("shop", "blog"), "root": None},
                        sites=FixedSites(["shop", "blog", "other", "default"]))
    scoped = await client.get("/stats/sites", headers={"Authorization": "Bearer two"})
    assert await scoped.json() == {"total_sites": 2, "sites": ["blog", "shop"]}
    admin = await client.get("/stats/sites", headers={"Authorization": "Bearer root"})
    assert (await admin.json())["sites"] == ["blog", "default", "other", "shop"]


async def test_a_token_of_bytes_that_are_not_utf8_is_refused_with_401_not_500(
        make: Callable[..., Awaitable[Client]]) -> None:
    client = await make(tokens={"s3cret": None})
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 b"Authorization: Bearer \xff\xfe\x80s3cret\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b'"error":"unauthorized"' in answer


async def test_openapi_describes_every_route_and_exactly_the_accepted_parameters(
        client: Client) -> None:
    served = await (await client.get("/openapi.json")).json()
    assert served == DOCUMENT and served["openapi"].startswith("3.1")
    routes = {r.resource.canonical for r in client.app.router.routes()
              if r.method == "GET" and r.resource is not None}
    routes = {re.sub(r"\{page_id:.*\}", "{page_id}", r) for r in routes}
    assert routes == set(served["paths"]) - set(ingest_paths())  # those: the gateway's
    assert {"/track", "/events"} <= set(served["paths"])
    for path, accepted in ENDPOINT_PARAMS.items():
        listed = {p["name"] for p in served["paths"][path]["get"]["parameters"]
                  if p["in"] == "query"}
        assert listed == accepted, path


async def test_docs_page_lists_every_endpoint_and_loads_nothing_from_elsewhere(
        client: Client) -> None:
    response = await client.get("/docs")
    page = await response.text()
    assert response.content_type == "text/html"
    for path in DOCUMENT["paths"]:
        assert f"<code>{path}</code>" in page
    assert not re.search(r"""(src|href)=["']?https?:""", page)


HOSTILE = ["", " ", "9999-12-30", "8999-12-31T23:59:59Z", "-1", "0", "1", "10001",
           "99999999999999999999", "1e3", "NaN", "\x00",
           "\u00e9", "\U0001f4a5" * 300, "a" * 3000, "%", "../..", "2026-11-28",
           "2026-11-28T10:00:00Z", "2026-11-28T10:00:00+14:00", "2026-11-28T10:00:00",
           "9999-12-31", "9999-12-31T23:59:59Z", "0001-01-01", "1970-01-01", "all", "7d",
           "realtime", "csv", "json", "hour", "minute", "day", "views", "unique_visitors",
           "previous_period", "shop", "home", "0001-01-01T00:00:00+23:59",
           "9999-12-31T23:59:59-23:59"]


async def test_no_parameter_value_gives_a_5xx_and_every_answer_fits_the_schema(
        client: Client) -> None:
    """A schemathesis-like sweep: every endpoint, every parameter (and an unknown one),
    hostile values alone and in random combinations."""
    rng = random.Random(5)
    paths = {"/stats/pages/{page_id}": "/stats/pages/home"}
    for spec_path, accepted in ENDPOINT_PARAMS.items():
        path = paths.get(spec_path, spec_path)
        names = sorted(accepted | {"bogus"})
        queries = [{name: value} for name in names for value in HOSTILE]
        sizes = [rng.randint(2, min(4, len(names))) for _ in range(150)]
        queries += [{n: rng.choice(HOSTILE) for n in rng.sample(names, k)} for k in sizes]
        for query in queries:
            response = await client.get(path, params=query)
            assert response.status in (200, 400), (path, query, await response.text())
            if response.status == 200 and response.content_type == "application/json":
                conforms(await response.json(), response_schema(spec_path))


class HeldReader(MemoryReader):
    """MongoDB whose answers wait until the test lets them go."""

    def __init__(self, expect: int = 1) -> None:
        super().__init__("mongo")
        self.release = asyncio.Event()
        self.waiting = 0
        self.expect = expect
        self.all_waiting = asyncio.Event()  # set once ``expect`` answers are held

    async def totals(self, site_id: str, rng: TimeRange, page_id: str | None) -> Totals:
        self.waiting += 1
        if self.waiting == self.expect:
            self.all_waiting.set()
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
        return await super().totals(site_id, rng, page_id)


async def test_mongo_answers_beyond_the_cap_get_503_busy_with_retry_after(
        make: Callable[..., Awaitable[Client]]) -> None:
    mongo = HeldReader(expect=2)
    client = await make(MemoryReader("redis", RedisConnectionError("refused")), mongo,
                        QuerySettings(auth_disabled=True, mongo_max_concurrent=2,
                                      mongo_queue_ms=50))
    held = [asyncio.create_task(client.get("/stats/pages/home", params={"site_id": SITE,
                                                                        "period": period}))
            for period in ("7d", "30d")]
    async with asyncio.timeout(10):
        await mongo.all_waiting.wait()
    refused = await client.get("/stats/pages/home", params={"site_id": SITE, "period": "24h"})
    assert refused.status == 503 and refused.headers["Retry-After"] == "2"
    assert (await refused.json())["error"] == "busy"
    metrics = await (await client.get("/metrics")).text()
    assert "query_api_mongo_answers_refused_total 1.0" in metrics
    assert "query_api_mongo_answers_in_flight 2.0" in metrics
    mongo.release.set()
    assert [(await t).status for t in held] == [200, 200]
    again = await client.get("/stats/pages/home", params={"site_id": SITE, "period": "24h"})
    assert again.status == 200  # the turns were given back


async def test_an_answer_past_the_request_deadline_is_a_503_before_nginx_gives_up(
        make: Callable[..., Awaitable[Client]]) -> None:
    mongo = HeldReader()  # never released: compare's first range would wait for ever
    client = await make(MemoryReader("redis", RedisConnectionError("refused")), mongo,
                        QuerySettings(auth_disabled=True, request_timeout_ms=100))
    async with asyncio.timeout(10):  # without the deadline: a failure, not a hung test
        response = await client.get("/stats/compare", params={"site_id": SITE, "period": "7d"})
    assert response.status == 503 and response.headers["Retry-After"]
    assert "longer than 0.1 s" in (await response.json())["message"]
    assert mongo.waiting == 0  # the held query was cancelled, not left running


class CostlyReader(MemoryReader):
    async def ranked_pages(self, site_id: str, rng: TimeRange, offset: int, limit: int
                           ) -> tuple[int, list[tuple[str, int]]]:
        raise RangeTooCostly("ranking this range reads 9 entries; at most 1")


@pytest.mark.parametrize(("query", "field"), [({"period": "30d"}, "period"),
                                              ({"from": "2026-01-01", "limit": "1"}, "from")])
async def test_a_range_too_costly_for_a_reader_is_a_400_naming_the_range(
        make: Callable[..., Awaitable[Client]], query: dict[str, str], field: str) -> None:
    client = await make(CostlyReader("redis"))
    response = await client.get("/stats", params={"site_id": SITE, **query})
    assert response.status == 400
    body = await response.json()
    assert body["details"] == [{"field": field,
                                "reason": "ranking this range reads 9 entries; at most 1"}]
