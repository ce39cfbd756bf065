"""Plausible's and Umami's tracker bodies through NGINX on the private stack: counted as page
views with the right pages and one cookieless visitor, and the client's address (sent from
127.0.0.77, a loopback address nothing else uses) written nowhere: not in Kafka (topic and
dead letters, keys and values), MongoDB, Redis, nor any log file of the stack (NGINX's
access and error logs included).

The bodies are the ones the real trackers send (research17/PLAN.md, captured from
``@plausible-analytics/tracker`` 0.4.6 and ``@umami/node`` 0.4.0). Only page views are
counted here; custom and engagement events go to a site of their own, since counting them
per name is the aggregation side's part of issue 17.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pymongo import MongoClient
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from contracts.mongo import DATABASE as MONGO_DATABASE
from contracts.tenancy import SITES
from tests.kafka_tools import end_offsets, read_between
from tests.stack import SitePool, Stack, eventually, poll_until, post_status

pytestmark = pytest.mark.e2e
ADDRESS = "127.0.0.77"
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/156.0.0.0 Safari/537.36")
PAGES = ["/", "/pricing", "/docs"]


def plausible_body(site: str, path: str, name: str = "pageview", **extra: Any) -> bytes:
    # The shape @plausible-analytics/tracker 0.4.6 sends (short names, v 36).
    return orjson.dumps({"n": name, "v": 36, "u": f"http://127.0.0.1:9000{path}"
                         "?utm_source=newsletter&utm_medium=email&utm_campaign=dec",
                         "d": site, "r": "https://news.ycombinator.com/", **extra})


def umami_body(website: str, path: str, **extra: Any) -> bytes:
    # @umami/node 0.4.0's track({url, hostname, referrer, title, language, screen}).
    return orjson.dumps({"type": "event", "payload": {
        "website": website, "url": path, "hostname": "shop.example",
        "referrer": "https://news.ycombinator.com/", "title": "Shop", "language": "en-US",
        "screen": "1920x1080", **extra}})


def map_umami_website(stack: Stack, site: str, website: str) -> None:
    """``make sites ARGS="set SITE --umami-website UUID"``, then wait until every gateway
    knows it (an ``identify`` is answered 200 once it does, and publishes nothing)."""
    client: MongoClient[dict[str, Any]] = MongoClient(stack.mongo_url)
    try:
        client[MONGO_DATABASE][SITES].update_one({"_id": site},
                                                 {"$set": {"umami_website": website}})
    finally:
        client.close()
    probe = orjson.dumps({"type": "identify", "payload": {"website": website}})
    for url in stack.gateway_urls:
        poll_until(lambda: post_status(f"{url}/api/send", probe,  # noqa: B023
                                       {"Content-Type": "application/json"}) == 200,
                   timeout_s=30, interval_s=0.1, message=f"{url} knows the Umami website")


async def stats(http: aiohttp.ClientSession, stack: Stack, site: str) -> dict[str, Any]:
    async with http.get(f"{stack.http_url}/stats", params={"site_id": site}) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


@pytest.mark.smoke
async def test_tracker_page_views_count_one_cookieless_visitor_and_the_address_is_nowhere(
        stack: Stack, site_pool: SitePool, http: aiohttp.ClientSession, redis: Redis,
        mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    plausible_site, umami_site, events_site = (site_pool.take() for _ in range(3))
    website = str(uuid.uuid4())
    map_umami_website(stack, umami_site, website)
    marker = uuid.uuid4().hex  # in the User-Agent, which the access log keeps
    user_agent = f"{CHROME} t/{marker}"
    topics = (stack.topic, stack.dead_letter_topic)
    before = {t: await end_offsets(stack.kafka_bootstrap, t) for t in topics}
    logs = stack.directory / "logs"
    # What the stack's logs hold already (a kept stack's logs outlive a run): only what this
    # test makes them write is read.
    log_sizes = {p.name: p.stat().st_size for p in logs.glob("*.log")}

    connector = aiohttp.TCPConnector(local_addr=(ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector, headers={
            "User-Agent": user_agent, "Origin": "http://127.0.0.1:9000"}) as browser:
        async def send(path: str, body: bytes, content_type: str, expected: int) -> None:
            async with browser.post(f"{stack.http_url}{path}", data=body,
                                    headers={"Content-Type": content_type}) as response:
                assert response.status == expected, await response.text()
                assert response.headers["Access-Control-Allow-Origin"] == "*"

        for page in PAGES:
            await send("/api/event", plausible_body(plausible_site, page), "text/plain", 202)
            await send("/api/send", umami_body(website, page), "application/json", 200)
        await send("/api/event", plausible_body(events_site, "/checkout", "Signup",
                                                p={"plan": "pro"}), "text/plain", 202)
        await send("/api/event", plausible_body(events_site, "/pricing", "engagement",
                                                sd=42, e=4800), "text/plain", 202)
        await send("/api/batch", orjson.dumps([orjson.loads(umami_body(website, "/docs"))]),
                   "application/json", 200)

    async def all_counted() -> bool:
        return all([(await stats(http, stack, s))["total_views"] == n
                    for s, n in ((plausible_site, 3), (umami_site, 4))])

    await eventually(all_counted, timeout_s=60, interval_s=0.2, message="tracker views counted")
    for site in (plausible_site, umami_site):
        answer = await stats(http, stack, site)
        assert answer["unique_visitors"] == 1, answer  # one address, one User-Agent, one day
    plausible = await stats(http, stack, plausible_site)
    umami = await stats(http, stack, umami_site)
    assert sorted((p["page_id"], p["views"]) for p in plausible["pages"]) == \
        [("/", 1), ("/docs", 1), ("/pricing", 1)]
    assert sorted((p["page_id"], p["views"]) for p in umami["pages"]) == \
        [("/", 1), ("/docs", 2), ("/pricing", 1)]

    stored = [doc async for doc in mongo_events.find(
        {"site_id": {"$in": [plausible_site, umami_site, events_site]}})]
    assert len(stored) == 3 + 4 + 2
    signup = next(d for d in stored if d.get("name") == "Signup")
    assert (signup["page_id"], signup["props"], signup["via"], signup["user_agent"]) == \
        ("/checkout", {"plan": "pro"}, "plausible", user_agent)
    assert {d["utm_campaign"] for d in stored if d["site_id"] == plausible_site} == {"dec"}
    assert len({d["user_id"] for d in stored if d["site_id"] == plausible_site}) == 1
    for doc in stored:
        assert ADDRESS not in orjson.dumps(doc, default=str).decode(), doc

    for topic in topics:
        for record in await read_between(stack.kafka_bootstrap, before[topic]):
            assert ADDRESS.encode() not in record.value + (record.key or b""), topic

    found_in_redis = [repr(key) for key, values in await every_key_and_value(redis)
                      if any(ADDRESS.encode() in v for v in [key, *values])]
    assert found_in_redis == []

    def written(path: Path) -> bytes:
        with path.open("rb") as log:
            log.seek(log_sizes.get(path.name, 0))
            return log.read()

    async def logged() -> bool:  # NGINX flushes its access log buffer every second
        return marker.encode() in written(logs / "nginx-access.log")

    await eventually(logged, timeout_s=10, interval_s=0.2, message="requests in the access log")
    assert (logs / "nginx-error.log").exists()
    holding = [p.name for p in sorted(logs.glob("*.log")) if ADDRESS.encode() in written(p)]
    assert holding == [], f"{ADDRESS} written to {holding}"


async def every_key_and_value(redis: Redis, chunk: int = 1000
                              ) -> list[tuple[bytes, list[bytes]]]:
    """Every key of the stack's Redis with what it holds (strings, HyperLogLogs included, hash
    fields and values, members), read in pipelines of ``chunk`` keys: the private stack holds
    every test's aggregates by now, hundreds of thousands of keys, and a round trip per key
    took longer than the test's timeout."""
    keys = [key async for key in redis.scan_iter(count=1000)]
    out: list[tuple[bytes, list[bytes]]] = []
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        async with redis.pipeline(transaction=False) as pipe:
            for key in part:
                pipe.type(key)
            kinds = [k.decode() if isinstance(k, bytes) else str(k) for k in await pipe.execute()]
        async with redis.pipeline(transaction=False) as pipe:
            for key, kind in zip(part, kinds, strict=True):
                if kind == "string":
                    pipe.get(key)
                elif kind == "hash":
                    pipe.hgetall(key)
                elif kind == "zset":
                    pipe.zrange(key, 0, -1)
                elif kind == "set":
                    pipe.smembers(key)
                elif kind == "list":
                    pipe.lrange(key, 0, -1)
                else:  # gone since the scan, or a kind the stack does not write
                    pipe.exists(key)
            replies = await pipe.execute()
        for key, reply in zip(part, replies, strict=True):
            if isinstance(reply, dict):
                values = [b for kv in reply.items() for b in kv]
            elif isinstance(reply, (list, set)):
                values = list(reply)
            else:
                values = [reply]
            out.append((key, [v for v in values if isinstance(v, bytes)]))
    return out

