"""bench-aggregator: how fast the aggregator group drains a pre-loaded topic.

For one and then two aggregators: a fresh topic (6 partitions, like the stack's) is filled
with synthetic events for ten fresh sites, then that many ``python -m aggregator`` processes
of our own (own group, own metrics ports, MongoDB database ``BENCH_MONGO_DB``) drain it
into MongoDB and Redis. The rate counts committed records from the first commit to the
last, so process start-up and group joining are left out. The stack's aggregators are not
touched; afterwards the benchmark's Redis keys, topics and database are deleted.

The issue asks for a million events. One aggregator here drains ~2k events/s (MongoDB
insert bound), so a million would take ~8 minutes for one aggregator alone; the default is
4,000 x BENCH_SECONDS events (BENCH_AGGREGATOR_EVENTS=1000000 for the full size).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from bench.cpu import CpuWindow, busiest, stack_groups
from bench.drain import wait_for_stack
from bench.events import page_views
from bench.kafka import BenchTopic, GroupLag, private_topic, produce
from bench.limits import MONGO_INSERT
from bench.procs import Helper, helpers, spare_port, wait_http
from bench.progress import say
from bench.results import Figure, Run
from bench.settings import ROOT, BenchSettings
from contracts.keys import SiteKeys, sites_key

SUITE = "aggregator"
SITES = 10


def _aggregator(s: BenchSettings, topic: BenchTopic, index: int) -> tuple[Helper, str]:
    port = spare_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP": s.kafka_bootstrap, "KAFKA_TOPIC": topic.name,
           "KAFKA_DEAD_LETTER_TOPIC": topic.dead_letters, "AGGREGATOR_GROUP": topic.group,
           "MONGO_URL": s.mongo_url, "MONGO_DB": s.bench_mongo_db, "REDIS_URL": s.redis_url,
           "PORT": str(port), "INSTANCE": f"bench-aggregator-{index}", "LOG_LEVEL": "WARNING"}
    helper = Helper(f"bench-aggregator-{index}", [str(ROOT / ".venv/bin/python"), "-m",
                                                  "aggregator"],
                    ROOT / ".run" / "logs" / "bench" / f"aggregator-{port}.log", env=env,
                    cwd=ROOT)
    return helper, f"http://127.0.0.1:{port}/healthz"


async def _drain(s: BenchSettings, topic: BenchTopic, total: int, started: list[Helper]
                 ) -> tuple[float, float, int]:
    """(events/s from first to last commit, seconds, records drained in that time)."""
    async with GroupLag(s.kafka_bootstrap, topic.name, topic.group) as group:
        deadline = time.monotonic() + s.drain_timeout_s
        first_done, first_at = 0, 0.0
        done, last_report = 0, 0.0
        while done < total and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            done, _ = await group.positions()
            now = time.monotonic()
            if done and not first_at:
                first_done, first_at = done, now
            if now - last_report >= 5:
                say(SUITE, f"  {done:,}/{total:,} committed")
                last_report = now
            if not all(h.running() for h in started):
                raise RuntimeError(f"an aggregator exited: {started[0].tail()}")
        seconds = time.monotonic() - first_at if first_at else 0.0
        return (done - first_done) / seconds if seconds else 0.0, seconds, done - first_done


async def _one(s: BenchSettings, run: Run, aggregators: int, sites: list[str]) -> None:
    count = s.aggregator_event_count()
    async with private_topic(s.kafka_bootstrap, "agg") as topic:
        say(SUITE, f"pre-loading {count:,} events into {topic.name}")
        t0 = time.monotonic()
        await produce(s.kafka_bootstrap, topic.name,
                      page_views(count, sites, int(time.time() * 1000), seed=aggregators))
        preload_s = time.monotonic() - t0
        say(SUITE, f"  {count / preload_s:,.0f} events/s pre-loaded; starting "
                   f"{aggregators} aggregator(s)")
        with helpers() as started:
            urls = []
            for i in range(aggregators):
                helper, url = _aggregator(s, topic, i + 1)
                started.append(helper)
                urls.append(url)
            for helper, url in zip(started, urls, strict=True):
                await wait_http(url, helper=helper)
            window = CpuWindow({**stack_groups(), "bench aggregators":
                                [h.proc.pid for h in started]})
            window.start()
            events_per_s, seconds, drained = await _drain(s, topic, count, started)
            cpu = window.stop()
    say(SUITE, f"  {aggregators} aggregator(s): {events_per_s:,.0f} events/s over "
               f"{seconds:.1f}s; busiest: {busiest(cpu)}")
    run.add(Figure(SUITE, f"drain, {aggregators} aggregator{'s' if aggregators > 1 else ''}",
                   events_per_s, "events/s", None, 0 if drained else 1, MONGO_INSERT,
                   {"events": count, "drained_timed": drained, "seconds": round(seconds, 1),
                    "preload_events_per_s": round(count / preload_s), "sites": SITES,
                    "partitions": topic.partitions, "cpu_cores": cpu,
                    "busiest": busiest(cpu)}))


async def _cleanup(s: BenchSettings, sites: list[str]) -> None:
    redis = Redis.from_url(s.redis_url)
    try:
        for site in sites:
            keys = [k async for k in redis.scan_iter(match=SiteKeys(site).generation_match(),
                                                     count=1000)]
            for start in range(0, len(keys), 1000):
                await redis.delete(*keys[start:start + 1000])
        await redis.srem(sites_key(), *sites)
    finally:
        await redis.aclose()
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(s.mongo_url)
    try:
        await mongo.drop_database(s.bench_mongo_db)
    finally:
        await mongo.close()


async def run_suite(s: BenchSettings, run: Run) -> None:
    await wait_for_stack(s, SUITE)
    run.notes.append(f"aggregator: {s.aggregator_event_count():,} events pre-loaded per run "
                     "(the issue's million would take ~8 min for one aggregator on this "
                     "machine; set BENCH_AGGREGATOR_EVENTS=1000000 for it)")
    used: list[str] = []
    try:
        for aggregators in (1, 2):
            # fresh sites per run: a site's applied offsets would otherwise skip the new
            # topic's records as already counted
            sites = [f"bench-agg-{uuid.uuid4().hex[:8]}-{i}" for i in range(SITES)]
            used += sites
            await _one(s, run, aggregators, sites)
    finally:
        await _cleanup(s, used)
