"""Publishing validated events to Kafka, and knowing when Kafka can't take them.

The gateway answers 202 only after Kafka acknowledged every event of a request
(idempotent producer, so acks=all). Concurrent requests share per-partition batches
(``batching``). A request waits a bounded time, then gives up with ``PublishUnavailable`` so
the client gets a 503. Giving up does not take the messages back: they stay queued or in
aiokafka's accumulator and may still reach Kafka (the client's retry with the same event ids
is deduplicated downstream). Memory is bounded because each message counts as in flight
until its batch is resolved (acknowledged, failed, or expired after the request timeout),
whatever the HTTP request did meanwhile, and no request may push the count past
``max_in_flight``.

Called by the request handlers (``publish`` blocks for at most the produce timeout) and by
the app's cleanup context (``run`` keeps the producer connected).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)

from contracts.event import PageView, encode_event
from contracts.settings import GatewaySettings
from ingest_gateway.batching import PartitionBatcher

log = logging.getLogger(__name__)

# Errors after which an idempotent producer's sequence state is broken for good (for example
# after the broker restarted while batches were in flight): only a new producer recovers.
FATAL_PRODUCER_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch,
                         InvalidProducerIdMapping, ProducerFenced, ProducerClosed)


class PublishUnavailable(Exception):
    """Kafka did not acknowledge in time, or too much is already in flight."""

    def __init__(self, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Publisher(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...

    async def publish(self, events: Sequence[PageView]) -> None: ...


class KafkaPublisher:
    """An aiokafka producer that (re)connects in the background and publishes with a deadline."""

    def __init__(self, settings: GatewaySettings, max_in_flight: int = 50_000,
                 new_producer: Callable[[GatewaySettings], AIOKafkaProducer] | None = None
                 ) -> None:
        """``new_producer`` builds each (re)connected producer; tests pass a fake."""
        self._settings = settings
        self._producer_factory = new_producer or _aiokafka_producer
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._producer: AIOKafkaProducer | None = None
        self._batcher: PartitionBatcher | None = None
        self._connected = False
        self._last_failure = 0.0
        self._broken = asyncio.Event()

    @property
    def ready(self) -> bool:
        since_failure = time.monotonic() - self._last_failure
        recently_failed = since_failure < 2 * self._settings.produce_timeout_s
        return self._producer is not None and self._connected and not recently_failed

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def run(self) -> None:
        """Connect, keep checking the connection, and replace a producer whose state broke;
        runs until cancelled."""
        while True:
            await self._connect()
            while not self._broken.is_set():
                self._connected = await self._probe()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._broken.wait(), timeout=1.0)
            broken, self._producer, self._connected = self._producer, None, False
            batcher, self._batcher = self._batcher, None
            self._broken.clear()
            log.warning("kafka_producer_replaced")
            if batcher is not None:  # what it still queued never reached Kafka: 503s
                await batcher.close(KafkaError("the producer was replaced"))
            if broken is not None:  # its pending sends fail; their clients got 503s
                with contextlib.suppress(TimeoutError, KafkaError):
                    await asyncio.wait_for(broken.stop(), timeout=5.0)

    async def _connect(self) -> None:
        delay = 0.2
        while self._producer is None:
            producer = self._producer_factory(self._settings)
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                await producer.stop()
                log.warning("kafka_connect_failed", extra={"fields": {
                    "error": repr(exc), "retry_in_s": delay}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._producer = producer
            self._batcher = PartitionBatcher(producer, self._settings.backends.topic,
                                             self._release, self._settings.linger_ms / 1000)
            log.info("kafka_connected", extra={"fields": {
                "bootstrap": self._settings.backends.kafka_bootstrap}})

    async def _probe(self) -> bool:
        assert self._producer is not None
        try:
            ok = await asyncio.wait_for(self._producer.client.force_metadata_update(), 1.5)
        except (TimeoutError, KafkaError, OSError):
            ok = False
        if ok != self._connected:
            log.log(logging.INFO if ok else logging.WARNING,
                    "kafka_reachable" if ok else "kafka_unreachable")
        return bool(ok)

    async def close(self) -> None:
        """Flush what is buffered and disconnect (graceful shutdown: the requests in flight
        were answered before this runs, so nothing is left queued in the batcher)."""
        if self._batcher is not None:
            await self._batcher.close(KafkaError("the gateway is shutting down"))
            self._batcher = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, events: Sequence[PageView]) -> None:
        if not events:  # nothing to wait for
            return
        producer, batcher = self._producer, self._batcher
        if producer is None or batcher is None:
            raise PublishUnavailable("kafka_not_connected", retry_after_s=2)
        if self._in_flight + len(events) > self._max_in_flight:
            raise PublishUnavailable("too_many_in_flight")
        self._in_flight += len(events)
        queued = False
        try:
            async with asyncio.timeout(self._settings.produce_timeout_s):
                acknowledged = await batcher.submit(
                    [(event.kafka_key, encode_event(event)) for event in events])
                queued = True
                acknowledged.add_done_callback(_retrieve)
                # Not ``await acknowledged``: on timeout that would cancel the future; the
                # events stay queued either way, and release their capacity when resolved.
                await asyncio.wait([acknowledged])
                acknowledged.result()
        except (TimeoutError, KafkaError) as exc:
            self._last_failure = time.monotonic()
            # Only the current producer's failure replaces it: requests still in flight on
            # a producer already replaced fail too, and must not replace its successor.
            if isinstance(exc, FATAL_PRODUCER_ERRORS) and producer is self._producer:
                self._broken.set()
            log.warning("publish_failed", extra={"fields": {
                "error": repr(exc), "events": len(events), "queued": queued}})
            raise PublishUnavailable("kafka_timeout" if isinstance(exc, TimeoutError)
                                     else "kafka_error") from exc
        finally:
            if not queued:  # never handed over: no longer in flight
                self._in_flight -= len(events)

    def _release(self, count: int) -> None:
        self._in_flight -= count


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failure retrieved: a request that timed out no longer awaits its future."""
    if not future.cancelled():
        future.exception()


def _aiokafka_producer(s: GatewaySettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=s.backends.kafka_bootstrap,
        client_id=f"ingest-gateway-{s.port}",
        enable_idempotence=True,  # implies acks=all
        linger_ms=0,  # the batcher lingers itself, and hands aiokafka closed batches
        max_batch_size=s.max_batch_size,
        compression_type=s.compression,
        request_timeout_ms=max(5_000, int(s.produce_timeout_s * 4000)),
        metadata_max_age_ms=30_000,
    )
