"""``python -m bench fallback``: how fast the query API answers from MongoDB alone.

Issue 14's bound: with 1,000,000 raw events across 1,000 sites, ``/stats`` for one site
answered from MongoDB has p99 < 2 s. The events are seeded straight into a collection of
the benchmark database in the aggregator's document shape (``contracts.mongo``), with its
indexes, and kept for the next run (seeding is the slow part; ``BENCH_FALLBACK_RESEED=1``
starts afresh). An in-process query API whose Redis refuses connections then answers every
request from MongoDB, as it does when Redis is down.

Settings (environment): ``BENCH_FALLBACK_EVENTS`` (1,000,000), ``BENCH_FALLBACK_SITES``
(1,000), ``BENCH_FALLBACK_REQUESTS`` per query shape (40), ``BENCH_FALLBACK_DAYS`` the events
spread over (30), plus ``MONGO_URL`` (or ``.run/stack.env``) as for every suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from bench import table
from bench.events import page_views
from bench.machine import machine
from bench.progress import say
from bench.results import Figure, Limit, Run, save
from bench.settings import BenchSettings
from bench.stats import Latency
from contracts.mongo import EVENT_INDEXES, EVENTS, event_document
from contracts.settings import Backends, QuerySettings
from contracts.timebuckets import DAY_MS, HOUR_MS, iso_z
from query_api.app import create_app

BOUND_S = 2.0  # issue 14: p99 of one site's /stats from MongoDB
SEED_BATCH = 5_000
SEED_WRITERS = 4
REFUSING_REDIS = "redis://127.0.0.1:1/0"  # nothing listens: every answer comes from MongoDB
Client = TestClient[web.Request, web.Application]


@dataclass(frozen=True)
class FallbackSettings:
    events: int = 1_000_000
    sites: int = 1_000
    requests: int = 40
    days: int = 30
    reseed: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str]) -> FallbackSettings:
        return cls(events=int(env.get("BENCH_FALLBACK_EVENTS", cls.events)),
                   sites=int(env.get("BENCH_FALLBACK_SITES", cls.sites)),
                   requests=int(env.get("BENCH_FALLBACK_REQUESTS", cls.requests)),
                   days=int(env.get("BENCH_FALLBACK_DAYS", cls.days)),
                   reseed=env.get("BENCH_FALLBACK_RESEED", "") in ("1", "true", "yes"))

    @property
    def database(self) -> str:
        """One database per data set, so a changed setting never reuses the wrong one."""
        return f"fallback_{self.events}_{self.sites}_{self.days}d"


def site_names(n: int) -> list[str]:
    return [f"fb-site-{i:04d}" for i in range(n)]


async def seed(events: AsyncCollection[dict[str, Any]], f: FallbackSettings) -> float:
    """Insert the events unless a complete earlier seed is there; returns the seconds taken."""
    if not f.reseed and await events.estimated_document_count() == f.events:
        say("fallback", f"reusing {f.events:,} seeded events in {f.database}")
        return 0.0
    await events.drop()
    for name, keys in EVENT_INDEXES:
        await events.create_index(keys, name=name)
    now_ms = int(time.time() * 1000)
    stream = page_views(f.events, site_names(f.sites), now_ms, seed=14,
                        spread_ms=f.days * DAY_MS)
    lock, offset, started = asyncio.Lock(), 0, time.monotonic()

    async def writer() -> None:
        nonlocal offset
        while True:
            async with lock:  # the shared generator and offsets, one batch at a time
                batch = [event_document(e, 0, offset + i)
                         for i, e in zip(range(SEED_BATCH), stream, strict=False)]
                offset += len(batch)
            if not batch:
                return
            await events.insert_many(batch, ordered=False)
            if offset % 100_000 < SEED_BATCH:
                say("fallback", f"seeded {offset:,} of {f.events:,}")

    await asyncio.gather(*(writer() for _ in range(SEED_WRITERS)))
    return time.monotonic() - started


async def timed(client: Client, path: str, params: dict[str, str]) -> float:
    started = time.monotonic()
    async with client.get(path, params=params) as response:
        body = await response.read()
        source = response.headers.get("X-Stats-Source", "")
        if response.status != 200:
            raise RuntimeError(f"{path} {params}: {response.status} {body[:300]!r}")
    if source and source != "mongo":
        raise RuntimeError(f"{path} answered from {source!r}, not MongoDB")
    return (time.monotonic() - started) * 1000


async def measure(client: Client, f: FallbackSettings, now_ms: int
                  ) -> dict[str, list[float]]:
    """Each query shape for ``f.requests`` random sites, one request at a time."""
    rng = random.Random(42)
    last_day = {"from": iso_z(now_ms - DAY_MS), "to": iso_z(now_ms)}
    shapes: dict[str, tuple[str, dict[str, str]]] = {
        "/stats (all time)": ("/stats", {}),
        "/stats (last 24 h)": ("/stats", last_day),
        "/stats/timeseries (24 h, hourly)": ("/stats/timeseries",
                                             {**last_day, "interval": "hour"}),
    }
    samples: dict[str, list[float]] = {name: [] for name in shapes}
    for _ in range(f.requests):
        site = rng.choice(site_names(f.sites))
        for name, (path, params) in shapes.items():
            samples[name].append(await timed(client, path, {"site_id": site, **params}))
    return samples


async def run_fallback(s: BenchSettings, f: FallbackSettings) -> Run:
    run = Run(("fallback",), machine(), {}, {**s.as_json(), "fallback": f.__dict__})
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(s.mongo_url)
    try:
        seconds = await seed(mongo[f.database][EVENTS], f)
        if seconds:
            run.notes.append(f"seeded {f.events:,} events in {seconds:.0f} s "
                             f"({f.events / seconds:,.0f} docs/s, {SEED_WRITERS} writers)")
    finally:
        await mongo.close()
    env = {"MONGO_URL": s.mongo_url, "MONGO_DB": f.database, "REDIS_URL": REFUSING_REDIS,
           "KAFKA_BOOTSTRAP": s.kafka_bootstrap}
    client: Client = TestClient(TestServer(create_app(QuerySettings(
        backends=Backends.from_env(env), auth_disabled=True))))
    await client.start_server()
    try:
        say("fallback", f"{f.requests} requests per query shape, one site each")
        samples = await measure(client, f, int(time.time() * 1000) // HOUR_MS * HOUR_MS)
    finally:
        await client.close()
    run.add_limit(Limit("fallback-bound", BOUND_S * 1000, "ms",
                        "issue 14: p99 of /stats for one site from MongoDB"))
    for name, values in samples.items():
        latency = Latency.of(values)
        run.add(Figure("fallback", name, latency.p99, "ms p99", latency=latency,
                       extra={"events": f.events, "sites": f.sites,
                              "within_bound": latency.p99 < BOUND_S * 1000}))
    return run


def render(data: dict[str, Any]) -> str:
    rows = [(f["name"], table.number(f["latency"]["p50_ms"], 1),
             table.number(f["latency"]["p99_ms"], 1), table.number(f["latency"]["max_ms"], 1),
             "yes" if f["extra"]["within_bound"] else "NO") for f in data["figures"]]
    return table.render(rows, ("from MongoDB", "p50 ms", "p99 ms", "max ms",
                               f"p99 < {BOUND_S:g} s"))


def main() -> int:
    s = BenchSettings.from_env(os.environ)
    f = FallbackSettings.from_env(dict(os.environ))
    run = asyncio.run(run_fallback(s, f))
    path = save(run, s.results_dir)
    data = json.loads(path.read_text())
    print(f"\nResults ({path.name}): {f.events:,} events across {f.sites:,} sites, "
          f"load average before: {run.machine['load_average_before']}\n")
    print(render(data))
    for note in run.notes:
        print(f"- {note}")
    return 0
