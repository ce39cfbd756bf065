"""Issue 17's bot rule end to end, through NGINX and the gateway's Plausible endpoint: a
crawler, a headless browser, a request without a User-Agent and a person's browser are all
acknowledged (202); only the person's page view is counted, the others as filtered bots;
and the tracker's page URL and referrer give its source and UTM breakdowns."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.e2e.test_tracker_ingest import CHROME, plausible_body, stats
from tests.stack import SitePool, Stack, eventually

pytestmark = pytest.mark.e2e

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/156.0.0.0 Safari/537.36")


async def test_only_the_persons_browser_counts_the_bots_are_filtered(
        stack: Stack, site_pool: SitePool) -> None:
    site = site_pool.take()
    # No default headers: each request sends exactly the User-Agent given (or none).
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as plain:
        for ua in (GOOGLEBOT, HEADLESS, None, CHROME):
            headers = {"Content-Type": "text/plain"} | ({} if ua is None else {"User-Agent": ua})
            async with plain.post(f"{stack.http_url}/api/event", headers=headers,
                                  data=plausible_body(site, "/pricing")) as r:
                assert r.status == 202, (ua, await r.text())

    async with aiohttp.ClientSession(headers=stack.auth()) as http:
        async def all_counted() -> bool:
            answer = await stats(http, stack, site)
            return bool(answer["total_views"] + answer["filtered_bots"] == 4)

        await eventually(all_counted, timeout_s=60, interval_s=0.2,
                         message="the four requests counted or filtered")
        answer = await stats(http, stack, site)
        assert (answer["total_views"], answer["unique_visitors"], answer["filtered_bots"]) \
            == (1, 1, 3)

        async def rows(dimension: str) -> list[dict[str, Any]]:
            async with http.get(f"{stack.http_url}/stats/breakdown", params={
                    "site_id": site, "dimension": dimension}) as r:
                assert r.status == 200, await r.text()
                found: list[dict[str, Any]] = (await r.json())["rows"]
                return found

        assert [(r["value"], r["views"]) for r in await rows("source")] == [("Hacker News", 1)]
        assert [(r["value"], r["views"]) for r in await rows("utm_campaign")] == [("dec", 1)]
        assert [(r["value"], r["views"]) for r in await rows("browser")] == [("Chrome", 1)]
