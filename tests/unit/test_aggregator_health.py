"""Store health, outage logging and lag gauges: one log line per state change, readiness
that sees an outage without traffic, no gauge left behind for a revoked partition."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from prometheus_client import generate_latest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from aggregator.__main__ import _until_started
from aggregator.counting.source import KafkaSource
from aggregator.health import StoreHealth, ping_stores
from aggregator.metrics import AggregatorMetrics
from aggregator.recovery.loss_watch import LossWatch
from contracts.settings import Retention


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    health = StoreHealth()
    for _ in range(10):
        health.report("redis", "pipeline", RedisConnectionError("down"))
    assert health.checks() == {"mongo": True, "redis": False, "kafka": True}
    health.report("redis", "pipeline", None)
    assert health.up("redis")
    assert len(events(caplog, "store_unavailable")) == 1
    [recovered] = events(caplog, "store_recovered")
    assert recovered.fields["failed_attempts"] == 10  # type: ignore[attr-defined]


def test_a_store_is_up_only_when_every_observer_last_saw_it_answer() -> None:
    metrics = AggregatorMetrics()
    health = StoreHealth(metrics.store_up)
    health.report("mongo", "pipeline", OSError("refused"))
    health.report("mongo", "ping", None)  # a ping answered, the pipeline's call did not
    assert not health.up("mongo")
    assert metrics.store_up.labels("mongo")._value.get() == 0
    health.report("mongo", "pipeline", None)
    assert health.up("mongo")
    assert metrics.store_up.labels("mongo")._value.get() == 1


async def test_the_background_ping_marks_an_idle_store_down_and_up_again() -> None:
    health, stopping = StoreHealth(), asyncio.Event()
    answers = [False, False, True]
    seen: list[bool] = []

    async def redis_ping() -> None:
        ok = answers.pop(0)
        if not answers:
            stopping.set()
        if not ok:
            raise RedisConnectionError("down")

    async def watch() -> None:
        while not stopping.is_set():
            seen.append(health.up("redis"))
            await asyncio.sleep(0)

    async def hanging_mongo() -> None:
        await asyncio.sleep(10)

    await asyncio.gather(ping_stores(health, {"redis": redis_ping, "mongo": hanging_mongo},
                                     stopping, interval_s=0.001, timeout_s=0.01), watch())
    assert False in seen and health.up("redis")
    assert not health.up("mongo")  # a ping that does not answer in time counts as down


async def test_start_up_retries_log_the_first_failure_and_the_start(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    failures = [OSError("refused"), OSError("refused")]

    async def start() -> None:
        if failures:
            raise failures.pop()

    assert await _until_started("mongo", start, asyncio.Event())
    assert len(events(caplog, "start_retry")) == 1
    assert len(events(caplog, "start_recovered")) == 1


class _DownRedis:
    def __init__(self, stopping: asyncio.Event, calls: int) -> None:
        self._stopping, self._calls = stopping, calls

    def register_script(self, script: str) -> object:
        return object()

    async def exists(self, key: str) -> int:
        self._calls -= 1
        if self._calls <= 0:
            self._stopping.set()
        raise RedisConnectionError("down")


async def test_the_loss_watch_logs_a_redis_outage_once_not_every_second(
        caplog: pytest.LogCaptureFixture) -> None:
    stopping = asyncio.Event()
    watch = LossWatch(cast(Redis, _DownRedis(stopping, calls=5)), cast(Any, None), "a",
                      AggregatorMetrics(), Retention(), interval_s=0.001)
    await watch.run(stopping)
    assert len(events(caplog, "loss_watch_error")) == 1


class _FlakyConsumer:
    """Fetches fail while the broker is away: the keepalive tolerates it."""

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("t", 0)}

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[object]]:
        raise KafkaConnectionError("broker away")


async def test_keepalive_failures_are_logged_once_per_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    source = KafkaSource(cast(AIOKafkaConsumer, _FlakyConsumer()), "t")
    for _ in range(5):
        await source.keepalive()
    assert len(events(caplog, "keepalive_failed")) == 1


def test_a_revoked_partitions_lag_gauge_is_removed() -> None:
    metrics = AggregatorMetrics()
    metrics.show_lag({0: 5, 1: 7})
    metrics.show_lag({1: 2})  # partition 0 was revoked
    exposed = generate_latest(metrics.registry).decode()
    assert 'consumer_lag{partition="1"} 2.0' in exposed
    assert 'consumer_lag{partition="0"}' not in exposed
