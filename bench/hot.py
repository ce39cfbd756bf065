"""bench-hot: one hot site split over shards against the same site unsplit, on the cluster.

Every key of a normal site shares one hash slot, so all of its counting lands on one Redis
master however many the cluster has. A hot site (``make sites ARGS="set shop --shards 4"``)
is counted in units of their own slots (``contracts.keys.unit_of``). For one site unsplit
and then split over ``BENCH_HOT_SHARDS`` (default 4): a fresh topic is pre-loaded with
the site's events (stamped with its shard count, as the gateways stamp them), and two
``python -m aggregator`` processes of our own drain it, as ``bench-aggregator`` does. Recorded
per run: the drain rate, the CPU each Redis master used, and what the busiest master would
allow at one full core (the site's Redis ceiling: events/s over that master's cores). The
ratio of the split site's ceiling to the unsplit one's is the scaling the shards buy on this
cluster; the drain rate itself is bound here by the two cores the aggregators share with
everything else. After each drain the exactly-once check compares /stats (total, every page)
and MongoDB with what was produced; then the sites' keys and the bench database are deleted.

Needs a stack on Redis Cluster (``REDIS_CLUSTER=3 make up``); on one Redis every unit lands
on the same server and the suite says so and skips.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from pymongo import AsyncMongoClient
from redis.crc import key_slot

from aggregator.counting.aggregate import aggregate, to_ops
from aggregator.counting.redis_sink import RedisSink
from bench import exact_check
from bench.aggregator import counted_into, drain_rate, start_aggregators
from bench.cpu import PIDS_DIR, CpuWindow, busiest
from bench.drain import wait_for_stack
from bench.events import page_views
from bench.exactness import Expected
from bench.kafka import private_topic, produce
from bench.procs import helpers
from bench.progress import say
from bench.results import Figure, Run
from bench.settings import BenchSettings
from contracts.event import PageView
from contracts.keys import SiteKeys, sites_key, unit_of, units_of
from contracts.mongo import DATABASE
from contracts.redis_client import connect_redis_client
from contracts.settings import Retention
from contracts.tenancy import SITES, Site, site_document

SUITE = "hot"
STEP = 500  # events an apply step of ``_apply_rate`` counts (a batch of one site, roughly)
AGGREGATORS = 2
PAGES = 2_000
USERS = 50_000


def redis_masters() -> dict[str, list[int]]:
    """``redis-1`` ... -> [pid]: each server of the stack on its own."""
    found: dict[str, list[int]] = {}
    for path in sorted(PIDS_DIR.glob("redis*.pid")):
        try:
            found[path.stem] = [int(path.read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            continue
    return found


async def _register(s: BenchSettings, site: str, shards: int) -> None:
    """The site in the registry with its shard count in force at once (the query API reads
    every unit), as ``make sites ARGS="add SITE --shards N"`` leaves it after 10 s."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(s.mongo_url)
    try:
        doc = site_document(Site(site)) | {"shards": shards, "shards_from": shards,
                                           "shards_raised_ms": 0}
        await mongo[DATABASE][SITES].replace_one({"_id": site}, doc, upsert=True)
    finally:
        await mongo.close()


def _stamped(events: Iterator[PageView], shards: int) -> Iterator[PageView]:
    for event in events:
        yield dataclasses.replace(event, shards=shards) if shards > 1 else event


async def _placement(s: BenchSettings, site: str, shards: int) -> dict[str, int]:
    """How many of the site's units each master holds (by port): slots are placed by the
    hash of each unit's tag, so a few units may share a master."""
    redis = connect_redis_client(s.redis_url)
    try:
        ranges: dict[tuple[int, int], Any] = await redis.cluster_slots()  # type: ignore[union-attr,assignment]
    finally:
        await redis.aclose()
    per_master: dict[str, int] = {}
    for unit in units_of(site, shards):
        slot = key_slot(SiteKeys(unit).generation_pointer().encode())
        port = next(str(owner["primary"][1]) for (lo, hi), owner in ranges.items()
                    if lo <= slot <= hi)
        per_master[port] = per_master.get(port, 0) + 1
    return dict(sorted(per_master.items()))


async def _one(s: BenchSettings, run: Run, shards: int, site: str) -> dict[str, float]:
    count = s.aggregator_event_count()
    await _register(s, site, shards)
    placement = await _placement(s, site, shards)
    expected = {site: Expected(site)}
    async with private_topic(s.kafka_bootstrap, "hot") as topic:
        say(SUITE, f"pre-loading {count:,} events of one site, {shards} shard(s)")
        produced = await produce(s.kafka_bootstrap, topic.name, counted_into(_stamped(
            page_views(count, [site], int(time.time() * 1000), seed=shards, pages=PAGES,
                       users=USERS), shards), expected))
        if produced != count:
            raise RuntimeError(f"pre-loaded {produced} events, not {count}")
        with helpers() as started:
            await start_aggregators(s, topic, AGGREGATORS, started)
            masters = redis_masters()
            window = CpuWindow({**masters, "bench aggregators": [h.proc.pid for h in started]})
            window.start()
            events_per_s, seconds, drained = await drain_rate(s, topic, count, started)
            cpu = window.stop()
            verdict = await exact_check.verify(s, run, f"{SUITE} x{shards}",
                                               list(expected.values()), s.bench_mongo_db)
    redis_cpu = {name: cpu.get(name, 0.0) for name in masters}
    top = max(redis_cpu.values(), default=0.0)
    ceiling = events_per_s / top if top else 0.0
    say(SUITE, f"  {shards} shard(s): {events_per_s:,.0f} events/s over {seconds:.1f}s; "
               f"units per master port {placement}; Redis masters {redis_cpu}; "
               f"ceiling {ceiling:,.0f} events/s; busiest: {busiest(cpu)}")
    label = "unsplit" if shards == 1 else f"{shards} shards"
    common = {"events": count, "shards": shards, "aggregators": AGGREGATORS, "pages": PAGES,
              "users": USERS, "seconds": round(seconds, 1), "drained_timed": drained,
              "exactly_once": verdict.ok, "redis_master_cores": redis_cpu,
              "cpu_cores": cpu, "busiest": busiest(cpu), "partitions": topic.partitions,
              "units_per_master_port": placement}
    run.add(Figure(SUITE, f"one site {label}: drain", events_per_s, "events/s", None,
                   0 if drained else 1, extra=common))
    run.add(Figure(SUITE, f"one site {label}: busiest Redis master's ceiling", ceiling,
                   "events/s", extra={**common, "how": "drain rate / that master's cores"}))
    direct = [e for e in _stamped(page_views(count, [f"{site}-direct"], int(time.time() * 1000),
                                             seed=shards, pages=PAGES, users=USERS), shards)]
    applied, masters_cores = await _apply_rate(s, f"{site}-direct", shards, direct)
    direct_placement = await _placement(s, f"{site}-direct", shards)
    say(SUITE, f"  {shards} shard(s): Redis applied {applied:,.0f} events/s straight from "
               f"the apply steps; units per master port {direct_placement}; masters "
               f"{masters_cores}")
    run.add(Figure(SUITE, f"one site {label}: Redis apply rate", applied, "events/s",
                   extra={**common, "redis_master_cores": masters_cores,
                          "units_per_master_port": direct_placement,
                          "how": f"the aggregator's apply steps ({STEP} events each), "
                                 "planned first, units applied concurrently"}))
    return {"rate": events_per_s, "ceiling": ceiling, "top": top, "applied": applied}


async def _apply_rate(s: BenchSettings, site: str, shards: int, events: list[PageView]
                      ) -> tuple[float, dict[str, float]]:
    """The rate Redis itself takes the site's counts at: the aggregator's own apply steps
    (``aggregate``, ``to_ops``, ``RedisSink.apply_ranges``) for ``events``, 500 a step,
    planned first (not timed), then sent with each unit's steps in order and the units'
    at once, as several aggregators would. Returns (events/s, cores of each master)."""
    per_unit: dict[str, list[PageView]] = defaultdict(list)
    for event in events:
        per_unit[unit_of(site, event.page_id, shards)].append(event)
    steps = {unit: [(to_ops(SiteKeys(unit), aggregate(mine[at:at + STEP]), Retention()),
                     {0: (at, at + len(mine[at:at + STEP]) - 1)})
                    for at in range(0, len(mine), STEP)]
             for unit, mine in per_unit.items()}
    redis = connect_redis_client(s.redis_url)
    sink = RedisSink(redis)

    async def apply_unit(unit: str) -> None:
        for ops, ranges in steps[unit]:
            await sink.apply_ranges(ops, ranges, live=False)

    try:
        window = CpuWindow(redis_masters())
        window.start()
        started = time.perf_counter()
        await asyncio.gather(*(apply_unit(unit) for unit in steps))
        seconds = time.perf_counter() - started
        cores = window.stop()
    finally:
        await redis.aclose()
    return len(events) / seconds, cores


async def _cleanup(s: BenchSettings, sites: dict[str, int]) -> None:
    redis = connect_redis_client(s.redis_url)
    try:
        for site, shards in sites.items():
            for unit in units_of(site, shards):
                keys = [k async for k in redis.scan_iter(
                    match=SiteKeys(unit).generation_match(), count=1000)]
                for key in keys:  # one key a command: a cluster client's units differ in slot
                    await redis.delete(key)
                await redis.delete(SiteKeys(unit).generation_pointer())
        await redis.srem(sites_key(), *sites)
    finally:
        await redis.aclose()
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(s.mongo_url)
    try:
        await mongo[DATABASE][SITES].delete_many({"_id": {"$in": list(sites)}})
        await mongo.drop_database(s.bench_mongo_db)
    finally:
        await mongo.close()


async def run_suite(s: BenchSettings, run: Run) -> None:
    await wait_for_stack(s, SUITE)
    masters = redis_masters()
    if len(masters) < 2:
        say(SUITE, "skipped: the stack runs one Redis, where every unit shares the server "
                   "(start it with REDIS_CLUSTER=3 make up)")
        run.notes.append("hot: skipped, the stack is not on Redis Cluster")
        return
    shards = int(os.environ.get("BENCH_HOT_SHARDS", "4"))
    used: dict[str, int] = {}
    found: dict[int, dict[str, float]] = {}
    try:
        for n in (1, shards):
            site = f"bench-hot-{uuid.uuid4().hex[:8]}"
            used[site] = used[f"{site}-direct"] = n
            found[n] = await _one(s, run, n, site)
    finally:
        await _cleanup(s, used)
    one, many = found[1], found[shards]
    if one["ceiling"]:
        ratio = many["ceiling"] / one["ceiling"]
        run.add(Figure(SUITE, f"ceiling, {shards} shards / unsplit", ratio, "x", extra={
            "goal": {"min_value": 1.5, "text": "the split site's Redis ceiling grows with "
                                               "its shards (> 1.5x on 3 masters)"},
            "unsplit": round(one["ceiling"]), "split": round(many["ceiling"]),
            "drain_ratio": round(many["rate"] / one["rate"], 2) if one["rate"] else None,
            "masters": len(masters)}))
        run.add(Figure(SUITE, f"Redis apply rate, {shards} shards / unsplit",
                       many["applied"] / one["applied"], "x", extra={
                           "unsplit": round(one["applied"]), "split": round(many["applied"]),
                           "masters": len(masters), "cores": os.cpu_count()}))
        say(SUITE, f"the split site's Redis ceiling is {ratio:.2f}x the unsplit one's "
                   f"(drain {many['rate']:,.0f} vs {one['rate']:,.0f} events/s; Redis "
                   f"applied {many['applied']:,.0f} vs {one['applied']:,.0f} events/s)")
