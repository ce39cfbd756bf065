"""bench-query: the stats endpoints through NGINX, idle and while ingestion runs.

The data is one site (``bench-query``) seeded once with events whose ids are fixed, so a
second run re-sends them without counting anything twice and every run queries the same
aggregates. Each endpoint is loaded by wrk for ``BENCH_SECONDS``; "busy" repeats that while
a second wrk sends single events to /track as fast as it can.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import aiohttp
import orjson

from bench import wrk
from bench.cpu import busiest
from bench.drain import wait_for_redis_answers, wait_for_stack
from bench.limits import AIOHTTP_VIA_NGINX, NGINX_STATIC
from bench.progress import say
from bench.results import Figure, Run
from bench.settings import BenchSettings

SUITE = "query"
SITE = "bench-query"
SEED_EVENTS = 20_000
SEED_NAMESPACE = uuid.UUID("6a1f0c0e-5c7a-4d43-9d3c-1b1e0b9e7a11")
CONNECTIONS = 32
BUSY_TRACK_CONNECTIONS = 32
ENDPOINTS = {
    "/stats": f"/stats?site_id={SITE}&limit=10",
    "/stats/timeseries": f"/stats/timeseries?site_id={SITE}&period=24h",
    "/stats/top": f"/stats/top?site_id={SITE}&limit=10",
    "/stats/realtime": f"/stats/realtime?site_id={SITE}",
}


def seed_batches(now_ms: int, batch: int = 1000) -> list[bytes]:
    """The seed events as /events bodies: 500 pages, 5,000 visitors, the last 6 hours;
    ids derived from the index, so re-sending them never counts twice."""
    rng = random.Random(11)
    bodies = []
    for start in range(0, SEED_EVENTS, batch):
        events = [{"event_id": str(uuid.uuid5(SEED_NAMESPACE, str(i))), "site_id": SITE,
                   "page_id": f"/docs/{int(500 * rng.random() ** 2)}",
                   "user_id": f"visitor-{rng.randrange(5000)}",
                   "ts": now_ms - rng.randrange(6 * 3600 * 1000)}
                  for i in range(start, start + batch)]
        bodies.append(orjson.dumps(events))
    return bodies


async def _total(http: aiohttp.ClientSession, s: BenchSettings) -> tuple[int, str]:
    async with http.get(f"{s.http_url}/stats?site_id={SITE}&limit=1",
                        headers=s.stats_headers()) as response:
        body = await response.json()
        return int(body.get("total_views", 0)), response.headers.get("X-Stats-Source", "?")


async def seed(s: BenchSettings) -> None:
    async with aiohttp.ClientSession() as http:
        total, _ = await _total(http, s)
        if total >= SEED_EVENTS:
            return
        say(SUITE, f"seeding site {SITE} with {SEED_EVENTS:,} events")
        for body in seed_batches(int(time.time() * 1000)):
            async with http.post(f"{s.http_url}/events", data=body,
                                 headers={"Content-Type": "application/json"}) as response:
                if response.status != 202:
                    raise RuntimeError(f"seeding failed: {response.status} "
                                       f"{await response.text()}")
        deadline = time.monotonic() + s.drain_timeout_s
        while total < SEED_EVENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            total, _ = await _total(http, s)


async def _sources(s: BenchSettings) -> dict[str, str]:
    """Which store answered each endpoint (``X-Stats-Source``): the figures are Redis's."""
    out = {}
    async with aiohttp.ClientSession() as http:
        for name, path in ENDPOINTS.items():
            async with http.get(f"{s.http_url}{path}", headers=s.stats_headers()) as response:
                await response.read()
                out[name] = f"{response.status} {response.headers.get('X-Stats-Source', '?')}"
    return out


async def _measure(s: BenchSettings, run: Run, condition: str, sources: dict[str, str]) -> None:
    for name, path in ENDPOINTS.items():
        say(SUITE, f"GET {name} ({condition}), {CONNECTIONS} connections, {s.seconds:g}s")
        result, cpu = await wrk.run_measured(f"{s.http_url}{path}", "get.lua", CONNECTIONS,
                                             s.seconds, s.wrk_threads, s.stats_headers())
        run.add(Figure(SUITE, f"{name} {condition}", result.rps, "req/s", result.latency,
                       result.errors, AIOHTTP_VIA_NGINX,
                       {"path": path, "connections": CONNECTIONS, "answered": sources[name],
                        "cpu_cores": cpu, "wrk_cpu_cores": result.cpu_cores,
                        "busiest": busiest(cpu),
                        "ratio_to_nginx_204": run.ratio_to(result.rps, NGINX_STATIC)}))
        say(SUITE, f"  {result.rps:,.0f} req/s, p99 {result.latency.p99:.1f} ms, "
                   f"{result.errors} errors; busiest: {busiest(cpu)}")


async def run_suite(s: BenchSettings, run: Run) -> None:
    if not await wait_for_redis_answers(s, SUITE):
        run.notes.append("query: the query API did not answer from Redis; not measured")
        return
    await seed(s)
    sources = await _sources(s)
    await _measure(s, run, "idle", sources)
    busy_s = len(ENDPOINTS) * (s.seconds + 0.5) + 2
    say(SUITE, f"background load: POST /track, {BUSY_TRACK_CONNECTIONS} connections, "
               f"{busy_s:g}s")
    background = asyncio.create_task(wrk.run(f"{s.http_url}/track", "track.lua",
                                             BUSY_TRACK_CONNECTIONS, busy_s, 1))
    try:
        await asyncio.sleep(1)
        await _measure(s, run, "during ingest", sources)
    finally:
        ingest = await background
    run.notes.append(f"query 'during ingest': a wrk on /track ({BUSY_TRACK_CONNECTIONS} "
                     f"connections) ran alongside at {ingest.rps:,.0f} events/s, p99 "
                     f"{ingest.latency.p99:.1f} ms")
    await wait_for_stack(s, SUITE)
