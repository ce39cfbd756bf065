"""Per-partition micro-batches: concurrent requests share a batch, each request is answered
only when every one of its events is acknowledged, order per partition is kept, and events
that never reached the producer fail and release their capacity."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaError, KafkaTimeoutError

from contracts.event import PageView, encode_event
from ingest_gateway.batching import PartitionBatcher, Record, partition_of
from tests.unit.kafka_fakes import HeldProducer, handed_over, on_distinct_partitions


def records(events: list[PageView]) -> list[Record]:
    return [(e.kafka_key, encode_event(e)) for e in events]


def views(user: str, count: int, start: int = 0) -> list[PageView]:
    return [PageView(f"{user}-{i}", "s", "/p", user, 1, 1) for i in range(start, start + count)]


class Released:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, n: int) -> None:
        self.count += n


async def test_requests_queued_while_a_batch_is_on_its_way_share_the_next_batch() -> None:
    producer = HeldProducer()
    released = Released()
    batcher = PartitionBatcher(producer, "t", released)
    first = await batcher.submit(records(views("a", 1)))
    await handed_over(producer, 1)
    producer.room.clear()  # the accumulator still holds the first batch
    later = [await batcher.submit(records(views(user, 2))) for user in ("b", "c", "d")]
    await asyncio.sleep(0)
    producer.room.set()
    await handed_over(producer, 2)
    assert [len(batch.records) for _, batch in producer.batches] == [1, 6]
    producer.pending[1].set_result(object())
    await asyncio.gather(*later)
    assert not first.done() and released.count == 6
    producer.pending[0].set_result(object())
    await first
    assert released.count == 7


async def test_a_request_over_two_partitions_is_answered_when_both_are_acknowledged() -> None:
    producer = HeldProducer(partitions=2)
    batcher = PartitionBatcher(producer, "t", Released())
    acknowledged = await batcher.submit(records(on_distinct_partitions(2, 2)))
    await handed_over(producer, 2)
    producer.pending[0].set_result(object())
    await asyncio.sleep(0)
    assert not acknowledged.done()
    producer.pending[1].set_result(object())
    await acknowledged


async def test_a_request_split_over_two_full_batches_waits_for_both_and_keeps_order() -> None:
    producer = HeldProducer(batch_capacity=2)
    batcher = PartitionBatcher(producer, "t", Released())
    events = views("a", 3)
    acknowledged = await batcher.submit(records(events))
    await handed_over(producer, 2)
    sent = [value for _, batch in producer.batches for _, value in batch.records]
    assert sent == [encode_event(e) for e in events]
    producer.pending[0].set_result(object())
    await asyncio.sleep(0)
    assert not acknowledged.done()
    producer.pending[1].set_result(object())
    await acknowledged


async def test_one_partition_sends_in_arrival_order_across_requests() -> None:
    producer = HeldProducer(batch_capacity=3)
    batcher = PartitionBatcher(producer, "t", Released())
    producer.room.clear()
    sent_order: list[PageView] = []
    for start in range(0, 10, 2):
        chunk = views("same-visitor", 2, start)
        sent_order += chunk
        await batcher.submit(records(chunk))
    producer.room.set()
    await handed_over(producer, 4)
    sent = [value for _, batch in producer.batches for _, value in batch.records]
    assert sent == [encode_event(e) for e in sent_order]


async def test_a_failed_batch_fails_every_request_in_it_with_the_error() -> None:
    producer = HeldProducer()
    released = Released()
    batcher = PartitionBatcher(producer, "t", released)
    producer.room.clear()
    requests = [await batcher.submit(records(views(u, 1))) for u in ("a", "b")]
    producer.room.set()
    await handed_over(producer, 1)
    producer.pending[0].set_exception(KafkaTimeoutError())
    for request in requests:
        with pytest.raises(KafkaTimeoutError):
            await request
    assert released.count == 2


async def test_closing_fails_what_never_reached_the_producer_and_releases_it() -> None:
    producer = HeldProducer()
    released = Released()
    batcher = PartitionBatcher(producer, "t", released)
    producer.room.clear()  # the producer never takes the batch
    queued = await batcher.submit(records(views("a", 3)))
    await asyncio.sleep(0)
    await batcher.close(KafkaError("replaced"))
    with pytest.raises(KafkaError):
        await queued
    assert released.count == 3 and producer.pending == []
    with pytest.raises(KafkaError):
        await batcher.submit(records(views("b", 1)))


async def test_requests_within_the_linger_share_one_closed_batch() -> None:
    producer = HeldProducer()
    batcher = PartitionBatcher(producer, "t", Released(), linger_s=0.05)
    first = await batcher.submit(records(views("a", 1)))
    for user in ("b", "c"):
        await asyncio.sleep(0.01)  # arriving while the first event lingers
        await batcher.submit(records(views(user, 1)))
    await handed_over(producer, 1)
    [(_, batch)] = producer.batches
    assert len(batch.records) == 3 and batch.closed  # closed: aiokafka adds no linger
    assert not first.done()


def test_partition_of_is_stable_and_spreads_keys() -> None:
    keys = [f"site:user-{i}".encode() for i in range(10_000)]
    counts = [0] * 6
    for key in keys:
        counts[partition_of(key, 6)] += 1
    assert partition_of(b"site:u1", 6) == partition_of(b"site:u1", 6)
    assert min(counts) > 10_000 / 6 * 0.9
