"""The Kafka publisher's bookkeeping with a fake producer: a request that gives up does not
give back capacity that aiokafka still holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka.errors import KafkaTimeoutError

from contracts.event import PageView
from contracts.settings import GatewaySettings
from ingest_gateway.publisher import KafkaPublisher, PublishUnavailable
from tests.stack import eventually

EVENTS = [PageView(f"e{i}", "s", "/p", "u", 1, 1) for i in range(3)]


class FakeClient:
    async def force_metadata_update(self) -> bool:
        return True


class HeldProducer:
    """Keeps every sent message pending until the test resolves it, as a slow broker would."""

    def __init__(self) -> None:
        self.client = FakeClient()
        self.pending: list[asyncio.Future[object]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future


@pytest.fixture
def producer() -> HeldProducer:
    return HeldProducer()


@pytest.fixture
async def publisher(producer: HeldProducer) -> AsyncIterator[KafkaPublisher]:
    settings = GatewaySettings(produce_timeout_s=0.2)
    kafka = KafkaPublisher(settings, max_in_flight=5,
                           new_producer=lambda _: producer)
    runner = asyncio.create_task(kafka.run())
    await eventually(lambda: asyncio.sleep(0, kafka.ready), timeout_s=5, message="connected")
    yield kafka
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def test_acknowledged_messages_release_their_capacity(
        publisher: KafkaPublisher, producer: HeldProducer) -> None:
    publishing = asyncio.create_task(publisher.publish(EVENTS))
    await asyncio.sleep(0)  # the fake's sends never suspend: all three are out now
    assert len(producer.pending) == 3
    assert publisher.in_flight == 3
    for future in producer.pending:
        future.set_result(object())
    await publishing
    assert publisher.in_flight == 0


async def test_publishing_no_events_succeeds_without_sending(
        publisher: KafkaPublisher, producer: HeldProducer) -> None:
    await publisher.publish([])
    assert producer.pending == [] and publisher.in_flight == 0


async def test_a_timed_out_request_keeps_its_messages_in_flight_until_aiokafka_resolves_them(
        publisher: KafkaPublisher, producer: HeldProducer) -> None:
    with pytest.raises(PublishUnavailable) as caught:
        await publisher.publish(EVENTS)
    assert caught.value.reason == "kafka_timeout"
    assert [f.cancelled() for f in producer.pending] == [False] * 3  # still in the producer
    assert publisher.in_flight == 3
    with pytest.raises(PublishUnavailable) as refused:  # 3 + 3 > 5: memory stays bounded
        await publisher.publish(EVENTS)
    assert refused.value.reason == "too_many_in_flight"
    producer.pending[0].set_result(object())
    producer.pending[1].set_exception(KafkaTimeoutError())
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert publisher.in_flight == 1
    producer.pending[2].set_result(object())
    await asyncio.sleep(0)
    assert publisher.in_flight == 0


async def test_a_failed_message_fails_the_request_at_once(
        publisher: KafkaPublisher, producer: HeldProducer) -> None:
    publisher_task = asyncio.create_task(publisher.publish(EVENTS[:2]))
    await asyncio.sleep(0)
    assert len(producer.pending) == 2
    producer.pending[0].set_exception(KafkaTimeoutError())
    with pytest.raises(PublishUnavailable) as caught:
        await publisher_task
    assert caught.value.reason == "kafka_error"
    assert publisher.in_flight == 1
    producer.pending[1].set_result(object())
    await asyncio.sleep(0)
    assert publisher.in_flight == 0
