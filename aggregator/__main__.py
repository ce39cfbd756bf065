"""``python -m aggregator``: join the consumer group and count until SIGTERM.

SIGTERM finishes the batch in hand, commits it, leaves the group and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable

import uvloop
from aiohttp import web
from aiokafka.errors import KafkaError
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure

from aggregator.app import create_app
from aggregator.counting.dead_letters import KafkaDeadLetters
from aggregator.counting.dimensions import list_versions
from aggregator.counting.mongo_sink import MongoSink
from aggregator.counting.pipeline import CrashHook, Pipeline
from aggregator.counting.redis_sink import RedisSink
from aggregator.counting.source import KafkaSource
from aggregator.health import StoreHealth, ping_stores
from aggregator.metrics import AggregatorMetrics
from aggregator.outage import Outage
from aggregator.page_quota import keep_fresh, quota_of
from aggregator.raw_retention import RawRetention
from aggregator.recovery.history import committed_offsets
from aggregator.recovery.loss_watch import LossWatch
from aggregator.recovery.rebuild import MongoHistory
from aggregator.recovery.topic_reader import TopicReader
from contracts.logs import configure_logging
from contracts.mongo import EVENTS
from contracts.redis_client import connect_redis_client
from contracts.registry import RegistryCache
from contracts.settings import AggregatorSettings

log = logging.getLogger("aggregator")


async def _until_started(name: str, start: Callable[[], Awaitable[object]],
                         stopping: asyncio.Event) -> bool:
    """Retry a start-up step with backoff; False if shutdown came first. Logs the first
    failure and the eventual start, not every retry."""
    delay = 0.2
    outage = Outage(log, "start_retry", "start_recovered", part=name)
    while not stopping.is_set():
        try:
            await start()
        except (KafkaError, OSError, ConnectionFailure) as exc:
            outage.failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, 5.0)
            continue
        outage.succeeded()
        return True
    return False


async def _read_registry(registry: RegistryCache, database: AsyncDatabase[dict[str, object]],
                         metrics: AggregatorMetrics) -> None:
    """The first read of the site registry: counting waits for it, so that no site is
    counted with a default quota while its own is unknown."""
    started = time.time()
    if not await registry.refresh(database):
        raise ConnectionFailure("the site registry could not be read")
    metrics.registry_read_at.set(started)


async def lag_reporter(source: KafkaSource, metrics: AggregatorMetrics) -> None:
    while True:
        metrics.show_lag(await source.lag())
        await asyncio.sleep(2)


async def serve(settings: AggregatorSettings) -> None:
    b = settings.backends
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    metrics = AggregatorMetrics()
    metrics.lists.labels(**list_versions()).set(1)  # which lists a count (a replay) used
    health = StoreHealth(metrics.store_up)
    redis = connect_redis_client(b.redis_url, timeout_s=5.0)
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        b.mongo_url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
    source = KafkaSource.create(b.kafka_bootstrap, b.topic, settings.group_id,
                                settings.instance, settings.max_records)
    mongo_sink = MongoSink(mongo[b.mongo_db][EVENTS], settings.mongo_writers)
    dead_letters = KafkaDeadLetters(b.kafka_bootstrap, b.dead_letter_topic, b.topic)
    registry = RegistryCache()  # each site's page quota
    pipeline = Pipeline(source=source, mongo=mongo_sink, redis=RedisSink(redis),
                        dead_letters=dead_letters, health=health, max_pages=quota_of(registry),
                        metrics=metrics, stopping=stopping, retention=settings.retention,
                        backoff_max_s=settings.backoff_max_s,
                        crash=CrashHook(settings.crash_at, settings.crash_at_batch))
    consuming = False

    def readiness() -> dict[str, bool]:
        return {"consumer": consuming, **health.checks()}

    runner = web.AppRunner(create_app(metrics, readiness, health.reasons), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("aggregator_starting", extra={"fields": {"port": settings.port,
                                                      "group": settings.group_id}})
    background = [asyncio.create_task(ping_stores(health, {
        "redis": redis.ping, "mongo": lambda: mongo.admin.command("ping")}, stopping))]
    try:
        if not (await _until_started("mongo", mongo_sink.ensure_indexes, stopping)
                and await _until_started("registry", lambda: _read_registry(
                    registry, mongo[b.mongo_db], metrics), stopping)
                and await _until_started("consumer", source.start, stopping)):
            return
        background.append(asyncio.create_task(keep_fresh(registry, mongo[b.mongo_db],
                                                         metrics.registry_read_at)))
        consuming = True
        background.append(asyncio.create_task(lag_reporter(source, metrics)))
        if settings.raw_retention_days:
            expiry = RawRetention(mongo[b.mongo_db][EVENTS], settings.raw_retention_days)
            if not await _until_started("mongo", expiry.ensure, stopping):
                return
            if not expiry.server_expires:  # no TTL index on this server (FerretDB): sweep
                background.append(asyncio.create_task(expiry.run(stopping)))
        if settings.auto_rebuild:
            async def history() -> MongoHistory:
                """What MongoDB holds below the group's commits, then the topic: history
                the topic's retention dropped is rebuilt too."""
                return MongoHistory(mongo[b.mongo_db][EVENTS], await committed_offsets(
                    b.kafka_bootstrap, settings.group_id, b.topic))

            watch = LossWatch(redis, lambda: TopicReader(b.kafka_bootstrap, b.topic),
                              settings.instance, metrics, settings.retention, history,
                              max_pages=quota_of(registry))
            background.append(asyncio.create_task(watch.run(stopping)))
        log.info("aggregator_consuming", extra={"fields": {"topic": b.topic}})
        await pipeline.run(settings.max_records, settings.max_wait_ms)
    finally:
        consuming = False
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await source.stop()
        await redis.aclose()
        await mongo.close()
        await runner.cleanup()
        log.info("aggregator_stopped", extra={"fields": {"batches": pipeline.batches}})


def main() -> None:
    settings = AggregatorSettings.from_env(os.environ)
    configure_logging("aggregator", settings.instance, settings.log_level)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
