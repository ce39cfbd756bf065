"""Register the sites a benchmark sends events to (the gateways refuse unregistered sites).

Sites are added to the stack's registry (``admin.store``, what ``make sites ARGS="add …"``
does), then the benchmark waits until every gateway serves them: each re-reads the registry
every 2 s, so a gateway that accepts a canary site registered after them has them too. The
canary's one event lands on a site no benchmark reads. Called before a measurement starts;
blocks up to ``WAIT_S``.

Each site gets a page quota (``max_pages``) of ``BENCH_MAX_PAGES``, well above the pages any
benchmark sends (the query seed's large site has 10,000 by default, ``BENCH_SEED_PAGES``
more if asked), so no benchmark's pages are counted under ``(other)``.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import orjson

from admin.store import AdminStore
from bench.settings import BenchSettings
from contracts.tenancy import Site

WAIT_S = 30.0
BENCH_MAX_PAGES = 100_000


async def register_sites(s: BenchSettings, *sites: str, max_pages: int = BENCH_MAX_PAGES
                         ) -> None:
    canary = f"bench-canary-{uuid.uuid4().hex[:8]}"
    store = AdminStore.connect(s.mongo_url, s.mongo_db)
    try:
        for site in sites:
            await store.add_site(Site(site, max(max_pages, BENCH_MAX_PAGES)))
        await store.add_site(Site(canary))
    finally:
        await store.close()
    body = orjson.dumps({"page_id": "/canary", "user_id": "canary", "site_id": canary})
    deadline = time.monotonic() + WAIT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for url in s.gateway_urls or (s.http_url,):
            while True:
                async with http.post(f"{url}/track", data=body,
                                     headers={"Content-Type": "application/json"}) as response:
                    if response.status == 202:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not serve newly registered sites in "
                                       f"{WAIT_S:g} s (last answer {response.status})")
                await asyncio.sleep(0.2)
