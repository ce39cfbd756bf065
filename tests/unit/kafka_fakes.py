"""aiokafka's producer as far as the gateway's publisher uses it, held by the test: every batch
stays pending until the test resolves its future, as with a slow broker."""

from __future__ import annotations

import asyncio

from contracts.event import PageView
from ingest_gateway.batching import partition_of
from tests.stack import eventually


class FakeClient:
    async def force_metadata_update(self) -> bool:
        return True


class FakeBatch:
    """aiokafka's BatchBuilder as far as the publisher uses it: appends until full."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes]] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def append(self, *, timestamp: None, key: bytes, value: bytes) -> object | None:
        assert not self.closed
        if len(self.records) == self.capacity:
            return None
        self.records.append((key, value))
        return object()


class HeldProducer:
    """Keeps every batch pending until the test resolves it, as a slow broker would.
    ``pending`` holds one future per batch handed over; ``batches`` what each held."""

    def __init__(self, partitions: int = 1, batch_capacity: int = 1000) -> None:
        self.client = FakeClient()
        self.partitions = partitions
        self.batch_capacity = batch_capacity
        self.pending: list[asyncio.Future[object]] = []
        self.batches: list[tuple[int, FakeBatch]] = []
        self.room = asyncio.Event()  # cleared: send_batch waits, as with a full accumulator
        self.room.set()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *,
                         partition: int) -> asyncio.Future[object]:
        await self.room.wait()
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        self.batches.append((partition, batch))
        return future


def on_distinct_partitions(count: int, partitions: int) -> list[PageView]:
    """``count`` events whose keys land on ``count`` different partitions."""
    found: dict[int, PageView] = {}
    for i in range(1_000):
        event = PageView(f"e{i}", "s", "/p", f"user-{i}", 1, 1)
        found.setdefault(partition_of(event.kafka_key, partitions), event)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("no such keys")


async def handed_over(producer: HeldProducer, batches: int) -> None:
    await eventually(lambda: asyncio.sleep(0, len(producer.pending) == batches),
                     message=f"{batches} batches handed over")


