"""The live dashboard in headless Chromium, on the real stack.

Debian's ``chromium`` (installed by ``infra/stack.py provision``) is driven by Playwright.
Page views are posted through NGINX's ``/events`` (gateway -> Kafka -> aggregators -> Redis)
and the page, served through NGINX by the stack's query APIs (auth on, as the local stack
runs them: the tab's sessionStorage is given the stack's admin token before the page loads),
must show them, numbers and chart, within seconds. The sign-in is tested with a token for one
site, created in the stack's registry as ``make tokens ARGS="add --sites …"`` does. Every
wait is Playwright's ``expect`` polling up to a deadline; screenshots go to
``test-output/dashboard/``.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from playwright.async_api import Error as PlaywrightError

from query_api.routes import MAX_SITES
from tests.aggregator_harness import produce_events
from tests.stack import ROOT, SitePool, Stack, add_token, eventually

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = ROOT / "test-output" / "dashboard"
TOKEN_KEY = "pageviews.stats-token"  # query_api/static/dashboard.js
LIVE_MS = 15_000  # an accepted view shows within a second; the page polls every 1 s / 3 s
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    # The stack's provisioning installs it, so its absence is a broken setup, not a skip.
    assert os.access(CHROMIUM, os.X_OK), (
        f"no Chromium at {CHROMIUM}: `python3 infra/stack.py provision` (as root) installs "
        "Debian's chromium package")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        await launched.close()


async def signed_in(context: BrowserContext, stack: Stack) -> BrowserContext:
    """The tab already holds the admin token, as after typing it into the prompt."""
    await context.add_init_script(
        f"sessionStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(stack.stats_token)})")
    return context


@pytest.fixture
async def page(browser: Browser, stack: Stack) -> AsyncIterator[Page]:
    context = await signed_in(await browser.new_context(viewport={"width": 1280, "height": 900}),
                              stack)
    opened = await context.new_page()
    yield opened
    await context.close()


async def post_views(http: aiohttp.ClientSession, stack: Stack, site_id: str,
                     views: list[tuple[str, str]]) -> None:
    events = [{"page_id": page_id, "user_id": user, "site_id": site_id}
              for page_id, user in views]
    async with http.post(f"{stack.http_url}/events", json=events) as response:
        assert response.status == 202, await response.text()


async def shows(page: Page, element: str, value: int) -> None:
    """The element shows ``value`` (its ``data-value``) before the deadline."""
    await expect(page.locator(element)).to_have_attribute("data-value", str(value),
                                                         timeout=LIVE_MS)


async def chart_shows(page: Page, total_views: int) -> None:
    await expect(page.locator("#chart svg")).to_have_attribute(
        "data-total-views", str(total_views), timeout=LIVE_MS)


async def screenshot(page: Page, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    await page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f"\n  screenshot: {path.relative_to(ROOT)}")
    return path


def dashboard_served(stack: Stack) -> None:
    """A clear failure when the stack's query APIs predate the dashboard (restart them)."""
    try:
        with urllib.request.urlopen(f"{stack.http_url}/dashboard", timeout=5) as response:
            assert response.status == 200
    except OSError as exc:
        raise AssertionError(
            f"{stack.http_url}/dashboard does not answer ({exc}); the stack's query APIs may "
            "run older code: `python3 infra/stack.py stop query-1` (and query-2), then "
            "`make up`") from exc


@pytest.mark.smoke
async def test_the_dashboard_shows_posted_views_live_in_numbers_chart_and_table(
        stack: Stack, http: aiohttp.ClientSession, site_id: str, page: Page,
        capsys: pytest.CaptureFixture[str]) -> None:
    dashboard_served(stack)
    await page.goto(f"{stack.http_url}/dashboard?site={site_id}&period=24h")
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live",
                                                                 timeout=LIVE_MS)
    await expect(page.locator("#signin")).to_be_hidden()
    await shows(page, "#views", 0)
    await chart_shows(page, 0)
    await expect(page.locator("#top")).to_contain_text("No page views")

    await post_views(http, stack, site_id, [("home", "u1"), ("/pricing", "u1"),
                                            ("home", "u2")])
    await shows(page, "#views", 3)
    await shows(page, "#visitors", 2)
    await shows(page, "#live-visitors", 2)
    await shows(page, "#live-views-5", 3)
    await chart_shows(page, 3)
    await expect(page.locator("#views-change")).to_have_text("new")
    rows = page.locator("#top tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_have_attribute("data-page", "home")
    await expect(rows.nth(1)).to_have_attribute("data-page", "/pricing")

    await post_views(http, stack, site_id, [("docs", "u3"), ("home", "u3")])
    await shows(page, "#live-visitors", 3)
    await shows(page, "#views", 5)
    await chart_shows(page, 5)
    await screenshot(page, "desktop.png", capsys)

    await page.get_by_role("button", name="5 min").click()
    await expect(page).to_have_url(f"{stack.http_url}/dashboard?site={site_id}&period=realtime")
    await shows(page, "#views", 5)
    await expect(page.locator("#chart svg")).to_have_attribute("data-interval", "minute")
    await chart_shows(page, 5)
    await expect(page.locator("#top tr")).to_have_count(3)
    await expect(page.locator("#top-title")).to_contain_text("last 5 minutes")
    await expect(page.locator("#banner")).to_be_hidden()


async def test_sources_and_devices_are_shown_beside_the_top_pages(
        stack: Stack, site_id: str, page: Page, capsys: pytest.CaptureFixture[str]) -> None:
    """Tracker events (written straight to Kafka, as the gateway's tracker formats publish
    them) show in the Sources card and the Devices card, whose tabs switch the dimension."""
    from tests.integration.test_breakdowns import make_events

    dashboard_served(stack)
    await produce_events(stack, stack.topic, make_events(site_id))
    await page.goto(f"{stack.http_url}/dashboard?site={site_id}&period=24h")
    sources = page.locator("#sources tr")
    await expect(sources).to_have_count(2, timeout=LIVE_MS)  # /track's views: in none
    await expect(sources.nth(0)).to_have_attribute("data-value", "Google")
    await expect(page.locator("#sources-title")).to_contain_text("last 24 hours")
    devices = page.locator("#devices tr")
    await expect(devices).to_have_count(2, timeout=LIVE_MS)
    await expect(devices.nth(0)).to_have_attribute("data-value", "Desktop")
    await page.get_by_role("tab", name="Browser").click()
    await expect(page.locator("#devices-head")).to_have_text("Browser")
    await expect(devices.nth(0)).to_have_attribute("data-value", "Chrome", timeout=LIVE_MS)
    await expect(page.get_by_role("tab", name="Browser")).to_have_attribute(
        "aria-selected", "true")
    await screenshot(page, "breakdowns.png", capsys)


async def test_the_site_picker_lists_sites_and_switches_to_the_chosen_one(
        stack: Stack, http: aiohttp.ClientSession, site_id: str, site_pool: SitePool,
        page: Page) -> None:
    dashboard_served(stack)
    await post_views(http, stack, site_id, [("home", "u1"), ("home", "u2")])
    other = site_pool.take()
    await post_views(http, stack, other, [("home", "u9")])

    async def listed() -> dict[str, Any] | None:  # before the page loads its list
        async with http.get(f"{stack.http_url}/stats/sites") as response:
            body: dict[str, Any] = await response.json()
        return body if site_id in body["sites"] or body["total_sites"] > MAX_SITES else None

    known = await eventually(listed, timeout_s=LIVE_MS / 1000, message="the site listed")
    assert known is not None
    await page.goto(f"{stack.http_url}/dashboard?site={other}")
    await shows(page, "#views", 1)
    # The picker lists the first MAX_SITES site ids (sorted) and always the shown one.
    if known["total_sites"] <= MAX_SITES:
        picker = page.locator("#site")
        await expect(picker.locator(f"option[value='{site_id}']")).to_have_count(1,
                                                                                timeout=LIVE_MS)
        await picker.select_option(site_id)
        await expect(page).to_have_url(f"{stack.http_url}/dashboard?site={site_id}&period=24h")
        await shows(page, "#views", 2)
        await shows(page, "#live-visitors", 2)


async def test_live_updates_pause_while_the_tab_is_hidden(
        stack: Stack, http: aiohttp.ClientSession, site_id: str, page: Page) -> None:
    dashboard_served(stack)
    await page.goto(f"{stack.http_url}/dashboard?site={site_id}")
    status = page.locator("#live-status")
    await expect(status).to_have_attribute("data-state", "live", timeout=LIVE_MS)

    await page.evaluate("""() => {
        Object.defineProperty(document, "hidden", {value: true, configurable: true});
        Object.defineProperty(document, "visibilityState", {value: "hidden",
                                                           configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    await expect(status).to_have_attribute("data-state", "paused")
    await post_views(http, stack, site_id, [("home", "u1")])
    with pytest.raises(PlaywrightError):  # nothing is asked for 3 s (1 s polling when shown)
        await page.wait_for_event("request", lambda r: "/stats/" in r.url, timeout=3_000)
    assert (await page.locator("#live-visitors").get_attribute("data-value")) == "0"

    await page.evaluate("""() => {
        delete document.hidden;
        delete document.visibilityState;
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    await expect(status).to_have_attribute("data-state", "live", timeout=LIVE_MS)
    await shows(page, "#live-visitors", 1)


async def test_the_dashboard_is_usable_on_a_phone(
        stack: Stack, http: aiohttp.ClientSession, site_id: str, browser: Browser,
        capsys: pytest.CaptureFixture[str]) -> None:
    dashboard_served(stack)
    await post_views(http, stack, site_id, [("home", "u1"), ("/a/long/page/path?q=1", "u2")])
    context = await signed_in(await browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
        has_touch=True), stack)
    try:
        phone = await context.new_page()
        await phone.goto(f"{stack.http_url}/dashboard?site={site_id}")
        await shows(phone, "#views", 2)
        await chart_shows(phone, 2)
        overflow = await phone.evaluate(
            "() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"
        await screenshot(phone, "phone.png", capsys)
    finally:
        await context.close()


async def test_it_asks_for_the_token_a_wrong_one_shows_an_error_and_a_site_token_works(
        stack: Stack, http: aiohttp.ClientSession, site_id: str, browser: Browser,
        capsys: pytest.CaptureFixture[str]) -> None:
    await post_views(http, stack, site_id, [("home", "u1"), ("home", "u2"), ("faq", "u1")])
    _, token = add_token(stack, [site_id])  # read by the query APIs within seconds
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await context.new_page()
        await page.goto(f"{stack.http_url}/dashboard?site={site_id}")
        signin = page.locator("#signin")
        await expect(signin).to_be_visible()
        await expect(page.locator("#signin-error")).to_be_hidden()

        await page.locator("#token").fill("not-the-token")
        await page.get_by_role("button", name="Show stats").click()
        error = page.locator("#signin-error")
        await expect(error).to_be_visible()
        await expect(error).to_contain_text("not accepted")
        await expect(signin).to_be_visible()
        await screenshot(page, "wrong-token.png", capsys)

        async def accepted() -> bool:  # by every query API (each re-reads tokens every 2 s)
            statuses = []
            for url in stack.query_urls:
                async with http.get(f"{url}/stats/sites",
                                    headers={"Authorization": f"Bearer {token}"}) as response:
                    statuses.append(response.status)
            return statuses == [200] * len(stack.query_urls)
        await eventually(accepted, timeout_s=15, message="the new token accepted")
        await page.locator("#token").fill(token)
        await page.get_by_role("button", name="Show stats").click()
        await expect(signin).to_be_hidden()
        await shows(page, "#views", 3)
        await chart_shows(page, 3)
        stored = await page.evaluate(
            "() => [sessionStorage.length, localStorage.length, document.cookie]")
        assert stored == [1, 0, ""]  # the token is kept for the tab's session only

        await page.reload()  # same session: no prompt
        await shows(page, "#views", 3)
        await expect(signin).to_be_hidden()
    finally:
        await context.close()

    context = await browser.new_context()  # a new session asks again
    try:
        page = await context.new_page()
        await page.goto(f"{stack.http_url}/dashboard?site={site_id}")
        await expect(page.locator("#signin")).to_be_visible()
    finally:
        await context.close()
