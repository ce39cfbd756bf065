"""The overlapping loop (``Pipeline.run``): batch N+1 goes to MongoDB while batch N goes to
Redis, yet Redis sees each (site, partition) in offset order, every batch is committed in
order and only once both stores hold it, and one script per site covers all its partitions."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from aggregator.counting.aggregate import RedisOps
from aggregator.counting.source import InMemorySource, Record
from contracts.aggregates import ALL_TIME, VIEWS
from contracts.keys import SiteKeys
from tests.unit.fakes import FakeAggregateStore, FakeEventCollection
from tests.unit.test_pipeline import make, record, views

Log = list[tuple[str, object]]


class StopWhenDrained(InMemorySource):
    """Serves its records, then asks the pipeline to stop (it finishes what is in hand)."""

    def __init__(self, records: Sequence[Record], stopping: asyncio.Event, log: Log) -> None:
        super().__init__(records)
        self._stopping, self._log = stopping, log

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        batch = await super().poll(max_records, timeout_ms)
        if not batch:
            self._stopping.set()
        return batch

    async def commit(self, next_offsets: dict[int, int]) -> None:
        self._log.append(("commit", dict(next_offsets)))
        await super().commit(next_offsets)


class LoggedCollection(FakeEventCollection):
    def __init__(self, log: Log, rng: random.Random) -> None:
        super().__init__()
        self._log, self._rng = log, rng

    async def insert_many(self, documents: list[dict[str, Any]], ordered: bool = True) -> None:
        await asyncio.sleep(self._rng.random() / 500)
        self._log.append(("mongo", {(d["partition"], d["offset"]) for d in documents}))
        await super().insert_many(documents, ordered)


class LoggedStore(FakeAggregateStore):
    def __init__(self, log: Log, rng: random.Random) -> None:
        super().__init__()
        self._log, self._rng = log, rng

    async def apply_ranges(self, ops: RedisOps, ranges: Mapping[int, tuple[int, int]],
                           live: bool = True) -> dict[int, int] | None:
        await asyncio.sleep(self._rng.random() / 500)
        stored = await super().apply_ranges(ops, ranges, live)
        if stored is None:
            self._log.append(("redis", (ops.keys[0], dict(ranges))))
        return stored


def records_over(partitions: int, per_partition: int, sites: int) -> list[Record]:
    rng = random.Random(5)
    out = [record(o, f"p{p}-{o}", site=f"s{rng.randrange(sites)}", partition=p)
           for o in range(per_partition) for p in range(partitions)]
    return out


def running(records: list[Record], seed: int) -> tuple[Any, StopWhenDrained,
                                                       LoggedCollection, LoggedStore, Log]:
    log: Log = []
    rng = random.Random(seed)
    pipeline, _, _, _, _ = make([])
    source = StopWhenDrained(records, pipeline.stopping, log)
    mongo, redis = LoggedCollection(log, rng), LoggedStore(log, rng)
    pipeline.source, pipeline.mongo, pipeline.redis = source, mongo.sink(), redis
    return pipeline, source, mongo, redis, log


async def test_the_next_batch_goes_to_mongodb_while_the_previous_one_goes_to_redis() -> None:
    """Redis holds batch 1's apply until batch 2's insert has started: without the overlap
    this never finishes."""
    pipeline, _, mongo, redis, _ = running([record(i, f"e{i}") for i in range(6)], seed=1)
    second_insert = asyncio.Event()
    insert, apply = mongo.insert_many, redis.apply_ranges

    async def insert_and_tell(documents: list[dict[str, Any]], ordered: bool = True) -> None:
        if documents[0]["offset"] >= 3:
            second_insert.set()
        await insert(documents, ordered)

    async def apply_after_the_next_insert(ops: RedisOps, ranges: Mapping[int, tuple[int, int]],
                                          live: bool = True) -> dict[int, int] | None:
        if ranges[0][0] == 0:
            await second_insert.wait()
        return await apply(ops, ranges, live)

    mongo.insert_many = insert_and_tell  # type: ignore[method-assign]
    redis.apply_ranges = apply_after_the_next_insert  # type: ignore[method-assign]
    await asyncio.wait_for(pipeline.run(3, 0), timeout=10)
    assert views(redis) == 6


async def test_batches_reach_redis_in_offset_order_and_are_committed_only_after_both_stores(
        ) -> None:
    for seed in range(20):
        records = records_over(partitions=3, per_partition=40, sites=3)
        pipeline, source, _, redis, log = running(records, seed)
        await asyncio.wait_for(pipeline.run(17, 0), timeout=10)
        assert sum(views(redis, f"s{i}") for i in range(3)) == 120
        assert source.committed == {0: 40, 1: 40, 2: 40}
        in_mongo: set[tuple[int, int]] = set()
        in_redis: dict[int, int] = {}  # partition -> highest offset applied, over all sites
        last_in_redis: dict[tuple[str, int], int] = {}
        committed: dict[int, int] = {}
        for kind, what in log:
            if kind == "mongo":
                assert isinstance(what, set)
                in_mongo |= what
            elif kind == "redis":
                assert isinstance(what, tuple)
                marker, ranges = what
                for p, (first, last) in ranges.items():
                    assert first > last_in_redis.get((marker, p), -1), "out of offset order"
                    last_in_redis[(marker, p)] = last
                    in_redis[p] = max(in_redis.get(p, -1), last)
            else:
                assert isinstance(what, dict)
                for p, next_offset in what.items():
                    assert next_offset >= committed.get(p, 0), "a commit went backwards"
                    committed[p] = next_offset
                    below = {(p, o) for o in range(next_offset)}
                    assert below <= in_mongo, f"committed {p}:{next_offset} before MongoDB"
                    assert in_redis.get(p, -1) >= next_offset - 1, \
                        f"committed {p}:{next_offset} before Redis"


async def test_one_script_per_site_covers_every_partition_of_the_batch() -> None:
    records = [record(p * 10 + i, f"e{p}-{i}", site=f"s{i % 2}", partition=p)
               for p in range(3) for i in range(4)]
    pipeline, source, _, redis, _ = make(records)
    await pipeline.process(await source.poll(12, 0))
    assert redis.applies == 2  # two sites, three partitions each
    for site, last in (("s0", 2), ("s1", 3)):
        assert redis.offsets[SiteKeys(site).applied_offsets()] == {0: last, 1: 10 + last,
                                                                   2: 20 + last}
        assert views(redis, site) == 6


async def test_a_site_script_refused_for_one_partition_applies_the_rest_of_every_partition(
        ) -> None:
    """Another member applied partition 1 up to offset 11 meanwhile: the script refuses the
    whole site's batch, and the retry applies partition 0 whole and partition 1 from 12."""
    records = [record(p * 10 + i, f"e{p}-{i}", partition=p) for p in range(2)
               for i in range(4)]
    pipeline, source, _, redis, _ = make(records)
    redis.offsets[SiteKeys("s").applied_offsets()][1] = 11
    redis.counters[SiteKeys("s").key(VIEWS, ALL_TIME)] = 2  # offsets 10 and 11

    async def nothing_applied(sites: object) -> dict[tuple[str, int], int]:
        return {}  # read before the other member applied

    redis.applied_offsets = nothing_applied  # type: ignore[method-assign]
    await pipeline.process(await source.poll(8, 0))
    assert views(redis) == 8
    assert redis.offsets[SiteKeys("s").applied_offsets()] == {0: 3, 1: 13}


async def test_a_redelivery_while_a_batch_is_in_flight_counts_exactly() -> None:
    """A rebalance hands the partition back from its last commit while the next batch is
    still on its way to Redis: the redelivered records are refused or skipped, none lost."""
    records = [record(i, f"e{i}", user=f"u{i}") for i in range(30)]
    pipeline, source, _, redis, _ = running(records, seed=3)
    polls = 0
    poll = source.poll

    async def rewinding_poll(max_records: int, timeout_ms: int) -> list[Record]:
        nonlocal polls
        polls += 1
        if polls in (3, 6):
            source.rewind()  # back to the last commit, as after a reassignment
        return await poll(max_records, timeout_ms)

    source.poll = rewinding_poll  # type: ignore[method-assign]
    await asyncio.wait_for(pipeline.run(4, 0), timeout=10)
    assert views(redis) == 30
    assert source.committed == {0: 30}


async def test_stopping_during_a_redis_outage_commits_nothing_it_did_not_apply() -> None:
    pipeline, source, mongo, redis, _ = make([record(i, f"e{i}") for i in range(6)])

    async def down(ops: RedisOps, ranges: object, live: bool = True) -> None:
        raise RedisConnectionError("fake outage")

    redis.apply_ranges = down  # type: ignore[method-assign]
    both_stored = asyncio.Event()
    insert = mongo.insert_many

    async def insert_and_tell(documents: list[dict[str, Any]], ordered: bool = True) -> None:
        await insert(documents, ordered)
        if len(mongo.docs) == 6:
            both_stored.set()

    mongo.insert_many = insert_and_tell  # type: ignore[method-assign]
    applying = asyncio.create_task(pipeline.run(3, 0))
    await asyncio.wait_for(both_stored.wait(), timeout=5)
    pipeline.stopping.set()
    await asyncio.wait_for(applying, timeout=5)
    assert len(mongo.docs) == 6
    assert source.committed == {}
    assert views(redis) == 0


class Rebalancing(StopWhenDrained):
    """From the second poll on, a rebalance is under way: as in aiokafka, a poll returns only
    once the new assignment is made, and the revocation (on_partitions_revoked) lets that
    happen only when every batch in hand is committed (``settled``)."""

    def __init__(self, records: Sequence[Record], stopping: asyncio.Event, log: Log) -> None:
        super().__init__(records, stopping, log)
        self.polls = 0
        self.revocation_done = asyncio.Event()

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        self.polls += 1
        if self.polls == 2:
            await self.revocation_done.wait()
        return await super().poll(max_records, timeout_ms)

    def settled(self) -> None:
        self.revocation_done.set()


async def test_a_rebalance_waiting_for_the_batch_in_hand_gets_its_commit_while_a_poll_blocks(
        ) -> None:
    log: Log = []
    pipeline, _, _, redis, _ = make([])
    source = Rebalancing([record(i, f"e{i}") for i in range(6)], pipeline.stopping, log)
    pipeline.source = source
    await asyncio.wait_for(pipeline.run(3, 0), timeout=10)
    assert views(redis) == 6
    assert source.committed == {0: 6}
