"""The real trackers against the private stack, through NGINX: ``@umami/node`` 0.4.0 run by
Node, and ``@plausible-analytics/tracker`` 0.4.6 in headless Chromium on a three-page site
(module script, cross-origin to NGINX as in production), counted as page views with one
cookieless visitor.

The packages are fetched once, pinned, into ``~/.cache/pageviews/npm/`` with npm (the
registry's ordinary client), and their integrity is checked against the hashes recorded here
(the tarballs research17 read). Skipped when Node or npm is missing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from playwright.async_api import async_playwright
from pymongo.asynchronous.collection import AsyncCollection

from tests.e2e.test_tracker_ingest import map_umami_website, stats
from tests.stack import SitePool, Stack, eventually

pytestmark = pytest.mark.e2e
UMAMI_NODE = "@umami/node@0.4.0"
UMAMI_NODE_INTEGRITY = ("sha512-pyphprbiF7KiDSc+SWZ4/rVM8B5vU27zIiFfEPj2lEqczpI4xAKSp+dM3tlzyR"
                        "AWJL32fcbCfAaLGhJZQV13Rg==")
PLAUSIBLE_TRACKER = "@plausible-analytics/tracker@0.4.6"
PLAUSIBLE_TRACKER_INTEGRITY = ("sha512-nbu6xGgSP6jeYuoVklZBzucUnIpo75tVu3Kr+R0EDycVKaMC/jF5Q/YCa"
                               "M/8gR4fPZ1IDcXt6FdBJFZ1uZwEPA==")
NPM_CACHE = Path.home() / ".cache" / "pageviews" / "npm"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Not HeadlessChrome: that UA is a bot for the aggregation side's filter (research17 finding 2).
CHROME_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/156.0.0.0 Safari/537.36")
PAGES = {"/": "/pricing", "/pricing": "/docs", "/docs": "/"}
# captureOnLocalhost: the page is on 127.0.0.1 and Playwright sets navigator.webdriver, both
# of which the tracker otherwise ignores (research17 finding 1).
PAGE = """<!doctype html><title>{path}</title>
<a id="next" href="{next}">next</a>
<script type="module">
import {{ init }} from "/plausible.js";
init({{ domain: "{site}", endpoint: "{endpoint}", captureOnLocalhost: true }});
</script>"""

# Finding 5 of research17: the README's default import fails on Node; the named export works.
SEND = """
const { Umami } = require(process.env.UMAMI_NODE);
(async () => {
  const site = new Umami();
  site.init({ websiteId: process.env.WEBSITE, hostUrl: process.env.HOST_URL });
  for (const url of ['/home', '/pricing', '/docs']) {
    const response = await site.track({ url, hostname: 'shop.example', title: 'Shop',
      referrer: 'https://news.ycombinator.com/', language: 'en-US', screen: '1920x1080' });
    if (response.status !== 200) throw new Error(`track ${url}: ${response.status}`);
  }
  const events = new Umami();
  events.init({ websiteId: process.env.EVENTS_WEBSITE, hostUrl: process.env.HOST_URL });
  const signup = await events.track('signup', { plan: 'pro' });
  if (signup.status !== 200) throw new Error(`signup: ${signup.status}`);
  const who = await site.identify({ tier: 'gold' });
  if (who.status !== 200) throw new Error(`identify: ${who.status}`);
})().catch((error) => { console.error(error); process.exit(1); });
"""


def plausible_js() -> bytes:
    """``plausible.js`` of the pinned tracker (``npm pack`` on first use)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is needed to fetch @plausible-analytics/tracker")
    folder = NPM_CACHE / "plausible-tracker-0.4.6"
    tarball = folder / "plausible-analytics-tracker-0.4.6.tgz"
    if not tarball.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", "--silent", PLAUSIBLE_TRACKER], cwd=folder, check=True,
                       capture_output=True, timeout=300)
    data = tarball.read_bytes()
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    assert integrity == PLAUSIBLE_TRACKER_INTEGRITY
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/plausible.js")
        assert member is not None
        return member.read()


def umami_node() -> Path:
    """The installed package's directory (installed on first use)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the real @umami/node client")
    prefix = NPM_CACHE / "umami-node-0.4.0"
    package = prefix / "node_modules" / "@umami" / "node"
    if not (package / "package.json").exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                        "--ignore-scripts", UMAMI_NODE], check=True, capture_output=True,
                       timeout=300)
    lock = orjson.loads((prefix / "package-lock.json").read_bytes())
    assert lock["packages"]["node_modules/@umami/node"]["integrity"] == UMAMI_NODE_INTEGRITY
    return package


async def test_umami_node_page_views_are_counted_with_one_visitor(
        stack: Stack, site_pool: SitePool, http: aiohttp.ClientSession,
        mongo_events: AsyncCollection[dict[str, Any]], tmp_path: Path) -> None:
    package = umami_node()
    site, events_site = site_pool.take(), site_pool.take()
    website, events_website = str(uuid.uuid4()), str(uuid.uuid4())
    map_umami_website(stack, site, website)
    map_umami_website(stack, events_site, events_website)
    script = tmp_path / "send.cjs"
    script.write_text(SEND)
    node = await asyncio.create_subprocess_exec(
        "node", str(script), stderr=asyncio.subprocess.PIPE, env={
            "PATH": "/usr/bin:/bin", "UMAMI_NODE": str(package), "WEBSITE": website,
            "EVENTS_WEBSITE": events_website, "HOST_URL": stack.http_url})
    _, errors = await asyncio.wait_for(node.communicate(), 60)
    assert node.returncode == 0, errors.decode()

    async def counted() -> bool:
        return bool((await stats(http, stack, site))["total_views"] == 3)

    await eventually(counted, timeout_s=60, interval_s=0.2, message="@umami/node views counted")
    answer = await stats(http, stack, site)
    assert sorted(p["page_id"] for p in answer["pages"]) == ["/docs", "/home", "/pricing"]
    assert answer["unique_visitors"] == 1  # Node's one address and UA, one day

    async def stored() -> bool:
        return await mongo_events.count_documents({"site_id": events_site}) == 1

    await eventually(stored, timeout_s=60, interval_s=0.2, message="the signup event stored")
    signup = await mongo_events.find_one({"site_id": events_site})
    assert signup is not None
    assert (signup["name"], signup["page_id"], signup["props"], signup["via"]) == \
        ("signup", "/", {"plan": "pro"}, "umami")
    assert signup["user_agent"].startswith("Mozilla/5.0 Umami/v")


async def test_the_plausible_tracker_in_chromium_counts_three_pages_and_one_visitor(
        stack: Stack, site_pool: SitePool, http: aiohttp.ClientSession,
        mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    script = plausible_js()
    site = site_pool.take()
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        path = request.path
        return web.Response(text=PAGE.format(path=path, next=PAGES[path], site=site,
                                             endpoint=f"{stack.http_url}/api/event"),
                            content_type="text/html")

    async def tracker(_: web.Request) -> web.Response:
        return web.Response(body=script, content_type="text/javascript")

    for path in PAGES:
        app.router.add_get(path, page)
    app.router.add_get("/plausible.js", tracker)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    port = runner.addresses[0][1]
    try:
        async with async_playwright() as playwright:
            # The UA for the whole browser, not only new_context's: the tracker's keepalive
            # fetches at page unload (engagement events) go out with the browser's default
            # UA (HeadlessChrome), which would be a second visitor.
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=[f"--user-agent={CHROME_UA}"])
            try:
                context = await browser.new_context(user_agent=CHROME_UA)
                tab = await context.new_page()
                await tab.goto(f"http://127.0.0.1:{port}/",
                               referer="http://news.ycombinator.com/")
                for _ in range(2):
                    async with tab.expect_request_finished(
                            lambda r: r.url.endswith("/api/event")):
                        await tab.click("#next")

                async def three_views() -> bool:
                    return await mongo_events.count_documents(
                        {"site_id": site, "name": {"$exists": False}}) == 3

                await eventually(three_views, timeout_s=60, interval_s=0.2,
                                 message="the three page views stored")
            finally:
                await browser.close()
    finally:
        await runner.cleanup()

    views = [d async for d in mongo_events.find({"site_id": site, "name": {"$exists": False}})]
    assert sorted(d["page_id"] for d in views) == ["/", "/docs", "/pricing"]
    assert len({d["user_id"] for d in views}) == 1
    assert {d["user_agent"] for d in views} == {CHROME_UA}
    base = f"http://127.0.0.1:{port}"  # full page loads: each page's referrer is the last
    assert {d["page_id"]: d.get("referrer") for d in views} == {
        "/": "http://news.ycombinator.com/", "/pricing": f"{base}/", "/docs": f"{base}/pricing"}
    assert {d["host"] for d in views} == {"127.0.0.1"}

    async def counted() -> bool:
        answer = await stats(http, stack, site)
        return {p["page_id"] for p in answer["pages"]} >= {"/", "/docs", "/pricing"}

    await eventually(counted, timeout_s=60, interval_s=0.2, message="the pages in /stats")
    answer = await stats(http, stack, site)
    assert answer["unique_visitors"] == 1
    # Named events (engagement) count apart from page views (issue 17's aggregation side).
    assert answer["total_views"] == 3
    assert answer["filtered_bots"] == 0

    async def breakdown(dimension: str) -> dict[str, int]:
        async with http.get(f"{stack.http_url}/stats/breakdown", params={
                "site_id": site, "dimension": dimension}) as r:
            assert r.status == 200, await r.text()
            return {row["value"]: row["views"] for row in (await r.json())["rows"]}

    # The two later pages were referred by the site itself: not a source.
    assert await breakdown("source") == {"Hacker News": 1}
    assert await breakdown("browser") == {"Chrome": 3}
    assert await breakdown("device") == {"Desktop": 3}
    assert await breakdown("os") == {"Linux": 3}

    async def engagement_counted() -> bool:
        return (await breakdown("event")).get("engagement", 0) >= 1

    await eventually(engagement_counted, timeout_s=30, interval_s=0.2,
                     message="engagement events counted per name")
