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
For the capacity model (``bench.capacity``) it also measures what the other two stores grew
by per event: the page-view topic's files on every Kafka broker of the local stack (per
copy), and the events collection's ``collStats`` (documents and indexes).
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from redis.asyncio import Redis

from bench import key_memory
from bench.drain import wait_for_stack
from bench.exact_check import verify
from bench.exactness import Expected
from bench.progress import say
from bench.results import Figure, Run
from bench.settings import ROOT, STACK_ENV, BenchSettings, read_env_file
from bench.sites import register_sites
from bench.stats import Latency
from bench.steady import Batch, BatchMaker, SteadyIngest
from bench.table import render
from contracts.keys import PREFIX
from contracts.mongo import EVENTS
from contracts.topics import Replication

SUITE = "memory"
SITE_PREFIX = "bench-mem-"
SITES, PAGES, VISITORS = 300, 20_000, 100_000
RATE, BATCH = 1_000, 20
GOAL_BYTES_PER_EVENT = 200
SOAK_BYTES_PER_EVENT = 1_500  # Redis growth to make room for: 1,009 B measured, and a margin
USAGE_HEADERS = key_memory.HEADERS
STORE_HEADERS = ("store", "before B", "after B", "growth B", "B/event")
STACK_DATA = ROOT / ".run" / "data"  # the local stack's (infra/stack.py)


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
    maxmemory: int = 0  # 0: no bound


async def footprint(redis: Redis) -> Footprint:
    info = await redis.info("memory")
    return Footprint(int(info["used_memory"]), int(await redis.dbsize()),
                     int(info.get("maxmemory", 0)))


class NoRoom(RuntimeError):
    """Redis's maxmemory would stop the soak midway (the stack runs it with noeviction: the
    aggregators would wait, and the run with them): refused before any event is sent."""


def check_room(before: Footprint, events: int) -> None:
    """Each soak keeps its aggregates (its sites' day and all-time keys never expire), so
    runs add up; the soak grew Redis by about 1 KB an event."""
    need = events * SOAK_BYTES_PER_EVENT
    if before.maxmemory and before.used_memory + need > before.maxmemory:
        raise NoRoom(
            f"Redis holds {before.used_memory:,} B of its maxmemory {before.maxmemory:,} B "
            f"and the soak adds about {need:,} B ({events:,} events): restart it with more "
            "(make down, then REDIS_MAXMEMORY=4gb make up), or raise it for now with "
            "redis-cli CONFIG SET maxmemory")


def growth_per_event(before: Footprint, after: Footprint, events: int
                     ) -> tuple[float | None, float | None]:
    """(bytes, keys) Redis grew by per event counted; None without events."""
    if events <= 0:
        return None, None
    return ((after.used_memory - before.used_memory) / events,
            (after.keys - before.keys) / events)


def broker_dirs(data: Path, brokers: int) -> list[Path]:
    """Each Kafka node's data directory as the local stack lays them out
    (``infra/kafka/kafka_cluster.py``): ``kafka`` for one node, ``kafka-1`` ... for a cluster."""
    if brokers == 1:
        return [data / "kafka"]
    return [data / f"kafka-{i}" for i in range(1, brokers + 1)]


def topic_files(dirs: list[Path], topic: str) -> dict[str, int]:
    """Bytes each file of ``topic``'s partition directories takes on disk, every broker:
    its allocated blocks, as du counts them (Kafka's preallocated indexes are sparse), but
    no more than its length (a file system may allocate ahead of a growing file)."""
    partition = re.compile(rf"{re.escape(topic)}-\d+")
    sizes: dict[str, int] = {}
    for broker in dirs:
        for directory in broker.glob(f"{topic}-*"):
            if not partition.fullmatch(directory.name):
                continue
            for file in directory.iterdir():
                try:
                    stat = file.stat()
                except OSError:  # a segment deleted meanwhile
                    continue
                sizes[str(file)] = min(stat.st_size, stat.st_blocks * 512)
    return sizes


def disk_growth(before: Mapping[str, int], after: Mapping[str, int]) -> int:
    """Bytes written between two listings: each file's growth, a new file whole; a file
    deleted meanwhile (a segment past retention) counts nothing rather than negative."""
    return sum(max(0, size - before.get(name, 0)) for name, size in after.items())


@dataclass(frozen=True)
class Stored:
    """``collStats`` of the events collection (FerretDB gives its table's size as both
    ``size`` and ``storageSize``)."""

    size: int
    storage: int
    indexes: int

    @property
    def total(self) -> int:
        return self.storage + self.indexes


async def stored(s: BenchSettings) -> Stored | None:
    """The events collection's sizes; None when the server does not answer them."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        s.mongo_url, serverSelectionTimeoutMS=5000)
    try:
        stats = await mongo[s.mongo_db].command("collStats", EVENTS)
    except PyMongoError:
        return None
    finally:
        await mongo.close()
    return Stored(int(stats.get("size", 0)), int(stats.get("storageSize", 0)),
                  int(stats.get("totalIndexSize", 0)))


@dataclass(frozen=True)
class OnDisk:
    """The other stores at one moment: the topic's files (every broker, every copy) and
    the events collection (None: not read)."""

    topic: dict[str, int]
    mongo: Stored | None


async def on_disk(s: BenchSettings, dirs: list[Path]) -> OnDisk:
    return OnDisk(topic_files(dirs, s.topic), await stored(s))


def bytes_per_event(grown: float, events: int, copies: int = 1) -> float | None:
    """Bytes a store grew by per event, in one copy of it; None without events."""
    return round(grown / events / copies, 1) if events > 0 and copies > 0 else None


def store_growth(before: OnDisk, after: OnDisk, acknowledged: int, counted: int,
                 copies: int) -> dict[str, Any]:
    """The results' ``kafka`` and ``mongo`` entries (None: not measured): the topic per
    acknowledged event and copy, the collection per event counted."""
    kafka = None
    if after.topic:
        grown = disk_growth(before.topic, after.topic)
        kafka = {"copies": copies, "files": len(after.topic),
                 "before_bytes": sum(before.topic.values()),
                 "after_bytes": sum(after.topic.values()), "growth_bytes": grown,
                 "events": acknowledged,
                 "bytes_per_event": bytes_per_event(grown, acknowledged, copies)}
    mongo = None
    if before.mongo and after.mongo:
        old, new = before.mongo, after.mongo
        mongo = {"before": asdict(old), "after": asdict(new), "events": counted,
                 "before_bytes": old.total, "after_bytes": new.total,
                 "growth_bytes": new.total - old.total,
                 "bytes_per_event": bytes_per_event(new.total - old.total, counted),
                 "data_bytes_per_event": bytes_per_event(new.storage - old.storage, counted),
                 "index_bytes_per_event": bytes_per_event(new.indexes - old.indexes, counted)}
    return {"kafka": kafka, "mongo": mongo}


def store_rows(before: Footprint, after: Footprint, redis_per_event: float | None,
               growth: Mapping[str, Any]) -> list[tuple[str, ...]]:
    def row(name: str, old: float, new: float, grown: float, each: float | None
            ) -> tuple[str, ...]:
        return (name, f"{old:,.0f}", f"{new:,.0f}", f"{grown:,.0f}",
                "-" if each is None else f"{each:,.1f}")

    rows = [row("Redis used_memory", before.used_memory, after.used_memory,
                after.used_memory - before.used_memory, redis_per_event)]
    for store, name, missing in (
            ("kafka", "Kafka topic files (every copy; B/event: one)", "no topic files found"),
            ("mongo", "MongoDB events (data + indexes)", "collStats not answered")):
        if (g := growth[store]) is None:
            rows.append((name, missing, "-", "-", "-"))
        else:
            rows.append(row(name, g["before_bytes"], g["after_bytes"], g["growth_bytes"],
                            g["bytes_per_event"]))
    return rows


async def run_suite(s: BenchSettings, run: Run) -> None:
    soak = Soak.fresh()
    seconds = 30 * s.seconds
    brokers = int(read_env_file(STACK_ENV).get("KAFKA_BROKERS") or 1)
    dirs = broker_dirs(STACK_DATA, brokers)
    redis = Redis.from_url(s.redis_url)
    try:
        check_room(await footprint(redis), int(RATE * seconds))
        say(SUITE, f"registering {len(soak.sites)} sites ({soak.sites[0]} ...)")
        await register_sites(s, *soak.sites, max_pages=soak.pages)
        await wait_for_stack(s, SUITE)
        before, disk_before = await footprint(redis), await on_disk(s, dirs)
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
        after, disk_after = await footprint(redis), await on_disk(s, dirs)
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
    growth = store_growth(disk_before, disk_after, stats.accepted_events, counted,
                          Replication.for_brokers(brokers).replicas)
    print(render(store_rows(before, after, per_event, growth), STORE_HEADERS))
    latency = Latency.of(stats.latencies_ms)
    extra = {"events_counted": counted, "sites": len(soak.sites), "pages": soak.pages,
             "visitors": soak.visitors, "rate": RATE, "seconds": seconds,
             "before": asdict(before), "after": asdict(after),
             "keys_per_event": keys_per_event, "exact": verdict.ok,
             "soak_keys_bytes": sum(usage.bytes.values()),
             "by_aggregate": [dict(zip(USAGE_HEADERS, row, strict=True))
                              for row in usage.rows()],
             **growth, "kafka_topic": s.topic, "kafka_brokers": brokers,
             "mongo_collection": f"{s.mongo_db}.{EVENTS}",
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

