"""The README's "Redis restarted empty or flushed" row on the private stack's real servers:
Redis stopped and started again with its data files gone is answered from MongoDB, exactly,
until the stack's aggregators rebuilt it by themselves; a flush in the middle of a rebuild
is noticed (Redis is never marked intact with part of the aggregates); a rebuilder killed
midway is replaced within the lock's expiry; and one aggregator rebuilds at a time.

These tests empty Redis for every site of the stack and wait until it is rebuilt before
they end. They use the stack's own aggregators (``aggregator-1``, ``aggregator-2``) and read
their JSON logs in the stack's ``logs/`` folder.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts.keys import SiteKeys, intact_key, rebuild_lock_key
from contracts.redis_client import connect_redis_client
from tests.expectations import assert_redis_matches, recount, total_views
from tests.integration.test_replay import (
    counted,
    ensure_topic_holds,
    make_events,
    post,
    post_counted,
)
from tests.stack import Stack, eventually, restore, stop_part

pytestmark = pytest.mark.integration
REBUILD_TIMEOUT_S = 300.0
TEST_HOLDER = "test-holds-the-rebuild"
# The README: a rebuilder that dies is replaced "within 15 s" (the lock's expiry after its
# last renewal); the others look once a second, and a second of margin for a busy machine.
TAKEOVER_BOUND_S = 15.0 + 1.0 + 2.0
# A rebuild needing seconds, so a test can act in the middle of one.
TOPIC_RECORDS = 40_000


@pytest.fixture
def rng() -> random.Random:
    return random.Random(4242)


@pytest.fixture
async def rebuilt_afterwards(stack: Stack, redis: Redis) -> AsyncIterator[None]:
    """Whatever happens, leave every part running and Redis rebuilt for the tests after."""
    yield
    await asyncio.to_thread(restore)
    if (await lock_holder(redis)) == TEST_HOLDER:
        await redis.delete(rebuild_lock_key())
    await eventually(lambda: redis.exists(intact_key()), timeout_s=REBUILD_TIMEOUT_S,
                     interval_s=0.5, message="Redis rebuilt after the test")


async def stats(http: aiohttp.ClientSession, stack: Stack, site_id: str
                ) -> tuple[str, dict[str, Any]]:
    async with http.get(f"{stack.http_url}/stats", params={"site_id": site_id}) as r:
        assert r.status == 200, await r.text()
        return r.headers["X-Stats-Source"], await r.json()


def log_events(stack: Stack, name: str, since: float) -> list[dict[str, Any]]:
    """The stack aggregators' log lines named ``name`` logged at or after ``since`` (epoch
    seconds), oldest first, each with ``at`` (epoch seconds) added."""
    found = []
    for path in sorted((stack.directory / "logs").glob("aggregator-*.log")):
        for line in path.read_bytes().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(entry, dict) or entry.get("event") != name:
                continue
            at = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=UTC).timestamp()
            if at >= since:
                found.append({**entry, "at": at})
    return sorted(found, key=lambda e: e["at"])


async def orphaned_generations(redis: Redis, since_ms: int) -> dict[str, set[str]]:
    """Site -> generations built by rebuilds that started at or after ``since_ms`` (the
    name is ``r<start ms>``) that the site's pointer does not name: keys nothing reads."""
    built: dict[str, set[str]] = {}
    async for key in redis.scan_iter(match="pv:{*}:gr*", count=1000):
        found = re.match(r"pv:\{(.+?)\}:g(r(\d+)):", key.decode())
        if found and int(found[3]) >= since_ms:
            built.setdefault(found[1], set()).add(found[2])
    orphans = {}
    for site_id, generations in built.items():
        pointer = await redis.get(SiteKeys(site_id).generation_pointer())
        current = pointer.decode() if isinstance(pointer, bytes) else pointer
        if generations - {current}:
            orphans[site_id] = generations - {current}
    return orphans


async def lock_holder(redis: Redis) -> str | None:
    """The instance named by the rebuild lock's value (``instance:token``), if held."""
    value = await redis.get(rebuild_lock_key())
    if value is None:
        return None
    return (value.decode() if isinstance(value, bytes) else value).rsplit(":", 1)[0]


async def rebuilding(redis: Redis) -> str | None:
    """The aggregator rebuilding now: it holds the lock and its build marker exists."""
    holder = await lock_holder(redis)
    if holder is None or holder == TEST_HOLDER:
        return None
    async for _key in redis.scan_iter(match="pv:{!meta}:building:*", count=100):
        return holder
    return None


# What a Redis that is down, or a cluster still forming again, answers meanwhile.
NOT_BACK_YET = (RedisConnectionError, ClusterDownError, TryAgainError, RedisClusterException)


def forget_data(directory: Path) -> None:
    """A Redis server's data files gone; a cluster master keeps its nodes.conf (its identity
    and slots), as a master whose disk of data was lost would."""
    for path in directory.iterdir():
        if path.name != "nodes.conf":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


async def restart_redis_empty(stack: Stack, token: str) -> bool:
    """Stop the stack's Redis (every master of a cluster), delete its data files, start it
    again, and take the rebuild lock the moment it answers (the aggregators look once a
    second). False when an aggregator took the lock first."""
    for part in stack.redis_parts():
        await asyncio.to_thread(stop_part, part)
        forget_data(stack.directory / "data" / part)
    restoring = asyncio.create_task(asyncio.to_thread(restore))
    client = connect_redis_client(stack.redis_url, timeout_s=1.0)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                taken = await client.set(rebuild_lock_key(), token, nx=True, px=300_000)
                break
            except NOT_BACK_YET:
                assert time.monotonic() < deadline, "Redis did not come back"
                await asyncio.sleep(0.005)
        assert not await client.exists(intact_key()), "Redis came back with its data"
    finally:
        await client.aclose()
        await restoring
    return bool(taken)


@pytest.mark.runs_first
async def test_redis_restarted_empty_is_answered_from_mongo_then_rebuilt_exactly_by_one_aggregator(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        rng: random.Random, rebuilt_afterwards: None) -> None:
    sent = await post_counted(stack, http, redis, make_events(site_id, 600, rng))
    token = f"{TEST_HOLDER}:{uuid.uuid4().hex}"
    for _attempt in range(3):  # an aggregator may win the race for the lock: start over
        since = time.time()
        if await restart_redis_empty(stack, token):
            break
        await eventually(lambda: redis.exists(intact_key()), timeout_s=REBUILD_TIMEOUT_S,
                         interval_s=0.5, message="the aggregators' rebuild")
    else:
        pytest.fail("an aggregator took the rebuild lock first three times")

    # Holding the lock as a slow rebuild would: live counting goes on into the empty Redis,
    # which then holds only the new events; the answers must not come from there.
    during = make_events(site_id, 200, rng)
    await post(http, stack, during)
    sent += during
    await counted(redis, site_id, len(during))  # a half-empty Redis indeed
    assert not await redis.exists(intact_key())

    async def from_mongo_with_everything() -> bool:
        source, body = await stats(http, stack, site_id)
        return source == "mongo" and body["total_views"] == len(sent)

    await eventually(from_mongo_with_everything, timeout_s=60, interval_s=0.2,
                     message="exact answers from MongoDB while Redis is rebuilt")
    source, body = await stats(http, stack, site_id)
    assert source == "mongo" and body["total_views"] == len(sent)
    assert body["unique_visitors"] == len({e.user_id for e in sent})  # exact, from MongoDB

    released_at = time.time()
    assert await redis.get(rebuild_lock_key()) == token.encode()
    await redis.delete(rebuild_lock_key())  # the aggregators rebuild by themselves now

    async def from_redis_and_never_wrong() -> bool:
        source, body = await stats(http, stack, site_id)
        assert body["total_views"] == len(sent), (source, body["total_views"])
        return source == "redis"

    await eventually(from_redis_and_never_wrong, timeout_s=REBUILD_TIMEOUT_S, interval_s=0.2,
                     message="answers from Redis again after the rebuild")
    await assert_redis_matches(redis, site_id, recount(sent))
    # One aggregator rebuilt, once, and only after the test let go of the lock.
    started = log_events(stack, "rebuild_started", since)
    finished = log_events(stack, "rebuild_finished", since)
    assert len(started) == 1 and started[0]["at"] >= released_at - 0.5, started
    assert [(e["instance"], e["marked_intact"]) for e in finished] == [
        (started[0]["instance"], True)]


@pytest.mark.smoke
async def test_a_flush_during_a_rebuild_is_noticed_and_the_end_state_is_exact(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        rng: random.Random, rebuilt_afterwards: None) -> None:
    sent = await post_counted(stack, http, redis, make_events(site_id, 500, rng))
    await ensure_topic_holds(stack, TOPIC_RECORDS, rng)
    since = time.time()
    await redis.flushall()
    first = await eventually(lambda: rebuilding(redis), timeout_s=30, interval_s=0.01,
                             message="a rebuild under way")
    flushed_at = time.time()
    await redis.flushall()  # in the middle of that rebuild
    assert not [e for e in log_events(stack, "rebuild_finished", since)
                if e["at"] < flushed_at], "the rebuild was over before the second flush"

    # From now on Redis may be marked intact only by a rebuild that started after the
    # second flush, and at that moment every aggregate must be complete.
    await eventually(lambda: redis.exists(intact_key()), timeout_s=REBUILD_TIMEOUT_S,
                     interval_s=0.05, message="Redis marked intact again")
    assert await total_views(redis, site_id) == len(sent)
    await assert_redis_matches(redis, site_id, recount(sent))
    marked = [e for e in log_events(stack, "rebuild_finished", since) if e["marked_intact"]]
    assert marked, "intact without a rebuild marking it"
    later = log_events(stack, "rebuild_started", flushed_at)
    assert later and later[0]["at"] < marked[0]["at"], (later, marked)
    # The rebuild the flush hit gives up (or finishes without marking Redis intact); it
    # may run on a while after the other marked Redis intact: both read the whole topic.
    async def gave_up() -> list[dict[str, Any]]:
        lost = log_events(stack, "rebuild_lost_midway", flushed_at)
        unmarked = [e for e in log_events(stack, "rebuild_finished", flushed_at)
                    if not e["marked_intact"]]
        return [e for e in lost + unmarked if e["instance"] == first]

    await eventually(gave_up, timeout_s=REBUILD_TIMEOUT_S, interval_s=0.2,
                     message=f"the rebuild of {first} hit by the flush giving up")
    # ...and leaves nothing behind: what it wrote after the flush is no site's generation.
    assert await orphaned_generations(redis, int(since * 1000)) == {}
    source, body = await stats(http, stack, site_id)
    assert (source, body["total_views"]) == ("redis", len(sent))


async def test_a_rebuilder_killed_midway_is_replaced_within_the_lock_expiry_and_finishes(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        rng: random.Random, rebuilt_afterwards: None) -> None:
    sent = await post_counted(stack, http, redis, make_events(site_id, 500, rng))
    await ensure_topic_holds(stack, TOPIC_RECORDS, rng)
    await redis.flushall()
    holder = await eventually(lambda: rebuilding(redis), timeout_s=30, interval_s=0.01,
                              message="a rebuild under way")
    assert holder in {"aggregator-1", "aggregator-2"}, holder
    killed_at = time.time()
    stack.signal_part(holder, signal.SIGKILL)
    killed = time.monotonic()
    assert not await redis.exists(intact_key()), "the rebuild was over before the kill"

    async def taken_over() -> str | None:
        now = await lock_holder(redis)
        return now if now not in (None, holder) else None

    successor = await eventually(taken_over, timeout_s=TAKEOVER_BOUND_S + 60, interval_s=0.05,
                                 message="another aggregator holding the rebuild lock")
    took_s = time.monotonic() - killed
    assert took_s <= TAKEOVER_BOUND_S, f"taken over {took_s:.1f}s after the holder died"
    await eventually(lambda: redis.exists(intact_key()), timeout_s=REBUILD_TIMEOUT_S,
                     interval_s=0.2, message="the successor's rebuild finished")
    await assert_redis_matches(redis, site_id, recount(sent))
    finished = log_events(stack, "rebuild_finished", killed_at)
    assert [(e["instance"], e["marked_intact"]) for e in finished] == [(successor, True)]
    # One at a time: the successor started only after the holder died.
    assert [e["instance"] for e in log_events(stack, "rebuild_started", killed_at)] == [
        successor]
    await asyncio.to_thread(restore)  # the killed aggregator back
    source, body = await stats(http, stack, site_id)
    assert (source, body["total_views"]) == ("redis", len(sent))
