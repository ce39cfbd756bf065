"""The narrow consumer interface the pipeline depends on, and its Kafka implementation.

The pipeline only polls batches, commits offsets and keeps its group membership alive while
it waits out an outage; ``InMemorySource`` gives unit tests the same interface without a
broker. Called only from the aggregator's single consumer task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from aggregator.outage import Outage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class RecordSource(Protocol):
    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]: ...

    async def commit(self, next_offsets: dict[int, int]) -> None:
        """Commit ``partition -> next offset to read``; partitions no longer owned are skipped."""

    async def keepalive(self) -> None:
        """Called between retries while a store is down, so the group keeps this member.
        Never while a poll is in progress (the pipeline serialises the two)."""

    def settled(self) -> None:
        """Every batch polled so far is committed (or given up): a rebalance may proceed."""


class InMemorySource:
    """A single-partition-list source for unit tests: records are served in order, commits
    are remembered, and ``rewind`` simulates a redelivery from the last commit."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = list(records)
        self.committed: dict[int, int] = {}
        self._position = 0

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        batch = self.records[self._position:self._position + max_records]
        self._position += len(batch)
        return batch

    async def commit(self, next_offsets: dict[int, int]) -> None:
        self.committed.update(next_offsets)

    async def keepalive(self) -> None:
        await asyncio.sleep(0)

    def settled(self) -> None:
        pass

    def rewind(self) -> None:
        """Redeliver everything after the committed offsets, as Kafka does after a crash."""
        self._position = 0
        self.records = [r for r in self.records if r.offset >= self.committed.get(r.partition, 0)]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Let the batches in hand (up to two: one going to Redis, the next to MongoDB) finish
        # and commit before another member takes over, so the new owner redoes as little as
        # possible. Polls return nothing meanwhile (aiokafka fetches nothing during a
        # reassignment), so no new batch starts. Past the timeout the batches still finish,
        # in order: the offsets in Redis refuse whatever the new owner applied first, and
        # commits of partitions no longer owned are skipped.
        try:
            await asyncio.wait_for(self._source.idle.wait(), timeout=15)
        except TimeoutError:
            log.warning("revoke_while_busy", extra={"fields": {"partitions": len(revoked)}})
        log.info("partitions_revoked", extra={"fields": {
            "partitions": sorted(tp.partition for tp in revoked)}})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions_assigned", extra={"fields": {
            "partitions": sorted(tp.partition for tp in assigned)}})


class KafkaSource:
    """An aiokafka group consumer with manual commits, reading from the committed offsets
    (or the beginning of the topic for a new group)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic
        self.idle = asyncio.Event()
        self.idle.set()
        self._keepalive = Outage(log, "keepalive_failed", "keepalive_recovered")

    @classmethod
    def create(cls, bootstrap: str, topic: str, group_id: str, client_id: str,
               max_records: int) -> KafkaSource:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group_id, client_id=client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed", max_poll_records=max_records,
            fetch_max_wait_ms=20, max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=10_000, heartbeat_interval_ms=2_000,
            max_poll_interval_ms=300_000, rebalance_timeout_ms=30_000)
        return cls(consumer, topic)

    async def start(self) -> None:
        self._consumer.subscribe([self._topic], listener=_Listener(self))
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()  # leaves the group

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        records = [Record(tp.partition, msg.offset, msg.key, msg.value)
                   for tp, messages in batches.items() for msg in messages]
        if records:
            self.idle.clear()
        return records

    def settled(self) -> None:
        self.idle.set()

    async def commit(self, next_offsets: dict[int, int]) -> None:
        owned = self._consumer.assignment()
        offsets = {TopicPartition(self._topic, p): o for p, o in next_offsets.items()
                   if TopicPartition(self._topic, p) in owned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions; the new owner redoes from the last commit and
            # the applied offsets in Redis keep it from counting anything twice.
            log.warning("commit_failed_rebalance", extra={"fields": {"error": repr(exc)}})

    async def keepalive(self) -> None:
        owned = self._consumer.assignment()
        if owned:
            self._consumer.pause(*owned)
        try:
            # Partitions assigned meanwhile are not paused: put back anything read from them.
            stray = await self._consumer.getmany(timeout_ms=100)
            for tp, messages in stray.items():
                if messages:
                    self._consumer.seek(tp, messages[0].offset)
            self._keepalive.succeeded()
        except KafkaError as exc:
            self._keepalive.failed(exc)
        finally:
            owned = self._consumer.assignment()
            if owned:
                self._consumer.resume(*owned)

    async def lag(self) -> dict[int, int]:
        """Partition -> records behind the end of the partition, for the owned partitions."""
        lags: dict[int, int] = {}
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await self._consumer.position(tp)
            except (KafkaError, IllegalStateError):
                continue
            lags[tp.partition] = max(0, highwater - position)
        return lags
