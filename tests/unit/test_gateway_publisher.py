"""The Kafka publisher's bookkeeping with a fake producer: a request that gives up does not
give back capacity that aiokafka still holds; concurrent requests share per-partition
batches, and each is answered only when every one of its events is acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber, ProducerClosed

from contracts.event import PageView
from contracts.settings import GatewaySettings
from ingest_gateway.publisher import FATAL_PRODUCER_ERRORS, KafkaPublisher, PublishUnavailable
from tests.stack import eventually
from tests.unit.kafka_fakes import HeldProducer, handed_over, on_distinct_partitions

EVENTS = [PageView(f"e{i}", "s", "/p", "u", 1, 1) for i in range(3)]


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
    await handed_over(producer, 1)
    assert publisher.in_flight == 3
    producer.pending[0].set_result(object())
    await publishing
    assert publisher.in_flight == 0


async def test_publishing_no_events_succeeds_without_sending(
        publisher: KafkaPublisher, producer: HeldProducer) -> None:
    await publisher.publish([])
    assert producer.pending == [] and publisher.in_flight == 0


async def test_a_timed_out_request_keeps_its_messages_in_flight_until_aiokafka_resolves_them(
        publisher: KafkaPublisher, producer: HeldProducer) -> None:
    with pytest.raises(PublishUnavailable) as caught:
        await publisher.publish(EVENTS[:2])
    assert caught.value.reason == "kafka_timeout"
    with pytest.raises(PublishUnavailable):
        await publisher.publish(EVENTS[2:])
    assert [f.cancelled() for f in producer.pending] == [False] * 2  # still in the producer
    assert publisher.in_flight == 3
    with pytest.raises(PublishUnavailable) as refused:  # 3 + 3 > 5: memory stays bounded
        await publisher.publish(EVENTS)
    assert refused.value.reason == "too_many_in_flight"
    producer.pending[0].set_result(object())
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert publisher.in_flight == 1
    producer.pending[1].set_exception(KafkaTimeoutError())
    await asyncio.sleep(0)
    assert publisher.in_flight == 0


async def test_a_failed_message_fails_the_request_at_once(
        publisher: KafkaPublisher, producer: HeldProducer) -> None:
    producer.partitions = 4  # three events on three partitions: one batch each
    spread = on_distinct_partitions(3, 4)
    publisher_task = asyncio.create_task(publisher.publish(spread))
    await handed_over(producer, 3)
    producer.pending[0].set_exception(KafkaTimeoutError())
    with pytest.raises(PublishUnavailable) as caught:
        await publisher_task
    assert caught.value.reason == "kafka_error"
    assert publisher.in_flight == 2
    producer.pending[1].set_result(object())
    producer.pending[2].set_result(object())
    await asyncio.sleep(0)
    assert publisher.in_flight == 0


class Producers:
    """A factory handing out a new ``HeldProducer`` per (re)connection, as aiokafka would."""

    def __init__(self) -> None:
        self.made: list[HeldProducer] = []

    def __call__(self, _: GatewaySettings) -> HeldProducer:
        self.made.append(HeldProducer())
        return self.made[-1]


@pytest.mark.parametrize("error", FATAL_PRODUCER_ERRORS, ids=lambda e: e.__name__)
async def test_a_producer_whose_idempotence_state_broke_is_replaced(
        error: type[Exception]) -> None:
    producers = Producers()
    kafka = KafkaPublisher(GatewaySettings(produce_timeout_s=0.5),
                           new_producer=producers)
    runner = asyncio.create_task(kafka.run())
    try:
        await eventually(lambda: asyncio.sleep(0, kafka.ready), timeout_s=5)
        failing = asyncio.create_task(kafka.publish(EVENTS[:1]))
        await eventually(lambda: asyncio.sleep(0, bool(producers.made[0].pending)))
        producers.made[0].pending[0].set_exception(error())
        with pytest.raises(PublishUnavailable):
            await failing
        await eventually(lambda: asyncio.sleep(0, len(producers.made) == 2), timeout_s=5,
                         message="a new producer")
        publishing = asyncio.create_task(kafka.publish(EVENTS[1:2]))
        await eventually(lambda: asyncio.sleep(0, bool(producers.made[1].pending)))
        producers.made[1].pending[0].set_result(object())
        await publishing  # the new producer publishes
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_failure_of_a_replaced_producer_does_not_replace_its_successor() -> None:
    producers = Producers()
    kafka = KafkaPublisher(GatewaySettings(produce_timeout_s=5.0),
                           new_producer=producers)
    runner = asyncio.create_task(kafka.run())
    try:
        await eventually(lambda: asyncio.sleep(0, kafka.ready), timeout_s=5)
        producers.made[0].partitions = 2  # two batches in flight on the same producer
        one, other = on_distinct_partitions(2, 2)
        first = asyncio.create_task(kafka.publish([one]))
        second = asyncio.create_task(kafka.publish([other]))
        await eventually(lambda: asyncio.sleep(0, len(producers.made[0].pending) == 2))
        producers.made[0].pending[0].set_exception(OutOfOrderSequenceNumber())
        with pytest.raises(PublishUnavailable):
            await first
        await eventually(lambda: asyncio.sleep(0, len(producers.made) == 2), timeout_s=5)
        # The old producer fails its other pending send only now (as stopping it does).
        producers.made[0].pending[1].set_exception(ProducerClosed())
        with pytest.raises(PublishUnavailable):
            await second
        # Let the publisher's loop act on a "broken" signal, if it got one (it reacts within
        # a few loop iterations: nothing in between waits for time).
        for _ in range(50):
            await asyncio.sleep(0)
        third = asyncio.create_task(kafka.publish(EVENTS[2:3]))
        await eventually(lambda: asyncio.sleep(0, bool(producers.made[-1].pending)))
        producers.made[-1].pending[0].set_result(object())
        await third
        assert len(producers.made) == 2
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
