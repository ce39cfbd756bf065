"""The per-site ingestion rate limit (issue 15) through NGINX on the private stack: a site
given a low limit with the real CLI (``python -m admin sites set``) gets 429s with
Retry-After once past its burst, a request holding events of it and of another site is
refused whole, exactly the acknowledged events are counted, and another site sending in the
same seconds is not slowed at all.

The limit is per gateway process: with the stack's gateways (NGINX spreads requests over
them) the site may be admitted up to that many bursts plus that many times its rate. The
requests come from 127.0.0.1, which NGINX's own per-address limit exempts, so every 429
here is the gateways'.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from pymongo.asynchronous.collection import AsyncCollection

from tests.e2e.test_hostile_input import assert_error_shape
from tests.stack import SitePool, Stack, admin, eventually, register_sites

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
RATE, BURST = 1, 5  # the limited site's events/s and burst, in each gateway
FLOOD = 60  # single-event requests to the limited site, all at once
MIXED = 10  # then requests of 2 events of the other site and 3 of the limited one


def views(site: str, count: int, tag: str) -> list[dict[str, str]]:
    return [{"page_id": f"/{tag}/{i}", "user_id": f"u{i}", "site_id": site}
            for i in range(count)]


async def post(http: aiohttp.ClientSession, url: str, events: object
               ) -> tuple[int, str | None, Any]:
    async with http.post(url, data=orjson.dumps(events),
                         headers={"Content-Type": "application/json"}) as response:
        return response.status, response.headers.get("Retry-After"), await response.json()


async def total_views(http: aiohttp.ClientSession, stack: Stack, site: str) -> int:
    async with http.get(f"{stack.http_url}/stats", params={"site_id": site}) as response:
        assert response.status == 200, await response.text()
        return int((await response.json())["total_views"])


async def rate_limited_events(http: aiohttp.ClientSession, stack: Stack, site: str) -> float:
    """``site_rate_limited_events_total`` of the site, summed over every gateway."""
    total = 0.0
    for url in stack.gateway_urls:
        async with http.get(f"{url}/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith(f'site_rate_limited_events_total{{site="{site}"}} '):
                    total += float(line.rsplit(" ", 1)[1])
    return total


async def test_a_site_over_its_rate_gets_429s_only_acknowledged_events_count_and_others_pass(
        stack: Stack, http: aiohttp.ClientSession, site_pool: SitePool,
        mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    limited, other = site_pool.take(), site_pool.take()
    changed = admin(stack, "sites", "set", limited, "--max-events-per-s", str(RATE),
                    "--burst", str(BURST))
    assert changed.returncode == 0, changed.stderr
    assert orjson.loads(changed.stdout)["max_events_per_s"] == RATE
    assert admin(stack, "sites", "set", f"{limited}-none", "--burst", "9").returncode == 1
    # Once every gateway serves a site registered after the change, it has the change too.
    await asyncio.to_thread(register_sites, stack, [])

    track, events = f"{stack.http_url}/track", f"{stack.http_url}/events"
    started = time.monotonic()
    flood, unlimited = await asyncio.gather(
        asyncio.gather(*(post(http, track, views(limited, 1, f"f{i}")[0]) for i in range(FLOOD))),
        asyncio.gather(*(post(http, events, views(other, 20, f"o{i}")) for i in range(10))))
    mixed = [await post(http, events, views(other, 2, f"m{i}") + views(limited, 3, f"m{i}"))
             for i in range(MIXED)]
    elapsed = time.monotonic() - started

    assert [status for status, _, _ in unlimited] == [202] * 10  # the other site: never slowed
    refused = [(after, body) for status, after, body in [*flood, *mixed] if status == 429]
    assert {status for status, _, _ in [*flood, *mixed]} <= {202, 429}
    assert len(refused) >= FLOOD - len(stack.gateway_urls) * (BURST + RATE * elapsed) - 1
    for after, body in refused:
        assert after is not None and int(after) >= 1
        assert_error_shape(body)
        assert body["error"] == "site_rate_limited"
        assert [(d["field"], limited in d["reason"]) for d in body["details"]] == [
            ("site_id", True)]  # only the limited site is named, never the other
    assert any(status == 429 for status, _, _ in mixed)  # a mixed request refused whole

    acked_limited = sum(body["accepted"] for status, _, body in flood if status == 202) + \
        sum(3 for status, _, _ in mixed if status == 202)
    acked_other = 10 * 20 + sum(2 for status, _, _ in mixed if status == 202)
    assert acked_limited <= len(stack.gateway_urls) * (BURST + RATE * elapsed) + 3

    async def counted() -> bool:
        return (await total_views(http, stack, limited), await total_views(http, stack, other)
                ) == (acked_limited, acked_other)
    await eventually(counted, timeout_s=60, interval_s=0.2,
                     message=f"{acked_limited} and {acked_other} views counted")
    for site, acked in ((limited, acked_limited), (other, acked_other)):
        assert await mongo_events.count_documents({"site_id": site}) == acked
    refused_events = sum(1 for status, _, _ in flood if status == 429) + \
        sum(3 for status, _, _ in mixed if status == 429)
    assert await rate_limited_events(http, stack, limited) == refused_events
    assert await rate_limited_events(http, stack, other) == 0
