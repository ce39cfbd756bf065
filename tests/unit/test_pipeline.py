"""The aggregator's checkpoint without a broker: exact counts through redeliveries, client
retries, crashes between steps, store outages and poison records."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Mapping

import pytest
from pymongo.errors import OperationFailure
from redis.exceptions import OutOfMemoryError, ResponseError

from aggregator.counting.aggregate import RedisOps
from aggregator.counting.dead_letters import ListDeadLetters
from aggregator.counting.pipeline import Pipeline, decode_all
from aggregator.counting.redis_sink import script_cost
from aggregator.counting.source import InMemorySource, Record
from aggregator.metrics import AggregatorMetrics
from contracts.aggregates import ALL_TIME, VIEWS
from contracts.event import PageView, encode_event
from contracts.keys import SiteKeys
from contracts.mongo import event_key
from contracts.settings import Retention
from tests.unit.fakes import FakeAggregateStore, FakeEventCollection

NOW = 1_795_860_000_000


def record(offset: int, event_id: str, site: str = "s", page: str = "/p", user: str = "u",
           partition: int = 0) -> Record:
    event = PageView(event_id, site, page, user, NOW, NOW)
    return Record(partition, offset, event.kafka_key, encode_event(event))


def make(records: list[Record]) -> tuple[Pipeline, InMemorySource, FakeEventCollection,
                                          FakeAggregateStore, ListDeadLetters]:
    source, mongo, redis, dlq = (InMemorySource(records), FakeEventCollection(),
                                 FakeAggregateStore(), ListDeadLetters())
    pipeline = Pipeline(source=source, mongo=mongo.sink(), redis=redis, dead_letters=dlq,
                        metrics=AggregatorMetrics(), stopping=asyncio.Event(),
                        retention=Retention(), backoff_max_s=0.01)
    return pipeline, source, mongo, redis, dlq


def views(redis: FakeAggregateStore, site: str = "s") -> int:
    return redis.counters[SiteKeys(site).key(VIEWS, ALL_TIME)]


async def drain(pipeline: Pipeline, source: InMemorySource, batch: int = 3) -> None:
    while records := await source.poll(batch, 0):
        await pipeline.process(records)


async def test_each_record_is_counted_once_and_offsets_committed() -> None:
    pipeline, source, mongo, redis, _ = make([record(i, f"e{i}") for i in range(10)])
    await drain(pipeline, source)
    assert views(redis) == 10
    assert len(mongo.docs) == 10
    assert source.committed == {0: 10}


async def test_redelivery_after_the_redis_step_counts_nothing_again() -> None:
    pipeline, source, _, redis, _ = make([record(i, f"e{i}") for i in range(6)])
    await drain(pipeline, source)
    source.committed.clear()  # the commit was lost: Kafka redelivers everything
    source.rewind()
    await drain(pipeline, source)
    assert views(redis) == 6


async def test_redo_after_a_crash_between_mongo_and_redis_still_counts() -> None:
    records = [record(i, f"e{i}") for i in range(4)]
    pipeline, source, mongo, redis, _ = make(records)
    await mongo.sink().write(decode_all(records)[0])  # the first attempt's write
    await drain(pipeline, source)
    assert views(redis) == 4


async def test_client_retry_with_the_same_event_id_counts_once() -> None:
    records = [record(0, "same"), record(1, "other"), record(2, "same"), record(3, "same")]
    pipeline, source, _, redis, _ = make(records)
    await drain(pipeline, source, batch=2)
    assert views(redis) == 2
    assert source.committed == {0: 4}


async def test_sites_are_counted_apart() -> None:
    records = [record(0, "a", site="one"), record(1, "b", site="two"), record(2, "c", site="one")]
    pipeline, source, _, redis, _ = make(records)
    await drain(pipeline, source)
    assert (views(redis, "one"), views(redis, "two")) == (2, 1)


async def test_one_site_reusing_another_sites_event_id_first_suppresses_nothing() -> None:
    # Site "one" posts site "two"'s next event id before "two" does: two events, not a retry.
    records = [record(0, "next", site="one"), record(1, "next", site="two"),
               record(2, "next", site="two")]  # the last one is "two"'s own client retry
    pipeline, source, mongo, redis, _ = make(records)
    await drain(pipeline, source, batch=1)
    assert (views(redis, "one"), views(redis, "two")) == (1, 1)
    assert len(mongo.docs) == 2


async def test_the_same_event_id_under_two_sites_in_one_batch_counts_for_each() -> None:
    records = [record(0, "x", site="one"), record(1, "x", site="two")]
    pipeline, source, _, redis, _ = make(records)
    await drain(pipeline, source, batch=2)
    assert (views(redis, "one"), views(redis, "two")) == (1, 1)


async def test_poison_records_go_to_dead_letters_and_the_rest_is_counted() -> None:
    records = [record(0, "a"), Record(0, 1, b"k", b"{not json"), record(2, "b")]
    pipeline, source, _, redis, dlq = make(records)
    await drain(pipeline, source)
    assert views(redis) == 2
    assert [(p.record.offset, "not JSON" in p.reason) for p in dlq.sent] == [(1, True)]
    assert source.committed == {0: 3}


async def test_a_record_that_decodes_but_cannot_be_stored_is_dead_lettered() -> None:
    """ts = 10**17 ms is past year 9999: no datetime for the MongoDB document."""
    far = PageView("far", "s", "/p", "u", 10**17, NOW)
    records = [record(0, "a"), Record(0, 1, b"k", encode_event(far)), record(2, "b")]
    pipeline, source, mongo, redis, dlq = make(records)
    await drain(pipeline, source)
    assert views(redis) == 2
    assert sorted(mongo.docs) == [event_key("s", "a"), event_key("s", "b")]
    assert [p.record.offset for p in dlq.sent] == [1]
    assert source.committed == {0: 3}


async def test_a_full_or_busy_redis_holds_the_batch_says_why_and_then_counts_it_exactly(
        ) -> None:
    pipeline, source, _, redis, _ = make([record(i, f"e{i}") for i in range(3)])
    oom = OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    busy = ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL")
    redis.errors = [oom, busy]
    seen: list[tuple[dict[str, bool], dict[str, str], dict[int, int]]] = []
    keepalive = source.keepalive

    async def watch() -> None:  # called while the pipeline waits out the outage
        seen.append((pipeline.health.checks(), pipeline.health.reasons(),
                     dict(source.committed)))
        await keepalive()

    source.keepalive = watch  # type: ignore[method-assign]
    await drain(pipeline, source)
    assert views(redis) == 3 and source.committed == {0: 3}
    assert [(checks["redis"], committed) for checks, _, committed in seen] == [
        (False, {}), (False, {})]
    assert "OutOfMemoryError" in seen[0][1]["redis"] and "BUSY" in seen[1][1]["redis"]
    assert pipeline.health.reasons() == {}


async def test_a_redis_error_that_is_not_an_outage_crashes_loudly() -> None:
    pipeline, source, _, redis, _ = make([record(0, "e0")])
    redis.errors = [ResponseError("WRONGTYPE Operation against a key holding the wrong kind")]
    with pytest.raises(ResponseError):
        await drain(pipeline, source)
    assert source.committed == {}


async def test_store_outages_are_waited_out_without_committing_early() -> None:
    pipeline, source, mongo, redis, _ = make([record(i, f"e{i}") for i in range(3)])
    mongo.failures, redis.failures = 3, 3
    await drain(pipeline, source)
    assert views(redis) == 3
    assert pipeline.health.checks() == {"mongo": True, "redis": True, "kafka": True}


async def test_a_range_partly_applied_by_another_member_is_applied_only_for_the_rest() -> None:
    records = [record(i, f"e{i}") for i in range(6)]
    pipeline, source, _, redis, _ = make(records)
    # Another aggregator (after a rebalance) already applied offsets 0..2.
    other, other_source, _, _, _ = make(records[:3])
    other.redis = redis
    await drain(other, other_source, batch=3)  # stores applied offset 2 for partition 0
    pipeline.redis = RacingStore(redis)
    await pipeline.process(await source.poll(6, 0))
    assert views(redis) == 6


class RacingStore:
    """Reports no applied offsets (as if read just before another member applied some), so
    the script's own check has to catch the overlap."""

    def __init__(self, inner: FakeAggregateStore) -> None:
        self._inner = inner

    async def applied_offsets(self, sites: object) -> dict[tuple[str, int], int]:
        return {}

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)


@pytest.mark.parametrize("batch", [1, 2, 7])
async def test_counts_do_not_depend_on_batch_size(batch: int) -> None:
    records = [record(i, f"e{i % 5}", page=f"/p{i % 3}", user=f"u{i % 4}") for i in range(20)]
    pipeline, source, _, redis, _ = make(records)
    await drain(pipeline, source, batch=batch)
    assert views(redis) == 5
    assert sum(redis.page_views(SiteKeys("s")).values()) == 5


async def test_a_generation_switch_mid_stream_moves_counting_to_the_new_generation() -> None:
    """A rebuild filled generation "r1" up to offset 5 and switched: the next batch goes there,
    and what "r1" already holds is not added again, but still stored raw in MongoDB (live
    counting is its only writer)."""
    pipeline, source, mongo, redis, _ = make([record(i, f"e{i}") for i in range(10)])
    await pipeline.process(await source.poll(3, 0))  # offsets 0..2 into generation 0
    rebuilt = SiteKeys("s", "r1")
    redis.counters[rebuilt.key(VIEWS, ALL_TIME)] = 6
    redis.offsets[rebuilt.applied_offsets()][0] = 5
    redis.pointers["s"] = "r1"
    await drain(pipeline, source)
    assert redis.counters[rebuilt.key(VIEWS, ALL_TIME)] == 10
    assert views(redis) == 3  # the old generation stopped at the switch
    assert sorted(doc["offset"] for doc in mongo.docs.values()) == list(range(10))


async def test_a_settled_copy_is_stored_first_and_a_later_retry_of_it_does_not_count() -> None:
    """A rebuild counted p0:3 (settled); live counting then meets it with its client retry
    p0:7 in one batch: p0:3 is the stored copy, and nothing counts (p0:3 already did)."""
    settled, retry = decode_all([record(3, "same")])[0], decode_all([record(7, "same")])[0]
    collection = FakeEventCollection()
    assert await collection.sink().write(retry, settled) == []
    assert collection.positions() == {event_key("s", "same"): (0, 3)}
    # Redone after a crash, the same batch finds p0:3 stored: still nothing counts.
    assert await collection.sink().write(retry, settled) == []


async def test_a_switch_between_reading_the_pointer_and_applying_is_caught() -> None:
    pipeline, source, _, redis, _ = make([record(i, f"e{i}") for i in range(4)])
    rebuilt = SiteKeys("s", "r1")
    read_pointer = redis.current

    async def switch_right_after_reading(site_ids: object) -> dict[str, SiteKeys]:
        current = await read_pointer(site_ids)  # type: ignore[arg-type]
        redis.counters[rebuilt.key(VIEWS, ALL_TIME)] = 2  # offsets 0 and 1, already rebuilt
        redis.offsets[rebuilt.applied_offsets()][0] = 1
        redis.pointers["s"] = "r1"
        return current

    redis.current = switch_right_after_reading  # type: ignore[method-assign]
    await pipeline.process(await source.poll(4, 0))
    assert redis.counters[rebuilt.key(VIEWS, ALL_TIME)] == 4
    assert views(redis) == 0


async def test_the_copy_an_earlier_attempt_stored_counts_even_when_not_the_first_in_kafka_order(
        ) -> None:
    """A crashed attempt stored the retry at p1:9; the redo batch holds p0:5 and p1:9 of the
    same id: the stored copy (p1:9) counts, once, and p0:5 is the client retry."""
    early, late = record(5, "same", partition=0), record(9, "same", partition=1)
    collection = FakeEventCollection()
    sink = collection.sink()
    assert [(r.partition, r.offset) for r in await sink.write(decode_all([late])[0])] == [(1, 9)]
    counting = await sink.write(decode_all([early, late])[0])
    assert [(r.partition, r.offset) for r in counting] == [(1, 9)]
    assert collection.positions() == {event_key("s", "same"): (1, 9)}


async def test_copies_of_one_id_in_a_fresh_batch_count_the_first_in_kafka_order() -> None:
    sink_records = decode_all([record(9, "x", partition=1), record(5, "x", partition=0),
                               record(6, "y", partition=0)])[0]
    collection = FakeEventCollection()
    counting = await collection.sink().write(sink_records)
    assert sorted((r.partition, r.offset) for r in counting) == [(0, 5), (0, 6)]
    assert collection.positions() == {event_key("s", "x"): (0, 5), event_key("s", "y"): (0, 6)}


async def test_a_redo_of_a_batch_whose_stored_copy_is_not_the_first_counts_it_exactly_once(
        ) -> None:
    """Through the whole pipeline: nothing lost, nothing doubled."""
    records = [record(0, "a", partition=0), record(5, "same", partition=0),
               record(9, "same", partition=1)]
    pipeline, source, mongo, redis, _ = make(records)
    await mongo.sink().write(decode_all(records[2:])[0])  # the crashed attempt's write
    await drain(pipeline, source)
    assert views(redis) == 2


class RecordingStore:
    """Records the offset ranges and the cost of every apply call, then applies it."""

    def __init__(self, inner: FakeAggregateStore, fail_on_call: int = 0) -> None:
        self._inner = inner
        self.calls: list[tuple[dict[int, tuple[int, int]], int]] = []
        self._fail_on_call = fail_on_call

    async def apply_ranges(self, ops: RedisOps, ranges: Mapping[int, tuple[int, int]],
                           live: bool = True) -> dict[int, int] | None:
        if len(self.calls) + 1 == self._fail_on_call:
            raise RuntimeError("crash between two pieces")
        self.calls.append((dict(ranges), script_cost(ops)))
        return await self._inner.apply_ranges(ops, ranges, live)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)


def many_pages(n: int, partitions: int = 2) -> list[Record]:
    """A site with a new page and visitor every event, over ``partitions`` partitions."""
    return [record(i // partitions, f"e{i}", page=f"/p{i}", user=f"u{i}",
                   partition=i % partitions) for i in range(n)]


def page_views(redis: FakeAggregateStore) -> Counter[str]:
    return redis.page_views(SiteKeys("s"))


async def test_a_batch_too_costly_for_one_script_is_applied_in_pieces_that_cover_it() -> None:
    pipeline, source, _, redis, _ = make(many_pages(60))
    pipeline.max_script_cost = 200
    pipeline.redis = recording = RecordingStore(redis)
    await pipeline.process(await source.poll(60, 0))
    assert len(recording.calls) > 1
    assert max(cost for _, cost in recording.calls) <= 2 * 200
    for partition in (0, 1):  # the pieces' ranges tile each partition's offsets in order
        covered = [ranges[partition] for ranges, _ in recording.calls if partition in ranges]
        assert covered[0][0] == 0 and covered[-1][1] == 29
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(covered))
    assert views(redis) == 60
    assert page_views(redis) == Counter({f"/p{i}": 1 for i in range(60)})
    assert source.committed == {0: 30, 1: 30}


async def test_a_crash_between_two_pieces_counts_the_rest_once_on_redelivery() -> None:
    records = many_pages(60)
    pipeline, source, mongo, redis, _ = make(records)
    pipeline.max_script_cost = 200
    pipeline.redis = RecordingStore(redis, fail_on_call=3)
    with pytest.raises(RuntimeError):
        await pipeline.process(await source.poll(60, 0))
    assert 0 < views(redis) < 60 and not source.committed  # two pieces applied, none committed

    restarted, _, _, _, _ = make(records)
    restarted.mongo, restarted.redis = mongo.sink(), redis
    source.rewind()
    await restarted.process(await source.poll(60, 0))
    assert views(redis) == 60
    assert page_views(redis) == Counter({f"/p{i}": 1 for i in range(60)})


class DeadlockingIndexes(FakeEventCollection):
    """create_index fails with FerretDB's PostgreSQL deadlock ``deadlocks`` times first."""

    def __init__(self, deadlocks: int, message: str = "ERROR: deadlock detected (SQLSTATE 40P01)"
                 ) -> None:
        super().__init__()
        self.deadlocks, self.message, self.created = deadlocks, message, 0

    async def create_index(self, keys: object, name: str) -> str:
        if self.deadlocks:
            self.deadlocks -= 1
            raise OperationFailure(self.message)
        self.created += 1
        return name


async def test_index_creation_is_tried_again_after_a_deadlock_and_other_errors_raise() -> None:
    events = DeadlockingIndexes(deadlocks=2)
    await events.sink().ensure_indexes()
    assert events.created >= 1
    with pytest.raises(OperationFailure):
        await DeadlockingIndexes(deadlocks=1, message="some other failure").sink().ensure_indexes()


class SlowStore:
    """Applies like ``inner`` after a yield, recording how many applies were in flight."""

    def __init__(self, inner: FakeAggregateStore) -> None:
        self._inner = inner
        self.in_flight = 0
        self.most = 0

    async def apply_ranges(self, ops: RedisOps, ranges: Mapping[int, tuple[int, int]],
                           live: bool = True) -> dict[int, int] | None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.001)  # a round trip
            return await self._inner.apply_ranges(ops, ranges, live)
        finally:
            self.in_flight -= 1

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)


async def test_a_batchs_sites_are_applied_a_few_at_a_time_and_each_exactly() -> None:
    sites = [f"site-{i}" for i in range(20)]
    records = [record(i, f"e{i}", site=sites[i % 20]) for i in range(100)]
    pipeline, source, _, redis, _ = make(records)
    slow = SlowStore(redis)
    pipeline.redis = slow
    pipeline.apply_concurrency = 4
    await drain(pipeline, source, batch=100)
    assert slow.most == 4  # in flight together, never more than allowed
    assert [views(redis, site) for site in sites] == [5] * 20
