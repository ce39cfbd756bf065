"""The aggregator on real Kafka, MongoDB-wire server and Redis: every event counted exactly
once through volume, crashes at any point, client retries, rebalances, store outages and
poison records. Each test runs its own aggregator processes on a topic of its own."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from bench.events import as_tracker_view
from contracts.event import PageView, encode_event
from contracts.failpoints import (
    CRASH_AT_BATCH_VARIABLE,
    CRASH_AT_VARIABLE,
    CRASH_EXIT_STATUS,
    FAILPOINTS,
)
from tests.aggregator_harness import (
    Aggregator,
    create_topic,
    positions_in_topic,
    produce,
    produce_events,
    scrape,
)
from tests.expectations import (
    assert_mongo_matches,
    assert_redis_matches,
    current_keys,
    recount,
    total_views,
)
from tests.kafka_tools import group_members, stop_quietly
from tests.stack import Stack, eventually, restore, stop_part

HOUR_MS = 3_600_000
CLIENT_RETRIES = 'duplicates_skipped_total{reason="client_retry"}'


def make_events(site_id: str, n: int, seed: int = 7, pages: int = 200, users: int = 5000,
                tracker: bool = False) -> list[PageView]:
    """Events over many pages and users, spread over the last three days (many buckets);
    with ``tracker``, every other one as Plausible's tracker sends it (its breakdowns)."""
    rng = random.Random(f"{site_id}-{seed}")  # ids unique to this test's site
    now = int(time.time() * 1000)
    events = [PageView(event_id=str(uuid.UUID(int=rng.getrandbits(128))), site_id=site_id,
                       page_id=f"/page/{rng.randrange(pages)}",
                       user_id=f"user-{rng.randrange(users)}",
                       ts=now - rng.randrange(72 * HOUR_MS), received_at=now)
              for _ in range(n)]
    if tracker:
        events[::2] = [as_tracker_view(e, rng) for e in events[::2]]
    return events


async def wait_for_total(redis: Redis, site_id: str, n: int, timeout_s: float = 180) -> None:
    async def reached() -> int | None:
        total = await total_views(redis, site_id)
        assert total <= n, f"counted {total} > {n}: double count"
        return total if total == n else None
    await eventually(reached, timeout_s=timeout_s, interval_s=0.2, message=f"{n} views counted")


async def committed_total(stack: Stack, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


async def test_fifty_thousand_events_are_counted_exactly(
        stack: Stack, redis: Redis, mongo_events: AsyncCollection[dict[str, Any]], site_id: str,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    topic = await create_topic(stack)
    events = make_events(site_id, 50_000, tracker=True)
    aggregator = Aggregator(stack, topic, tmp_path)
    aggregator.start()
    try:
        await produce_events(stack, topic.name, events)
        await wait_for_total(redis, site_id, len(events))
        async with http.get(f"{aggregator.url}/healthz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        # A batch is observed after its commit, a moment after Redis shows its events.
        metrics = await eventually(lambda: _metrics_once_batch_committed(aggregator, http),
                                   timeout_s=30, message="the last batch observed")
        assert metrics is not None
        assert metrics["records_applied_total"] == 50_000
        assert metrics["batch_records_sum"] == 50_000  # each record polled once, no redo
        batches = metrics["batch_records_count"]
        assert batches >= 50_000 / 2000 and metrics["batch_duration_seconds_count"] == batches
        assert metrics["batch_duration_seconds_sum"] > 0
        assert metrics["dead_lettered_total"] == 0
        assert metrics.get('duplicates_skipped_total{reason="client_retry"}', 0) == 0
        assert metrics.get('duplicates_skipped_total{reason="already_applied"}', 0) == 0
        await eventually(lambda: _lag_of(aggregator, http, {p: 0 for p in range(4)}),
                         timeout_s=30, message="consumer_lag 0 on each of the 4 partitions")
    finally:
        assert await aggregator.terminate() == 0, aggregator.log_tail()
    await assert_redis_matches(redis, site_id, recount(events))
    await assert_mongo_matches(mongo_events, site_id, events,
                               await positions_in_topic(stack, topic.name))


async def _lag_of(aggregator: Aggregator, http: aiohttp.ClientSession,
                  expected: dict[int, int]) -> bool:
    return await _lags(aggregator, http) == expected


async def _lags(aggregator: Aggregator, http: aiohttp.ClientSession) -> dict[int, int]:
    prefix = 'consumer_lag{partition="'
    return {int(k[len(prefix):-2]): int(v) for k, v in (await aggregator.metrics(http)).items()
            if k.startswith(prefix)}


async def test_sigkill_at_random_points_five_times_still_counts_exactly(
        stack: Stack, redis: Redis, mongo_events: AsyncCollection[dict[str, Any]], site_id: str,
        tmp_path: Path) -> None:
    topic = await create_topic(stack)
    events = make_events(site_id, 50_000, seed=11)
    aggregator = Aggregator(stack, topic, tmp_path)
    aggregator.start()
    await produce_events(stack, topic.name, events)
    rng = random.Random(20261128)
    kills = 0
    try:
        while kills < 5:
            before = await total_views(redis, site_id)

            async def progressing(before: int = before) -> bool:
                return await total_views(redis, site_id) > before

            await eventually(progressing, timeout_s=60, message="the aggregator at work")
            await asyncio.sleep(rng.uniform(0.0, 0.4))  # a random point in its work
            if await total_views(redis, site_id) >= len(events):
                break
            aggregator.kill()
            kills += 1
            aggregator.start()
        assert kills >= 5, f"only {kills} kills before the work was done: send more events"
        await wait_for_total(redis, site_id, len(events))
    finally:
        assert await aggregator.terminate() == 0, aggregator.log_tail()
    await assert_redis_matches(redis, site_id, recount(events))
    await assert_mongo_matches(mongo_events, site_id, events,
                               await positions_in_topic(stack, topic.name))


async def test_a_crash_between_mongo_and_redis_and_after_redis_counts_exactly(
        stack: Stack, redis: Redis, mongo_events: AsyncCollection[dict[str, Any]], site_id: str,
        tmp_path: Path) -> None:
    topic = await create_topic(stack)
    events = make_events(site_id, 8_000, seed=13)
    await produce_events(stack, topic.name, events)
    for point in FAILPOINTS:  # after_mongo, after_redis
        crashing = Aggregator(stack, topic, tmp_path, extra_env={
            CRASH_AT_VARIABLE: point, CRASH_AT_BATCH_VARIABLE: "2",
            "AGGREGATOR_MAX_RECORDS": "500"})
        crashing.start()
        assert crashing.proc is not None
        assert await asyncio.to_thread(crashing.proc.wait, 120) == CRASH_EXIT_STATUS, \
            crashing.log_tail()
        assert "crash_hook_fired" in crashing.log_tail()
    survivor = Aggregator(stack, topic, tmp_path)
    survivor.start()
    try:
        await wait_for_total(redis, site_id, len(events))
    finally:
        assert await survivor.terminate() == 0
    await assert_redis_matches(redis, site_id, recount(events))
    await assert_mongo_matches(mongo_events, site_id, events,
                               await positions_in_topic(stack, topic.name))


async def test_a_client_retrying_a_thousand_events_with_the_same_ids_counts_once(
        stack: Stack, http: aiohttp.ClientSession, redis: Redis,
        mongo_events: AsyncCollection[dict[str, Any]], site_id: str) -> None:
    events = [{"page_id": f"/p{i % 20}", "user_id": f"u{i % 100}", "site_id": site_id,
               "event_id": str(uuid.uuid4())} for i in range(1000)]
    retries_before = await _stack_metric(stack, http, CLIENT_RETRIES)
    applied_before = await _stack_metric(stack, http, "records_applied_total")
    for _attempt in range(3):  # the original and two full retries

        async def accepted() -> bool:  # a 503 under load is answered by retrying, too
            async with http.post(f"{stack.http_url}/events", json=events) as response:
                return response.status == 202

        await eventually(accepted, timeout_s=30, interval_s=0.5, message="batch accepted")
    await wait_for_total(redis, site_id, 1000, timeout_s=60)
    assert await mongo_events.count_documents({"site_id": site_id}) == 1000
    # Everything sent is in Kafka three times; once the stack's group is past it, still 1000.
    await eventually(lambda: _stack_group_caught_up(stack), timeout_s=60)
    assert await total_views(redis, site_id) == 1000
    # The stack may count other traffic meanwhile: at least our 2,000 retries were skipped
    # as such (a 503 answered by retrying may have left a few more copies in Kafka).
    retries = await _stack_metric(stack, http, CLIENT_RETRIES)
    assert retries - retries_before >= 2000
    assert await _stack_metric(stack, http, "records_applied_total") - applied_before >= 1000


async def _stack_metric(stack: Stack, http: aiohttp.ClientSession, name: str) -> float:
    """A metric summed over the stack's aggregators."""
    return sum([(await scrape(http, url)).get(name, 0.0) for url in stack.aggregator_urls])


async def _stack_group_caught_up(stack: Stack) -> bool:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
    await consumer.start()
    try:
        from tests.kafka_tools import partitions_of
        partitions = await partitions_of(stack.kafka_bootstrap, stack.topic)
        end = await consumer.end_offsets(partitions)
    finally:
        await stop_quietly(consumer)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(stack.group)
    finally:
        await admin.close()
    return all(committed.get(tp) is not None and committed[tp].offset >= end[tp]
               for tp in partitions)


async def test_a_second_aggregator_joining_and_leaving_mid_stream_counts_exactly(
        stack: Stack, redis: Redis, http: aiohttp.ClientSession, site_id: str,
        tmp_path: Path) -> None:
    topic = await create_topic(stack, partitions=6)
    events = make_events(site_id, 30_000, seed=17)
    first, second = Aggregator(stack, topic, tmp_path), Aggregator(stack, topic, tmp_path)
    first.start()
    try:
        await produce_events(stack, topic.name, events[:10_000])
        second.start()
        await second.wait_consuming(http)
        await produce_events(stack, topic.name, events[10_000:20_000])
        await eventually(lambda: _more_than(redis, site_id, 10_000), timeout_s=120)
        # The second really took part: partitions of its own, events it counted.
        await eventually(lambda: _split(first, second, http, 6), timeout_s=30,
                         message="the six partitions' lag gauges split between the two")
        assert (await second.metrics(http))["records_applied_total"] > 0
        assert await second.terminate() == 0, second.log_tail()  # leaves mid-stream
        await produce_events(stack, topic.name, events[20_000:])
        await wait_for_total(redis, site_id, len(events))
    finally:
        assert await first.terminate() == 0, first.log_tail()
    await assert_redis_matches(redis, site_id, recount(events))


async def _split(first: Aggregator, second: Aggregator, http: aiohttp.ClientSession,
                 partitions: int) -> bool:
    """Each owns some partitions and none owns another's: the revoked ones' lag gauges
    are gone."""
    a, b = set(await _lags(first, http)), set(await _lags(second, http))
    return bool(a and b and not a & b and a | b == set(range(partitions)))


async def _metrics_once_batch_committed(aggregator: Aggregator, http: aiohttp.ClientSession
                                        ) -> dict[str, float] | None:
    metrics = await aggregator.metrics(http)
    return metrics if metrics.get("batch_records_sum", 0) >= 50_000 else None


async def _more_than(redis: Redis, site_id: str, n: int) -> bool:
    return await total_views(redis, site_id) > n


async def test_sigterm_mid_stream_commits_exactly_what_it_applied_and_leaves_the_group_at_once(
        stack: Stack, redis: Redis, mongo_events: AsyncCollection[dict[str, Any]], site_id: str,
        tmp_path: Path) -> None:
    topic = await create_topic(stack)
    events = make_events(site_id, 30_000, seed=29)
    await produce_events(stack, topic.name, events)
    aggregator = Aggregator(stack, topic, tmp_path, extra_env={"AGGREGATOR_MAX_RECORDS": "500"})
    aggregator.start()
    await eventually(lambda: _more_than(redis, site_id, 0), timeout_s=60,
                     interval_s=0.01, message="the aggregator at work")
    assert await aggregator.terminate() == 0, aggregator.log_tail()
    # Gone from the group at once (a member that did not leave stays for the session timeout).
    assert await group_members(stack.kafka_bootstrap, topic.group) == []
    counted = await total_views(redis, site_id)
    assert 0 < counted < len(events), "SIGTERM came after the work was done: send more"
    # The batch in hand was finished and committed: on every partition, the committed offset
    # is the one after the last offset applied to Redis (the topic holds only this site).
    keys = await current_keys(redis, site_id)
    applied = {int(p): int(o) + 1 for p, o in (await redis.hgetall(keys.applied_offsets())).items()}
    assert await _committed_offsets(stack, topic.group) == applied
    assert sum(applied.values()) == counted
    successor = Aggregator(stack, topic, tmp_path)
    successor.start()
    try:
        await wait_for_total(redis, site_id, len(events))
    finally:
        assert await successor.terminate() == 0, successor.log_tail()
    await assert_redis_matches(redis, site_id, recount(events))
    assert await mongo_events.count_documents({"site_id": site_id}) == len(events)




async def _committed_offsets(stack: Stack, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def _outage_round(stack: Stack, redis: Redis, http: aiohttp.ClientSession, site_id: str,
                        tmp_path: Path, part: str, check: str) -> None:
    topic = await create_topic(stack)
    events = make_events(site_id, 6_000, seed=19)
    aggregator = Aggregator(stack, topic, tmp_path)
    aggregator.start()
    try:
        await produce_events(stack, topic.name, events[:3_000])
        await wait_for_total(redis, site_id, 3_000)
        # The commit follows the Redis step: wait for it rather than racing it.
        await eventually(lambda: _committed(stack, topic.group, 3_000), timeout_s=30)
        committed_before = 3_000
        stop_part(part)
        try:
            await produce_events(stack, topic.name, events[3_000:])

            async def noticed() -> bool:
                return (await aggregator.readiness(http)).get(check) is False

            await eventually(noticed, timeout_s=30, message=f"aggregator sees {part} down")
            assert await committed_total(stack, topic.group) == committed_before
            assert aggregator.running()
        finally:
            restore()
        await wait_for_total(redis, site_id, len(events))
        await eventually(lambda: _committed(stack, topic.group, len(events)), timeout_s=30)
        metrics = await aggregator.metrics(http)
        assert metrics["records_applied_total"] == len(events)

        async def store_up() -> bool:  # the background ping's next answer says so too
            return (await aggregator.metrics(http))[f'store_up{{store="{check}"}}'] == 1

        await eventually(store_up, timeout_s=10, message=f"store_up of {check} back to 1")
    finally:
        assert await aggregator.terminate() == 0, aggregator.log_tail()
    await assert_redis_matches(redis, site_id, recount(events))
    # One line when the store went away and one when it came back, not one per retry.
    for name in ("store_unavailable", "store_recovered"):
        lines = [e for e in aggregator.log_events(name) if e["store"] == check]
        assert len(lines) == 1, (name, lines)
    assert len(aggregator.log_events("keepalive_failed")) <= 1


async def _committed(stack: Stack, group: str, n: int) -> bool:
    return await committed_total(stack, group) == n


async def test_redis_stopped_then_back_counts_exactly_and_commits_nothing_early(
        stack: Stack, redis: Redis, http: aiohttp.ClientSession, site_id: str,
        tmp_path: Path) -> None:
    await _outage_round(stack, redis, http, site_id, tmp_path, "redis", "redis")


async def test_mongo_stopped_then_back_counts_exactly_and_commits_nothing_early(
        stack: Stack, redis: Redis, http: aiohttp.ClientSession, site_id: str,
        tmp_path: Path) -> None:
    await _outage_round(stack, redis, http, site_id, tmp_path, "ferretdb", "mongo")


@pytest.mark.parametrize(("part", "check"), [("redis", "redis"), ("ferretdb", "mongo")])
async def test_an_idle_aggregator_reports_a_store_outage_in_readyz_and_its_end(
        stack: Stack, http: aiohttp.ClientSession, tmp_path: Path, part: str, check: str,
        ) -> None:
    topic = await create_topic(stack, partitions=1)
    aggregator = Aggregator(stack, topic, tmp_path)
    aggregator.start()
    try:
        await aggregator.wait_consuming(http)
        await eventually(lambda: _ready_status(aggregator, http, 200), timeout_s=30)
        stop_part(part)
        try:
            await eventually(lambda: _ready_status(aggregator, http, 503), timeout_s=30,
                             message=f"/readyz sees {part} down with no batch in flight")
            assert (await aggregator.readiness(http))[check] is False
        finally:
            restore()
        await eventually(lambda: _ready_status(aggregator, http, 200), timeout_s=60,
                         message=f"/readyz sees {part} back")
    finally:
        assert await aggregator.terminate() == 0, aggregator.log_tail()
    assert [e["store"] for e in aggregator.log_events("store_unavailable")] == [check]
    assert [e["store"] for e in aggregator.log_events("store_recovered")] == [check]


async def _ready_status(aggregator: Aggregator, http: aiohttp.ClientSession, status: int
                        ) -> bool:
    return await aggregator.ready_status(http) == status


async def test_poison_records_go_to_the_dead_letter_topic_and_the_rest_is_counted(
        stack: Stack, redis: Redis, site_id: str, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    topic = await create_topic(stack, partitions=1)
    events = make_events(site_id, 200, seed=23)
    # The last decodes but cannot be stored: ts = 10**17 ms is past year 9999.
    unstorable = PageView(str(uuid.uuid4()), site_id, "/far", "u", 10**17, int(time.time() * 1000))
    poison = [b"not json at all", b'{"v": 99, "page_id": "x"}', b'["an", "array"]',
              encode_event(unstorable)]
    await produce_events(stack, topic.name, events[:100])
    await produce(stack, topic.name, [(b"poison", value) for value in poison])
    await produce_events(stack, topic.name, events[100:])
    aggregator = Aggregator(stack, topic, tmp_path)
    aggregator.start()
    try:
        await wait_for_total(redis, site_id, 200)
        metrics = await aggregator.metrics(http)
        assert (metrics["dead_lettered_total"], metrics["records_applied_total"]) == (4, 200)
    finally:
        assert await aggregator.terminate() == 0
    await assert_redis_matches(redis, site_id, recount(events))

    consumer = AIOKafkaConsumer(topic.dead_letters, bootstrap_servers=stack.kafka_bootstrap,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        dead: list[Any] = []
        deadline = time.monotonic() + 30
        while len(dead) < len(poison) and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                dead.extend(messages)
    finally:
        await stop_quietly(consumer)
    assert [m.value for m in dead] == poison
    reasons = [dict(m.headers)["reason"].decode() for m in dead]
    assert "not JSON" in reasons[0] and "schema version" in reasons[1] and reasons[3]
    assert all(dict(m.headers)["source_topic"].decode() == topic.name for m in dead)
