"""Kafka for the benchmarks: private topics, pre-loading events, and consumer-group lag.

Benchmarks that must not disturb the stack use topics of their own (deleted afterwards);
lag (end offsets minus the group's committed offsets) tells when a group has drained a
topic, which is how drain rates are measured and how a run waits for the stack's own
aggregators to catch up before the next measurement.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts.event import PageView, encode_event
from contracts.topics import DEFAULT_PARTITIONS


@dataclass(frozen=True, slots=True)
class BenchTopic:
    name: str
    dead_letters: str
    group: str
    partitions: int


@asynccontextmanager
async def private_topic(bootstrap: str, label: str,
                        partitions: int = DEFAULT_PARTITIONS) -> AsyncIterator[BenchTopic]:
    """A fresh topic (and dead-letter topic and group name), deleted on the way out."""
    suffix = uuid.uuid4().hex[:10]
    topic = BenchTopic(f"bench-{label}-{suffix}", f"bench-{label}-dlq-{suffix}",
                       f"bench-{label}-group-{suffix}", partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic.name, partitions, 1),
                                   NewTopic(topic.dead_letters, 1, 1)])
        yield topic
    finally:
        try:
            await admin.delete_topics([topic.name, topic.dead_letters])
        finally:
            await admin.close()


async def produce(bootstrap: str, topic: str, events: Iterable[PageView]) -> int:
    """Every event, acknowledged (acks=all, idempotent), as fast as one producer goes."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                                linger_ms=20, max_batch_size=1024 * 1024)
    await producer.start()
    count = 0
    try:
        pending = []
        for event in events:
            pending.append(await producer.send(topic, encode_event(event), key=event.kafka_key))
            count += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


class GroupLag:
    """How far a consumer group is behind the end of a topic. Holds an admin client and a
    metadata-only consumer; use as ``async with GroupLag(...) as lag``."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self._topic, self._group = topic, group
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap,
                                          enable_auto_commit=False)
        self._partitions: list[TopicPartition] = []

    async def __aenter__(self) -> GroupLag:
        await self._admin.start()
        await self._consumer.start()
        described = await self._admin.describe_topics([self._topic])
        numbers = sorted(int(p["partition"]) for p in described[0]["partitions"])
        if not numbers:
            raise RuntimeError(f"topic {self._topic} has no partitions (does it exist?)")
        self._partitions = [TopicPartition(self._topic, p) for p in numbers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def positions(self) -> tuple[int, int]:
        """(records committed by the group, records on the topic), summed over partitions."""
        ends = await self._consumer.end_offsets(self._partitions)
        committed = await self._admin.list_consumer_group_offsets(self._group,
                                                                  partitions=self._partitions)
        done = sum(max(0, meta.offset) for meta in committed.values() if meta is not None)
        return done, sum(ends.values())

    async def lag(self) -> int:
        done, end = await self.positions()
        return max(0, end - done)

    async def lag_if_known(self) -> int | None:
        """The lag, or None while the group's committed offsets are not all readable (a
        coordinator still loading after a Kafka restart answers without them, which
        ``lag`` would count as the whole topic)."""
        ends = await self._consumer.end_offsets(self._partitions)
        committed = await self._admin.list_consumer_group_offsets(self._group,
                                                                  partitions=self._partitions)
        offsets = [committed.get(tp) for tp in self._partitions]
        if any(meta is None or meta.offset < 0 for meta in offsets):
            return None
        done = sum(int(meta.offset) for meta in offsets if meta is not None)
        return max(0, int(sum(ends.values())) - done)
