"""Replay and recompute on the real stack: rebuilding a site while events keep arriving, a
replay killed midway, ``--verify`` on a healthy and on a corrupted site, and a Redis that
lost everything (flushed), detected, answered from MongoDB meanwhile and rebuilt exactly.

Replays read the whole page-view topic (every test's events) and apply only the test's
site, so other tests' sites are untouched; the flush test is the exception by nature: it
empties Redis for everyone and waits until the aggregators rebuilt all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from aggregator.recovery.history import committed_offsets
from contracts.aggregates import ALL_TIME, HOUR, VIEWS, Scope
from contracts.event import PageView
from contracts.keys import intact_key, rebuild_lock_key
from contracts.mongo import event_document, event_id_of
from contracts.page_facts import pack, unpack
from contracts.settings import Retention
from contracts.timebuckets import HOUR_MS
from tests.aggregator_harness import produce_events
from tests.expectations import assert_redis_matches, current_keys, recount, total_views
from tests.layout_v1 import write_layout_v1
from tests.stack import ROOT, Stack, eventually

pytestmark = pytest.mark.integration
REPLAY_TIMEOUT_S = 600


def make_events(site_id: str, n: int, rng: random.Random) -> list[PageView]:
    """Views over the last few hours, a handful of pages and users; ids from the client."""
    now = int(time.time() * 1000)
    return [PageView(str(uuid.uuid4()), site_id, f"/p{rng.randrange(12)}",
                     f"u{rng.randrange(300)}", now - rng.randrange(4 * HOUR_MS), now)
            for _ in range(n)]


async def flush_holding_the_lock(redis: Redis | RedisCluster, holder: str) -> None:
    """FLUSHALL, and the rebuild lock held from that moment on (as a slow rebuild would hold
    it), so no aggregator starts a rebuild in between. A cluster: the lock first, then every
    other master flushed, then the lock's master flushed and the lock set in one MULTI."""
    home = redis
    if isinstance(home, RedisCluster):
        await home.set(rebuild_lock_key(), holder, px=120_000)
        node = home.get_node_from_key(rebuild_lock_key())
        assert node is not None
        others = [n for n in home.get_primaries() if n.name != node.name]
        await home.flushall(target_nodes=others)
        home = Redis(host=node.host, port=int(node.port))
    try:
        async with home.pipeline(transaction=True) as pipe:
            pipe.flushall()
            pipe.set(rebuild_lock_key(), holder, px=120_000)
            await pipe.execute()
    finally:
        if home is not redis:
            await home.aclose()


async def post(http: aiohttp.ClientSession, stack: Stack, events: list[PageView]) -> None:
    body = [{"site_id": e.site_id, "page_id": e.page_id, "user_id": e.user_id,
             "event_id": e.event_id, "ts": e.ts} for e in events]
    for start in range(0, len(body), 500):
        async with http.post(f"{stack.http_url}/events", data=orjson.dumps(
                body[start:start + 500]), headers={"Content-Type": "application/json"}) as r:
            assert r.status == 202, await r.text()


async def post_counted(stack: Stack, http: aiohttp.ClientSession, redis: Redis,
                       events: list[PageView]) -> list[PageView]:
    """Send fresh events of one site and wait until live counting has all of them."""
    await post(http, stack, events)
    await counted(redis, events[0].site_id, len(events))
    return events


async def counted(redis: Redis, site_id: str, n: int, timeout_s: float = 120) -> None:
    async def done() -> bool:
        return await total_views(redis, site_id) == n
    await eventually(done, timeout_s=timeout_s, interval_s=0.2,
                     message=f"{n} views of {site_id} counted")


@dataclass
class Replay:
    """``python -m aggregator.recovery.replay`` as an operator runs it."""

    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, stack: Stack, *args: str) -> Replay:
        return cls(subprocess.Popen(
            [sys.executable, "-m", "aggregator.recovery.replay", *args], cwd=ROOT,
            env={**os.environ, **stack.env()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE))

    async def finish(self) -> tuple[int, dict[str, Any], str]:
        out, err = await asyncio.to_thread(self.proc.communicate, timeout=REPLAY_TIMEOUT_S)
        summary = orjson.loads(out.splitlines()[-1]) if out.strip() else {}
        return self.proc.returncode, summary, err.decode(errors="replace")


async def replay(stack: Stack, *args: str) -> tuple[int, dict[str, Any], str]:
    return await Replay.start(stack, *args).finish()


MIDWAY_RECORDS = 30_000


async def ensure_topic_holds(stack: Stack, records: int, rng: random.Random) -> None:
    """Top the page-view topic up to ``records`` with events of a filler site."""
    consumer = AIOKafkaConsumer(stack.topic, bootstrap_servers=stack.kafka_bootstrap)
    await consumer.start()  # subscribed without a group: every partition, metadata loaded
    try:
        partitions = [TopicPartition(stack.topic, p)
                      for p in consumer.partitions_for_topic(stack.topic) or ()]
        assert partitions
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
    finally:
        await consumer.stop()
    missing = records - sum(ends[tp] - starts[tp] for tp in partitions)
    if missing > 0:
        await produce_events(stack, stack.topic,
                             make_events(f"filler-{uuid.uuid4().hex[:8]}", missing, rng))


@pytest.fixture
def rng() -> random.Random:
    return random.Random(42)


@pytest.fixture
async def flush_guard(stack: Stack, redis: Redis) -> AsyncIterator[None]:
    """Whatever happens in the flush test, leave Redis rebuilt for the tests after it."""
    yield
    await redis.delete(rebuild_lock_key())
    await eventually(lambda: redis.exists(intact_key()), timeout_s=300, interval_s=0.5,
                     message="Redis rebuilt after the flush test")


@pytest.mark.runs_first
@pytest.mark.smoke
async def test_a_flushed_redis_is_answered_from_mongo_then_rebuilt_exactly(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        rng: random.Random, flush_guard: None,
        mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    sent = await post_counted(stack, http, redis, make_events(site_id, 600, rng))
    # Events whose records have left the topic (its retention): only MongoDB still has
    # them, below the group's commits. The rebuild must count them too.
    committed = (await committed_offsets(stack.kafka_bootstrap, stack.group,
                                         stack.topic)).get(0, 0)
    assert committed > 0
    history = make_events(site_id, min(committed, 150), rng)
    await mongo_events.insert_many(
        [event_document(e, partition=0, offset=i) for i, e in enumerate(history)])
    sent += history

    # Hold the rebuild lock, as a slow rebuild would, so the answers in between are seen.
    await flush_holding_the_lock(redis, "test-holds-the-rebuild")
    during = make_events(site_id, 200, rng)
    await post(http, stack, during)
    sent += during

    async def stats() -> tuple[str, dict[str, Any]]:
        async with http.get(f"{stack.http_url}/stats", params={"site_id": site_id}) as r:
            assert r.status == 200, await r.text()
            return r.headers["X-Stats-Source"], await r.json()

    async def from_mongo_with_everything() -> bool:
        source, body = await stats()
        return source == "mongo" and body["total_views"] == len(sent)

    await eventually(from_mongo_with_everything, timeout_s=60, interval_s=0.2,
                     message="exact answers from MongoDB while Redis is lost")
    source, body = await stats()
    assert source == "mongo"
    assert body["unique_visitors"] == len({e.user_id for e in sent})  # exact, from MongoDB

    await redis.delete(rebuild_lock_key())  # let the aggregators rebuild

    async def from_redis() -> bool:
        return (await stats())[0] == "redis"

    await eventually(from_redis, timeout_s=300, interval_s=0.5,
                     message="answers from Redis again after the rebuild")
    source, body = await stats()
    assert body["total_views"] == len(sent)
    await assert_redis_matches(redis, site_id, recount(sent))


@pytest.mark.runs_first
async def test_redis_in_the_old_layout_is_rebuilt_into_the_new_and_never_answers_wrong(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        rng: random.Random, flush_guard: None) -> None:
    """An upgrade over Redis data in layout 1: the new code notices (no intact marker of
    its layout), answers from MongoDB meanwhile, rebuilds every site into the current
    layout and then answers from Redis, exactly; the old keys and marker are gone."""
    sent = await post_counted(stack, http, redis, make_events(site_id, 500, rng))
    current = await current_keys(redis, site_id)
    # What the old code would have left: the site's generation in layout 1, marked intact
    # in layout 1. The rebuild lock is held meanwhile, as a slow rebuild would.
    await redis.set(rebuild_lock_key(), "test-holds-the-rebuild", px=120_000)
    await redis.delete(*[k async for k in redis.scan_iter(match=current.generation_match())
                         if not k.endswith(b":offsets")])
    await write_layout_v1(redis, current, sent, Retention.from_env(os.environ))
    assert await redis.exists(intact_key(1)) and not await redis.exists(intact_key())

    async def stats(path: str = "/stats", **query: str) -> tuple[str, dict[str, Any]]:
        async with http.get(f"{stack.http_url}{path}",
                            params={"site_id": site_id, **query}) as r:
            assert r.status == 200, await r.text()
            return r.headers["X-Stats-Source"], await r.json()

    async def from_mongo() -> bool:
        return (await stats())[0] == "mongo"

    await eventually(from_mongo, timeout_s=30, interval_s=0.2,
                     message="the query API sees Redis is not in its layout")
    during = make_events(site_id, 200, rng)
    await post(http, stack, during)  # counted on while the old layout is in place
    sent += during
    expected_pages = recount(sent).page_views[ALL_TIME]
    want_top = sorted(expected_pages.items(), key=lambda pv: (-pv[1], pv[0]))[:5]

    async def exact(source: str) -> bool:
        got_source, body = await stats(limit="5")
        assert body["total_views"] <= len(sent), body  # never more than was sent
        return got_source == source and body["total_views"] == len(sent) and [
            (p["page_id"], p["views"]) for p in body["pages"]] == want_top

    await eventually(lambda: exact("mongo"), timeout_s=60, interval_s=0.2,
                     message="exact answers from MongoDB with the events sent meanwhile")
    await redis.delete(rebuild_lock_key())  # let the aggregators rebuild into the current layout

    async def rebuilt() -> bool:
        source, body = await stats(limit="5")
        assert body["total_views"] == len(sent), body  # every event is stored by now
        if source == "redis":  # the moment Redis answers again, it answers exactly
            assert [(p["page_id"], p["views"]) for p in body["pages"]] == want_top, body
        return source == "redis"

    await eventually(rebuilt, timeout_s=300, interval_s=0.3,
                     message="answers from Redis after the rebuild into the new layout")
    # Each query API process notices the marker within a second of its own: until then it
    # answers from MongoDB, exactly (``rebuilt`` asserts that of every answer).
    await eventually(lambda: exact("redis"), timeout_s=10, interval_s=0.1,
                     message="every query API answers from Redis")
    await assert_redis_matches(redis, site_id, recount(sent))  # no layout-1 key among them
    assert not await redis.exists(intact_key(1))
    old = [k async for k in redis.scan_iter(match=current.generation_match(), count=1000)]
    assert old == []  # the generation in layout 1 is deleted once switched away from
    _, top = await stats("/stats/top", limit="5")
    assert [(p["page_id"], p["views"]) for p in top["pages"]] == want_top


@pytest.mark.smoke
async def test_replay_while_events_keep_arriving_counts_every_event_exactly_once(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        rng: random.Random) -> None:
    sent = make_events(site_id, 2000, rng)
    sent += sent[:50]  # client retries: the same event ids again
    await post(http, stack, sent)
    await counted(redis, site_id, 2000)
    before = await current_keys(redis, site_id)

    stop = asyncio.Event()

    async def keep_posting() -> None:
        """A steady 400 events/s, as sites send them. (Posted back to back instead, live
        counting is ahead of the replay on some partition at every switch attempt: see
        README, Replay and recompute, on replays under a flood.)"""
        while not stop.is_set():
            batch = make_events(site_id, 40, rng)
            await post(http, stack, batch)
            sent.extend(batch)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.1)

    load = asyncio.create_task(keep_posting())
    try:
        status, summary, err = await replay(stack, "--site", site_id)
    finally:
        stop.set()
        await load
    assert status == 0, err
    assert summary["sites"] == 1 and summary["counted"] >= 2000

    expected = recount(sent)
    assert expected.total > 2000  # the load ran during the replay
    await counted(redis, site_id, expected.total)
    after = await current_keys(redis, site_id)
    assert after.generation == summary["generation"] != before.generation
    await assert_redis_matches(redis, site_id, expected)
    leftovers = [k async for k in redis.scan_iter(match=before.generation_match(), count=1000)]
    assert leftovers == []  # the old generation is deleted


@contextlib.contextmanager
def aggregators_frozen(stack: Stack) -> Iterator[None]:
    """Every aggregator of the stack stopped (SIGSTOP) for the block, then continued."""
    names = [f"aggregator-{i + 1}" for i in range(len(stack.aggregator_urls))]
    for name in names:
        stack.signal_part(name, signal.SIGSTOP)
    try:
        yield
    finally:
        for name in names:
            stack.signal_part(name, signal.SIGCONT)


async def test_a_replay_that_read_ahead_of_live_counting_loses_no_raw_event(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        mongo_events: AsyncCollection[dict[str, Any]], rng: random.Random) -> None:
    """The replay counts events live counting has not read yet and switches the site to a
    generation whose applied offsets are ahead; live counting then skips them in Redis, but
    must still store every one of them in MongoDB (it is the raw events' only writer)."""
    sent = await post_counted(stack, http, redis, make_events(site_id, 300, rng))
    with aggregators_frozen(stack):
        ahead = make_events(site_id, 700, rng)
        await post(http, stack, ahead + ahead[:20])  # and client retries of some of them
        status, summary, err = await replay(stack, "--site", site_id)
    assert status == 0, err
    assert summary["counted"] == 1000
    sent += ahead

    async def all_stored() -> bool:
        return await mongo_events.count_documents({"site_id": site_id}) == len(sent)
    await eventually(all_stored, timeout_s=120, interval_s=0.5,
                     message=f"all {len(sent)} raw events of {site_id} in MongoDB")
    stored = {event_id_of(doc["_id"]) async for doc in mongo_events.find(
        {"site_id": site_id}, {"_id": 1})}
    assert stored == {e.event_id for e in sent}
    await assert_redis_matches(redis, site_id, recount(sent))


async def test_a_replay_killed_midway_changes_nothing_and_can_run_again(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        rng: random.Random) -> None:
    sent = await post_counted(stack, http, redis, make_events(site_id, 1500, rng))
    before = await current_keys(redis, site_id)
    await ensure_topic_holds(stack, MIDWAY_RECORDS, rng)  # so "midway" is a long way

    run = Replay.start(stack, "--site", site_id)
    assert run.proc.stderr is not None
    first_progress = await asyncio.to_thread(run.proc.stderr.readline)
    assert b"records" in first_progress, first_progress  # reading, not finished
    run.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(run.proc.communicate, timeout=30)  # reaps it, closes the pipes
    assert run.proc.returncode == -signal.SIGKILL

    assert (await current_keys(redis, site_id)).generation == before.generation
    await assert_redis_matches(redis, site_id, recount(sent))

    status, summary, err = await replay(stack, "--site", site_id)
    assert status == 0, err
    assert (await current_keys(redis, site_id)).generation == summary["generation"]
    await assert_redis_matches(redis, site_id, recount(sent))


@pytest.mark.smoke
async def test_verify_finds_no_difference_on_a_healthy_site_and_finds_a_corrupted_counter(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        rng: random.Random) -> None:
    sent = await post_counted(stack, http, redis, make_events(site_id, 800, rng))

    status, summary, err = await replay(stack, "--verify", "--site", site_id)
    assert (status, summary["differences"]) == (0, 0), err

    hour = Scope("h", HOUR.bucket_of(sent[0].ts))
    keys = await current_keys(redis, site_id)
    right = int(await redis.get(keys.key(VIEWS, hour)) or 0)
    await redis.incrby(keys.key(VIEWS, hour), 7)
    page = sent[0].page_id
    facts = keys.facts_of(hour, page)
    held = str(await redis.hget(facts, page), "utf-8")  # type: ignore[arg-type]
    views, inline = unpack(held)
    await redis.hset(facts, page, pack(views + 1, None if inline is None else list(inline)))
    try:
        status, summary, err = await replay(stack, "--verify", "--site", site_id)
    finally:
        await redis.incrby(keys.key(VIEWS, hour), -7)
        await redis.hset(facts, page, held)
    assert (status, summary["differences"]) == (1, 2), err
    assert (f"DIFF site={site_id} aggregate=views:{hour.token} live={right + 7} "
            f"rebuilt={right}" in err)
    assert (f"aggregate={keys.suffix_of(facts)} page={page} live={views + 1} "
            f"rebuilt={views}" in err)
    scratch = [k async for k in redis.scan_iter(match=f"pv:{{{site_id}}}:gv*", count=1000)]
    assert scratch == []  # the scratch generation is deleted


async def test_a_rebuild_from_mongodb_recovers_history_the_topic_no_longer_holds(
        stack: Stack, site_id: str, http: aiohttp.ClientSession, redis: Redis,
        rng: random.Random, mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    await ensure_topic_holds(stack, MIDWAY_RECORDS, rng)

    async def committed_past_old_offsets() -> bool:
        committed = await committed_offsets(stack.kafka_bootstrap, stack.group,
                                            stack.topic)
        return committed.get(0, 0) > 300

    await eventually(committed_past_old_offsets, timeout_s=120, interval_s=0.5,
                     message="the aggregators past offset 300 of partition 0")
    # Events whose records have left the topic (retention): only MongoDB still has them.
    history = make_events(site_id, 300, rng)
    await mongo_events.insert_many(
        [event_document(e, partition=0, offset=i) for i, e in enumerate(history)])
    recent = make_events(site_id, 200, rng)
    await post(http, stack, recent)
    await counted(redis, site_id, len(recent))  # live counting only saw the topic's part

    status, summary, err = await replay(stack, "--source", "mongo", "--site", site_id)
    assert status == 0, err
    assert summary["stored"] >= len(history)
    expected = recount(history + recent)
    await counted(redis, site_id, expected.total)
    await assert_redis_matches(redis, site_id, expected)
