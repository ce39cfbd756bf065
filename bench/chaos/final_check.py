"""The final check of a chaos run: wait until the aggregators caught up, read what MongoDB and
Redis hold for the chaos sites, compare (``exact.check``), and look for dead or duplicated
processes of the stack.

Reads only, except for scratch HyperLogLogs it builds in the stack's Redis (the same
visitor ids the aggregates must hold, ``PFADD``) and deletes again. Only the chaos sites are
read, so other data in the stack (the test session's) does not matter.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from bench.chaos.exact import ExactReport, HllTruth, RedisSite, check, to_count
from bench.chaos.ledger import EventRecord, Ledger
from bench.chaos.target import ChaosTarget
from bench.kafka import GroupLag
from contracts.aggregates import PAGE_VISITORS, VIEWS, VISITORS, Scope, scopes_of
from contracts.generations import GenerationStore
from contracts.keys import SiteKeys, intact_key
from contracts.mongo import DATABASE, EVENTS, event_id_of
from contracts.page_facts import unpack, visitor_element
from contracts.redis_client import RedisClient, connect_redis

ALL_TIME = Scope()


async def wait_caught_up(target: ChaosTarget, ledger: Ledger, timeout_s: float,
                         say: Callable[[str], None]) -> bool:
    """Until the group's lag is 0, Redis is marked intact and each site's all-time views
    reached its acknowledged events (or the deadline)."""
    env = target.env
    deadline = time.monotonic() + timeout_s
    acked = ledger.acked_count_by_site()
    redis = connect_redis(env["REDIS_URL"], timeout_s=5.0)
    last_said = 0.0
    try:
        async with GroupLag(env["KAFKA_BOOTSTRAP"], env["KAFKA_TOPIC"],
                            env["AGGREGATOR_GROUP"]) as group:
            while True:
                lag: int | str
                try:
                    lag = await group.lag()
                    intact = bool(await redis.exists(intact_key()))
                    views = await _views(redis, sorted(acked))
                except Exception as exc:  # a store still coming back: try again
                    lag, intact, views = f"unreadable ({type(exc).__name__})", False, {}
                short = {s: n - views.get(s, 0) for s, n in acked.items() if views.get(s, 0) < n}
                if lag == 0 and intact and not short:
                    return True
                if time.monotonic() > deadline:
                    say(f"not caught up after {timeout_s:g} s: lag {lag}, intact {intact}, "
                        f"short {short}")
                    return False
                if time.monotonic() - last_said > 5:
                    say(f"waiting for the aggregators: lag {lag}, intact {intact}, "
                        f"views short {sum(short.values()):,}")
                    last_said = time.monotonic()
                await asyncio.sleep(1.0)
    finally:
        await redis.aclose()


async def _views(redis: RedisClient, sites: Sequence[str]) -> dict[str, int]:
    keys = await GenerationStore(redis).current(sites)
    values = [await redis.get(keys[s].key(VIEWS, ALL_TIME)) for s in sites]
    return {s: int(v or 0) for s, v in zip(sites, values, strict=True)}


async def read_mongo(target: ChaosTarget, sites: Sequence[str]) -> dict[str, Counter[str]]:
    """Per site: the event id of every stored document, with how many documents hold it."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        target.env["MONGO_URL"], serverSelectionTimeoutMS=10_000)
    events = client[target.env.get("MONGO_DB", DATABASE)][EVENTS]
    try:
        out: dict[str, Counter[str]] = {}
        for site in sites:
            ids: Counter[str] = Counter()
            async for doc in events.find({"site_id": site}, {"_id": 1}):
                ids[event_id_of(str(doc["_id"]))] += 1
            out[site] = ids
        return out
    finally:
        await client.close()


async def read_redis(target: ChaosTarget, events: Sequence[EventRecord]
                     ) -> tuple[dict[str, RedisSite], dict[str, HllTruth], list[str]]:
    """The chaos sites' aggregates in their current generation, and the HyperLogLog counts of
    the visitor ids of ``events`` (built in scratch keys, deleted afterwards)."""
    by_site: dict[str, list[EventRecord]] = defaultdict(list)
    for r in events:
        by_site[r.site].append(r)
    problems: list[str] = []
    redis = connect_redis(target.env["REDIS_URL"], timeout_s=10.0)
    scratch = f"chaos:scratch:{uuid.uuid4().hex}"
    try:
        if not await redis.exists(intact_key()):
            problems.append("Redis is not marked intact at the end")
        sites = sorted({r.site for r in events})
        current = await GenerationStore(redis).current(sites)
        observed: dict[str, RedisSite] = {}
        truth: dict[str, HllTruth] = {}
        for site in sites:
            keys: SiteKeys = current[site]
            mine = by_site.get(site, [])
            pages = sorted({r.page for r in mine})
            tokens = sorted({s for r in mine for s in scopes_of(r.ts) if s.unit is not None})
            facts = {_text(page): unpack(_text(value))
                     for facts_hash in keys.facts_hashes(ALL_TIME)
                     for page, value in (await redis.hgetall(facts_hash)).items()}
            bucket_values = [await redis.get(keys.key(VIEWS, s)) for s in tokens]
            page_visitors = {p: await _page_visitors(redis, f"{scratch}:{site}:inline", keys,
                                                     p, facts.get(p, (0, ())))
                             for p in pages}
            views = await redis.get(keys.key(VIEWS, ALL_TIME))
            observed[site] = RedisSite(
                views=int(views) if views is not None else 0,
                pages={page: n for page, (n, _) in facts.items()},
                buckets={s.token: int(v or 0) for s, v in zip(tokens, bucket_values,
                                                              strict=True)},
                visitors=int(await redis.pfcount(keys.key(VISITORS, ALL_TIME))),
                page_visitors=page_visitors)
            truth[site] = await _hll_truth(redis, f"{scratch}:{site}", mine, pages)
        return observed, truth, problems
    finally:
        leftovers = [k async for k in redis.scan_iter(match=f"{scratch}:*")]
        if leftovers:
            await redis.delete(*leftovers)
        await redis.aclose()


async def _page_visitors(redis: RedisClient, scratch: str, keys: SiteKeys, page: str,
                         facts: tuple[int, tuple[str, ...] | None]) -> int:
    """A page's all-time visitors as the query API counts them: its inline elements added
    to a HyperLogLog, or its HyperLogLog once promoted (``contracts.page_facts``)."""
    _, inline = facts
    if inline is None:
        return int(await redis.pfcount(keys.key(PAGE_VISITORS, ALL_TIME, page)))
    if not inline:
        return 0
    await redis.delete(scratch)
    await redis.pfadd(scratch, *inline)
    return int(await redis.pfcount(scratch))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _hll_truth(redis: RedisClient, prefix: str, events: Sequence[EventRecord],
                     pages: Sequence[str]) -> HllTruth:
    users = sorted({visitor_element(r.user) for r in events})
    if users:
        await redis.pfadd(f"{prefix}:uv", *users)
    per_page: dict[str, set[str]] = defaultdict(set)
    for r in events:
        per_page[r.page].add(visitor_element(r.user))
    counts = {}
    for i, page in enumerate(pages):
        await redis.pfadd(f"{prefix}:uvp:{i}", *sorted(per_page[page]))
        counts[page] = int(await redis.pfcount(f"{prefix}:uvp:{i}"))
    return HllTruth(int(await redis.pfcount(f"{prefix}:uv")) if users else 0, counts)


def _session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def process_problems(target: ChaosTarget) -> list[str]:
    """Dead parts, and processes of this stack outside every recorded part's session
    (a duplicate or a leftover), or a service session running more than one process. A
    process belongs to this stack when its environment names this ``STACK_DIR``."""
    problems = [f"{name}: recorded but not running" for name in target.dead_parts()]
    sessions = {target.pid(name): name for name in target.part_names()}
    marker = f"STACK_DIR={target.directory}".encode()
    per_session: Counter[int] = Counter()
    ours = {os.getpid()}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        try:
            if marker not in environ.read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        session = _session_of(pid)
        if session is None or pid in ours:
            continue
        if session not in sessions:
            problems.append(f"pid {pid} (session {session}) belongs to no recorded part")
        per_session[session] += 1
    for session, n in per_session.items():
        name = sessions.get(session, "")
        if name.startswith(("gateway-", "aggregator-", "query-")) and n > 1:
            problems.append(f"{name}: {n} processes in its session")
    return problems


async def final_check(target: ChaosTarget, ledger: Ledger, timeout_s: float,
                      say: Callable[[str], None]) -> ExactReport:
    caught_up = await wait_caught_up(target, ledger, timeout_s, say)
    events = list(ledger.events.values())
    sites = sorted({r.site for r in events})
    say(f"reading MongoDB ({len(sites)} sites)")
    mongo = await read_mongo(target, sites)
    say("reading Redis")
    redis, truth, problems = await read_redis(target, to_count(events, mongo))
    report = check(events, mongo, redis, truth, ledger.phases)
    if not caught_up:
        report.findings.append(f"the aggregators did not catch up within {timeout_s:g} s")
    report.findings += problems
    report.findings += process_problems(target)
    return report
