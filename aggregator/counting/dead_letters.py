"""Undecodable records go to the dead-letter topic with the reason, so the partition keeps
moving and nothing is silently dropped. Called by the pipeline; blocks until Kafka acks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer

from aggregator.counting.source import Record


@dataclass(frozen=True, slots=True)
class Poison:
    record: Record
    reason: str


class DeadLetters(Protocol):
    async def send(self, poison: Sequence[Poison]) -> None: ...


class KafkaDeadLetters:
    """A producer per call: poison is rare, and a fresh producer never carries broken
    idempotence state from an earlier broker outage."""

    def __init__(self, bootstrap: str, topic: str, source_topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._source_topic = source_topic

    async def send(self, poison: Sequence[Poison]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, enable_idempotence=True,
                                    client_id="aggregator-dead-letters")
        await producer.start()
        try:
            futures = []
            for p in poison:
                headers = [("reason", p.reason[:1000].encode()),
                           ("source_topic", self._source_topic.encode()),
                           ("source_partition", str(p.record.partition).encode()),
                           ("source_offset", str(p.record.offset).encode())]
                futures.append(await producer.send(self._topic, p.record.value or b"",
                                                   key=p.record.key, headers=headers))
            for future in futures:
                await future
        finally:
            await producer.stop()


class ListDeadLetters:
    """For unit tests: remembers what would have been dead-lettered."""

    def __init__(self) -> None:
        self.sent: list[Poison] = []

    async def send(self, poison: Sequence[Poison]) -> None:
        self.sent.extend(poison)
