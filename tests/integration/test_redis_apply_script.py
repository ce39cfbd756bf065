"""The Redis apply script's own offset check, on the real Redis: a range at or below the
offset already applied for a site and partition changes nothing, even when the caller's
pre-check let it through (a stale read, another aggregator that applied it meanwhile).

Exactly-once step 3 in the README. The pipeline filters redelivered records first, so its
own tests never reach this check; these tests call the real ``RedisSink`` (and a pipeline
whose pre-check is stale) so that only the script stands between a redo and a double count.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from aggregator.counting.aggregate import RedisOps, aggregate, to_ops
from aggregator.counting.dead_letters import ListDeadLetters
from aggregator.counting.mongo_sink import MongoSink
from aggregator.counting.pipeline import Pipeline
from aggregator.counting.redis_sink import Ranges, RedisSink, script_cost
from aggregator.counting.source import InMemorySource, Record
from aggregator.metrics import AggregatorMetrics
from contracts.aggregates import ALL_TIME, PAGE_VISITORS, Scope, expire_at
from contracts.event import PageView, encode_event
from contracts.keys import SiteKeys
from contracts.page_facts import LEADERBOARD
from contracts.settings import Retention
from tests.expectations import assert_redis_matches, recount, total_views

RETENTION = Retention()


def make_events(site_id: str, n: int) -> list[PageView]:
    now = int(time.time() * 1000)
    return [PageView(event_id=str(uuid.uuid4()), site_id=site_id, page_id=f"/p{i % 3}",
                     user_id=f"user-{i % 4}", ts=now - i * 61_000, received_at=now)
            for i in range(n)]


async def apply(sink: RedisSink, site_id: str, events: Iterable[PageView], partition: int,
                first: int, last: int) -> int | None:
    """What the pipeline sends for one site's records ``first..last`` of one partition."""
    ops = to_ops(SiteKeys(site_id), aggregate(events), RETENTION)
    return await sink.apply(ops, partition, first, last)


async def test_a_range_at_or_below_the_applied_offset_changes_nothing(redis: Redis,
                                                                       site_id: str) -> None:
    sink = RedisSink(redis)
    events = make_events(site_id, 6)  # partition 0, offsets 0..5
    assert await apply(sink, site_id, events[:3], 0, 0, 2) is None

    # Redone whole, redone from the applied offset itself, redone overlapping the next
    # records: each refused, with the offset already applied, and nothing counted.
    assert await apply(sink, site_id, events[:3], 0, 0, 2) == 2
    assert await apply(sink, site_id, events[2:3], 0, 2, 2) == 2
    assert await apply(sink, site_id, events[1:6], 0, 1, 5) == 2
    await assert_redis_matches(redis, site_id, recount(events[:3]), RETENTION)
    assert await sink.applied_offsets([SiteKeys(site_id)]) == {(site_id, 0): 2}

    # The records past it apply; then they are refused in turn.
    assert await apply(sink, site_id, events[3:], 0, 3, 5) is None
    assert await apply(sink, site_id, events[3:], 0, 3, 5) == 5
    await assert_redis_matches(redis, site_id, recount(events), RETENTION)


async def test_the_applied_offset_is_kept_per_partition(redis: Redis, site_id: str) -> None:
    sink = RedisSink(redis)
    on_zero, on_one = make_events(site_id, 3), make_events(site_id, 2)
    assert await apply(sink, site_id, on_zero, 0, 10, 12) is None
    # Lower offsets of another partition are not "at or below" partition 0's.
    assert await apply(sink, site_id, on_one, 1, 0, 1) is None
    assert await apply(sink, site_id, on_one, 1, 0, 1) == 1
    assert await sink.applied_offsets([SiteKeys(site_id)]) == {(site_id, 0): 12,
                                                               (site_id, 1): 1}
    await assert_redis_matches(redis, site_id, recount(on_zero + on_one), RETENTION)


class StalePreCheck:
    """The real sink, but its applied offsets read as they were before anything was applied:
    what an aggregator sees when another member applied the range after it looked (a
    rebalance), so the pipeline's own pre-check lets every record through."""

    def __init__(self, sink: RedisSink) -> None:
        self._sink = sink

    async def current(self, site_ids: Iterable[str]) -> dict[str, SiteKeys]:
        return await self._sink.current(site_ids)

    async def applied_offsets(self, sites: Iterable[SiteKeys]) -> dict[tuple[str, int], int]:
        return {}

    async def apply_ranges(self, ops: Any, ranges: Ranges,
                           live: bool = True) -> dict[int, int] | None:
        return await self._sink.apply_ranges(ops, ranges, live)

    async def remember_sites(self, site_ids: Iterable[str]) -> None:
        await self._sink.remember_sites(site_ids)


def records_of(events: Sequence[PageView], partition: int, first_offset: int) -> list[Record]:
    return [Record(partition, first_offset + i, e.kafka_key, encode_event(e))
            for i, e in enumerate(events)]


def pipeline(source: InMemorySource, mongo: AsyncCollection[dict[str, Any]],
             redis: RedisSink | StalePreCheck, metrics: AggregatorMetrics) -> Pipeline:
    return Pipeline(source=source, mongo=MongoSink(mongo), redis=redis,
                    dead_letters=ListDeadLetters(), metrics=metrics, stopping=asyncio.Event(),
                    retention=RETENTION)


async def test_a_redelivery_past_a_stale_pre_check_counts_nothing_twice(
        redis: Redis, mongo_events: AsyncCollection[dict[str, Any]], site_id: str) -> None:
    """Real MongoDB and Redis: the redelivered copies are at the stored documents' own
    positions, so MongoDB says they count (a redo); only the script's check refuses them."""
    on_zero, on_one = make_events(site_id, 8), make_events(site_id, 3)
    records = records_of(on_zero, 0, 100) + records_of(on_one, 1, 40)
    counted = recount(on_zero + on_one)

    first = InMemorySource(records)
    await pipeline(first, mongo_events, RedisSink(redis), AggregatorMetrics()).process(
        await first.poll(len(records), 0))
    await assert_redis_matches(redis, site_id, counted, RETENTION)

    again, metrics = InMemorySource(records), AggregatorMetrics()
    await pipeline(again, mongo_events, StalePreCheck(RedisSink(redis)), metrics).process(
        await again.poll(len(records), 0))
    assert await total_views(redis, site_id) == counted.total
    await assert_redis_matches(redis, site_id, counted, RETENTION)
    assert metrics.skipped.labels("already_applied")._value.get() == len(records)
    assert again.committed == {0: 108, 1: 43}


async def test_an_unknown_operation_fails_the_whole_step_loudly_and_changes_nothing(
        redis: Redis, site_id: str) -> None:
    """The script checks every operation before writing: one it does not know (a writer
    newer than the script, a corrupted batch) is an error, not a half-applied batch."""
    sink = RedisSink(redis)
    ops = to_ops(SiteKeys(site_id), aggregate(make_events(site_id, 3)), RETENTION)
    broken = RedisOps(ops.keys, [*ops.ops, ["x", 3, 0, 1]], ops.generation)
    with pytest.raises(ResponseError, match="unknown aggregate operation: x"):
        await sink.apply(broken, 0, 0, 2)
    assert [k async for k in redis.scan_iter(match=SiteKeys(site_id).generation_match())] == []
    assert await sink.apply(ops, 0, 0, 2) is None  # the same batch, well formed, applies
    assert await total_views(redis, site_id) == 3


async def test_one_script_covers_several_partitions_and_refuses_them_all_on_any_overlap(
        redis: Redis, site_id: str) -> None:
    sink = RedisSink(redis)
    events = make_events(site_id, 6)
    ops = to_ops(SiteKeys(site_id), aggregate(events[:4]), RETENTION)
    assert await sink.apply_ranges(ops, {0: (0, 1), 3: (7, 8)}) is None
    assert await sink.applied_offsets([SiteKeys(site_id)]) == {(site_id, 0): 1,
                                                               (site_id, 3): 8}
    # Partition 3 overlaps, partition 5 is new: nothing applied, only 3's stored offset said.
    more = to_ops(SiteKeys(site_id), aggregate(events[4:]), RETENTION)
    assert await sink.apply_ranges(more, {5: (0, 0), 3: (8, 9)}) == {3: 8}
    await assert_redis_matches(redis, site_id, recount(events[:4]), RETENTION)
    assert await sink.apply_ranges(more, {5: (0, 0), 3: (9, 9)}) is None
    await assert_redis_matches(redis, site_id, recount(events), RETENTION)


async def test_a_bucket_expiry_is_set_when_its_key_is_created_and_never_again(
        redis: Redis, site_id: str) -> None:
    """Every key of the first batch gets its bucket's expiry (checked key by key). Then each
    expiry is moved by hand: a later batch adding to the same keys leaves them alone (it set
    them once), while the keys it creates get theirs."""
    sink = RedisSink(redis)
    events = make_events(site_id, 8)  # minute, hour and day buckets; pages /p0../p2
    assert await apply(sink, site_id, events, 0, 0, 7) is None
    await assert_redis_matches(redis, site_id, recount(events), RETENTION)
    keys = SiteKeys(site_id)
    expiring = {}
    async for key in redis.scan_iter(match=keys.generation_match(), count=1000):
        at = await redis.expiretime(key)
        if at > 0:
            expiring[key] = at + 1000
            await redis.expireat(key, at + 1000)
    assert expiring  # minute and hour buckets expire
    later = [PageView(str(uuid.uuid4()), site_id, e.page_id, "someone-new", e.ts,
                      e.received_at) for e in events]
    # A new page with 7 visitors: its facts promote it to a HyperLogLog, a new key.
    newcomers = [PageView(str(uuid.uuid4()), site_id, "/brand-new", f"u{i}", events[0].ts,
                          events[0].received_at) for i in range(7)]
    assert await apply(sink, site_id, [*later, *newcomers], 0, 8, 22) is None
    assert {k: await redis.expiretime(k) for k in expiring} == expiring
    minute = Scope("m", events[0].ts // 60_000)
    created = keys.key(PAGE_VISITORS, minute, "/brand-new")
    assert await redis.expiretime(created) == expire_at(minute, RETENTION.ttl_of("m"))


async def test_page_facts_promote_the_seventh_visitor_and_keep_the_best_pages_in_order(
        redis: Redis, site_id: str) -> None:
    """Pages in many small batches, as live counting applies them: each page's views and
    visitors in every bucket are exact (inline up to six visitors, then a HyperLogLog that
    holds all of them), and each leaderboard holds the best pages in ranking order, ties
    broken by the page id's bytes (non-ASCII ids, prefixes of each other, included)."""
    rng = random.Random(5)
    now = int(time.time() * 1000)
    names = [f"/p{i}" for i in range(300)] + ["é", "z", "/p1é", "/", "/p", "ünï"]
    events = [PageView(str(uuid.uuid4()), site_id, names[int(len(names) * rng.random() ** 2)],
                       f"u{rng.randrange(40)}", now - rng.randrange(3) * 61_000, now)
              for _ in range(3000)]
    sink, first = RedisSink(redis), 0
    while first < len(events):
        size = rng.randrange(1, 120)
        chunk = events[first:first + size]
        assert await apply(sink, site_id, chunk, 0, first, first + len(chunk) - 1) is None
        first += len(chunk)
    expected = recount(events)
    assert len(expected.page_views[ALL_TIME]) > LEADERBOARD  # the board had to drop pages
    assert any(len(expected.page_visitors[(ALL_TIME, p)]) > 6 for p in names)  # promoted
    assert any(1 < len(expected.page_visitors[(ALL_TIME, p)]) <= 6 for p in names)  # inline
    await assert_redis_matches(redis, site_id, expected, RETENTION)


async def test_a_page_with_thousands_of_new_visitors_in_one_step_is_promoted_exactly(
        redis: Redis, site_id: str) -> None:
    """More visitors than one script command takes as arguments (Lua's stack): they reach
    the page's HyperLogLog in chunks, and the step costs what its visitors cost."""
    now = int(time.time() * 1000)
    events = [PageView(str(uuid.uuid4()), site_id, "/home", f"u{i}", now, now)
              for i in range(9_000)]
    ops = to_ops(SiteKeys(site_id), aggregate(events), RETENTION)
    assert script_cost(ops) > 4 * 9_000  # every visitor, in each of the four scopes
    assert await RedisSink(redis).apply(ops, 0, 0, len(events) - 1) is None
    await assert_redis_matches(redis, site_id, recount(events), RETENTION)
