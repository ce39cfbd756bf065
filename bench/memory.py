"""Redis memory per event on issue 18's soak workload, through the running stack.

Why: Redis memory is what bounds how many sites, pages and buckets one shard holds, and a
layout or retention change must be judged by what one more event costs. The workload is the
one the issue measured: 300 sites of 20,000 pages each (pages by a rough power law, as
``bench.events`` draws them), 100,000 visitors, timestamps "now", sent open-loop at 1,000
events/s as ``/events`` batches of 20 (``bench.steady``) for ``30 x BENCH_SECONDS`` seconds
(five minutes at the default 10 s). The sites are new in every run (a run id in their names),
so every key they make is new.

Measured: Redis's ``used_memory`` and key count before, and after every acknowledged event
is counted (the exactly-once check, from ``/stats``), so the growth per event is what the
stack really pays; and ``MEMORY USAGE`` of every key of the soak's sites by aggregate and time
unit (``bench.key_memory``), which says where it goes. Goal: at most 200 bytes an event.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import asdict, dataclass

import orjson
from redis.asyncio import Redis

from bench import key_memory
from bench.drain import wait_for_stack
from bench.exact_check import verify
from bench.exactness import Expected
from bench.progress import say
from bench.results import Figure, Run
from bench.settings import BenchSettings
from bench.sites import register_sites
from bench.stats import Latency
from bench.steady import Batch, BatchMaker, SteadyIngest
from bench.table import render
from contracts.keys import PREFIX

SUITE = "memory"
SITE_PREFIX = "bench-mem-"
SITES, PAGES, VISITORS = 300, 20_000, 100_000
RATE, BATCH = 1_000, 20
GOAL_BYTES_PER_EVENT = 200
USAGE_HEADERS = ("aggregate", "unit", "keys", "bytes", "bytes/key", "share", "bytes/event")


@dataclass(frozen=True)
class Soak:
    """The soak's shape; ``sites`` carry the run's id."""

    sites: tuple[str, ...]
    pages: int = PAGES
    visitors: int = VISITORS

    @classmethod
    def fresh(cls, count: int = SITES) -> Soak:
        run = uuid.uuid4().hex[:6]
        return cls(tuple(f"{SITE_PREFIX}{run}-{i:03d}" for i in range(count)))

    def key_match(self) -> str:
        """A SCAN pattern every Redis key of the soak's sites matches (and no other's)."""
        return f"{PREFIX}:{{{self.sites[0].rsplit('-', 1)[0]}-*"

    def batches(self) -> BatchMaker:
        """Events spread evenly over the sites; a site's page ``floor(pages * r**3)``."""

        def make(rng: random.Random, size: int, now_ms: int) -> Batch:
            events, per_site = [], Counter[str]()
            for _ in range(size):
                site = self.sites[rng.randrange(len(self.sites))]
                per_site[site] += 1
                events.append({
                    "event_id": uuid.UUID(int=rng.getrandbits(128), version=4).hex,
                    "site_id": site, "page_id": f"/page-{int(self.pages * rng.random() ** 3)}",
                    "user_id": f"visitor-{rng.randrange(self.visitors):06d}", "ts": now_ms})
            return orjson.dumps(events), per_site

        return make


@dataclass(frozen=True)
class Footprint:
    """What Redis holds as a whole: ``INFO memory``'s used_memory and the number of keys."""

    used_memory: int
    keys: int


async def footprint(redis: Redis) -> Footprint:
    info = await redis.info("memory")
    return Footprint(int(info["used_memory"]), int(await redis.dbsize()))


def growth_per_event(before: Footprint, after: Footprint, events: int
                     ) -> tuple[float | None, float | None]:
    """(bytes, keys) Redis grew by per event counted; None without events."""
    if events <= 0:
        return None, None
    return ((after.used_memory - before.used_memory) / events,
            (after.keys - before.keys) / events)


async def run_suite(s: BenchSettings, run: Run) -> None:
    soak = Soak.fresh()
    seconds = 30 * s.seconds
    say(SUITE, f"registering {len(soak.sites)} sites ({soak.sites[0]} ...)")
    await register_sites(s, *soak.sites, max_pages=soak.pages)
    await wait_for_stack(s, SUITE)
    redis = Redis.from_url(s.redis_url)
    try:
        before = await footprint(redis)
        say(SUITE, f"before: used_memory {before.used_memory:,} B, {before.keys:,} keys; "
                   f"sending {RATE:,} events/s for {seconds:g}s")
        ingest = SteadyIngest(s.http_url, soak.batches(), RATE, BATCH)
        async with ingest:
            await _progress(ingest, seconds)
        stats = ingest.stats
        say(SUITE, f"sent {stats.sent_events:,}, acknowledged {stats.accepted_events:,}, "
                   f"{stats.errors} failed requests, {stats.missed_batches} missed batches")
        expected = [Expected(site, stats.accepted_by_site[site], stats.failed_by_site[site])
                    for site in soak.sites]
        verdict = await verify(s, run, SUITE, expected, None)
        after = await footprint(redis)
        say(SUITE, "reading MEMORY USAGE of every key of the soak's sites")
        usage = key_memory.Usage()
        await key_memory.measure(redis, list(soak.sites), usage, match=soak.key_match())
    finally:
        await redis.aclose()
    counted = usage.events
    per_event, keys_per_event = growth_per_event(before, after, counted)
    say(SUITE, f"after: used_memory {after.used_memory:,} B, {after.keys:,} keys: "
               f"{per_event or 0:,.0f} B and {keys_per_event or 0:.2f} keys an event "
               f"({counted:,} events counted); the soak's own keys "
               f"{sum(usage.bytes.values()):,} B")
    print(render(usage.rows(), USAGE_HEADERS))
    latency = Latency.of(stats.latencies_ms)
    extra = {"events_counted": counted, "sites": len(soak.sites), "pages": soak.pages,
             "visitors": soak.visitors, "rate": RATE, "seconds": seconds,
             "before": asdict(before), "after": asdict(after),
             "keys_per_event": keys_per_event, "exact": verdict.ok,
             "soak_keys_bytes": sum(usage.bytes.values()),
             "by_aggregate": [dict(zip(USAGE_HEADERS, row, strict=True))
                              for row in usage.rows()],
             "goal": {"max_value": GOAL_BYTES_PER_EVENT,
                      "text": f"<= {GOAL_BYTES_PER_EVENT} B an event (issue 18)"}}
    run.add(Figure(SUITE, "Redis growth per event (soak)",
                   round(per_event, 1) if per_event is not None else float("nan"),
                   "B/event", latency, stats.errors, None, extra))


async def _progress(ingest: SteadyIngest, seconds: float) -> None:
    """Wait ``seconds`` while the load runs, saying how far it got every 10 s."""
    waited = 0.0
    while waited < seconds:
        step = min(10.0, seconds - waited)
        await asyncio.sleep(step)
        waited += step
        say(SUITE, f"{waited:.0f}/{seconds:g}s: {ingest.stats.accepted_events:,} events "
                   "acknowledged")

