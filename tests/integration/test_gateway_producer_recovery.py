"""The gateway's Kafka producer against the real Kafka: a producer whose idempotence state
broke is replaced, and a Kafka outage is a 503 after ``PRODUCE_TIMEOUT_S``, not before."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import OutOfOrderSequenceNumber

from contracts.event import PageView
from contracts.settings import Backends, GatewaySettings
from ingest_gateway.publisher import KafkaPublisher, PublishUnavailable, _aiokafka_producer
from tests.gateway_process import GatewayProcess
from tests.kafka_tools import end_offsets, events_of_site, partitions_of, read_between
from tests.stack import Stack, eventually, restore, stop_part


def page_view(site_id: str, page_id: str) -> PageView:
    now = time.time_ns() // 1_000_000
    return PageView(event_id=str(uuid.uuid4()), site_id=site_id, page_id=page_id,
                    user_id="u1", ts=now, received_at=now)


class CountedProducers:
    """The publisher's producer factory: the real aiokafka producer, remembered."""

    def __init__(self) -> None:
        self.made: list[AIOKafkaProducer] = []

    def __call__(self, settings: GatewaySettings) -> AIOKafkaProducer:
        self.made.append(_aiokafka_producer(settings))
        return self.made[-1]


@pytest.fixture
def producers() -> CountedProducers:
    return CountedProducers()


@pytest.fixture
async def publisher(stack: Stack, producers: CountedProducers
                    ) -> AsyncIterator[KafkaPublisher]:
    settings = GatewaySettings(backends=Backends(kafka_bootstrap=stack.kafka_bootstrap,
                                                 topic=stack.topic), produce_timeout_s=5.0)
    kafka = KafkaPublisher(settings, new_producer=producers)
    runner = asyncio.create_task(kafka.run())
    await eventually(lambda: asyncio.sleep(0, kafka.ready), timeout_s=30, message="connected")
    yield kafka
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await kafka.close()


async def break_sequence_numbers(producer: AIOKafkaProducer, stack: Stack) -> None:
    """Make the producer's idempotence state disagree with the broker's, as a broker that
    lost its producer state in an outage does: the next sequence number of every partition
    jumps ahead, so the broker answers OUT_OF_ORDER_SEQUENCE_NUMBER to every later batch.
    (aiokafka has no public way to do this; its transaction manager keeps the numbers.)"""
    manager = producer._txn_manager
    assert manager is not None  # idempotence is on
    for tp in await partitions_of(stack.kafka_bootstrap, stack.topic):
        manager.increment_sequence_number(tp, 7)


async def test_a_producer_whose_idempotence_state_broke_is_replaced(
        stack: Stack, publisher: KafkaPublisher, producers: CountedProducers,
        site_id: str) -> None:
    start = await end_offsets(stack.kafka_bootstrap, stack.topic)
    before = page_view(site_id, "/before")
    await publisher.publish([before])
    assert len(producers.made) == 1

    await break_sequence_numbers(producers.made[0], stack)
    rejected = page_view(site_id, "/rejected")
    with pytest.raises(PublishUnavailable) as caught:
        await publisher.publish([rejected])
    assert caught.value.reason == "kafka_error"
    assert isinstance(caught.value.__cause__, OutOfOrderSequenceNumber)  # the broker's answer

    # The broken producer would refuse every later batch: only a new one publishes again.
    after = page_view(site_id, "/after")

    async def published_again() -> bool:
        try:
            await publisher.publish([after])
        except PublishUnavailable:
            return False
        return True

    await eventually(published_again, timeout_s=30, interval_s=0.2,
                     message="publishing again after the producer broke")
    assert len(producers.made) == 2  # replaced once
    published = events_of_site(await read_between(stack.kafka_bootstrap, start), site_id)
    assert {e.event_id for e in published} == {before.event_id, after.event_id}


async def test_kafka_down_is_a_503_after_the_produce_timeout_not_before(
        stack: Stack, http: aiohttp.ClientSession, site_id: str, tmp_path: Path) -> None:
    timeout_s, margin_s = 1.5, 2.0
    gateway = GatewayProcess(stack, 1, tmp_path / "gateway.log",
                             env={"PRODUCE_TIMEOUT_S": str(timeout_s)})
    elapsed: list[float] = []
    try:
        await gateway.start(http)
        stop_part("kafka")
        try:
            for i in range(3):
                event = {"page_id": "/down", "user_id": f"u{i}", "site_id": site_id}
                started = time.monotonic()
                async with http.post(f"{gateway.url}/track", json=event) as response:
                    body = await response.json()
                    elapsed.append(time.monotonic() - started)
                    assert response.status == 503, body
                    assert body["reason"] == "kafka_timeout"
                    assert int(response.headers["Retry-After"]) >= 1
        finally:
            restore()
        # Kafka is back: the same gateway accepts again.
        await eventually(lambda: accepted(http, gateway.url, site_id), timeout_s=60,
                         interval_s=0.2, message="accepting again after Kafka came back")
    finally:
        await gateway.kill()
    assert all(timeout_s <= e < timeout_s + margin_s for e in elapsed), elapsed
    for url in stack.gateway_urls:  # the stack's own gateways, for the tests after this one
        await eventually(partial(ready, http, url), timeout_s=60, message=f"{url} ready")


async def accepted(http: aiohttp.ClientSession, url: str, site_id: str) -> bool:
    event = {"page_id": "/up", "user_id": "u1", "site_id": site_id}
    async with http.post(f"{url}/track", json=event) as response:
        return response.status == 202


async def ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(f"{url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False
