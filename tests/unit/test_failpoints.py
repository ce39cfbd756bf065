"""The failpoints catalog (contracts/failpoints.py) is the aggregator's: every failpoint
listed there fires at the step it describes, none fires unless named, and a name not listed
is refused at start-up."""

from __future__ import annotations

import asyncio

import pytest

from aggregator.counting.dead_letters import ListDeadLetters
from aggregator.counting.pipeline import CrashHook, Pipeline
from aggregator.counting.source import InMemorySource
from aggregator.metrics import AggregatorMetrics
from contracts.aggregates import ALL_TIME, VIEWS
from contracts.failpoints import (
    AFTER_MONGO,
    AFTER_REDIS,
    CRASH_AT_BATCH_VARIABLE,
    CRASH_AT_VARIABLE,
    CRASH_EXIT_STATUS,
    FAILPOINTS,
    MONGO_AHEAD,
)
from contracts.keys import SiteKeys
from contracts.settings import AggregatorSettings, Retention, SettingsError
from tests.unit.fakes import FakeAggregateStore, FakeEventCollection
from tests.unit.test_pipeline import record


class Exited(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def raise_exited(status: int) -> None:
    raise Exited(status)


def pipeline_with(hook: CrashHook) -> tuple[Pipeline, InMemorySource, FakeEventCollection,
                                            FakeAggregateStore]:
    source = InMemorySource([record(i, f"e{i}") for i in range(6)])
    mongo, redis = FakeEventCollection(), FakeAggregateStore()
    pipeline = Pipeline(source=source, mongo=mongo.sink(), redis=redis,
                        dead_letters=ListDeadLetters(), metrics=AggregatorMetrics(),
                        stopping=asyncio.Event(), retention=Retention(), backoff_max_s=0.01,
                        crash=hook)
    return pipeline, source, mongo, redis


# Where each failpoint stops the second batch: (events in MongoDB, views in Redis); the
# Kafka offsets committed are always the first batch's only.
STOPS_AT = {AFTER_MONGO.name: (6, 3), AFTER_REDIS.name: (6, 6)}


def test_every_failpoint_of_the_catalog_is_placed() -> None:
    assert set(STOPS_AT) | {MONGO_AHEAD.name} == set(FAILPOINTS)


@pytest.mark.parametrize("name", sorted(STOPS_AT))
async def test_a_failpoint_exits_at_its_step_of_the_given_batch(name: str) -> None:
    pipeline, source, mongo, redis = pipeline_with(CrashHook(name, 2, exit=raise_exited))
    await pipeline.process(await source.poll(3, 0))  # batch 1: not yet
    with pytest.raises(Exited) as exited:
        await pipeline.process(await source.poll(3, 0))
    assert exited.value.status == CRASH_EXIT_STATUS
    assert (len(mongo.docs), redis.counters[SiteKeys("s").key(VIEWS, ALL_TIME)]) == STOPS_AT[name]
    assert source.committed == {0: 3}


async def test_the_overlap_failpoint_exits_with_one_batch_in_redis_and_the_next_in_mongodb(
        ) -> None:
    """Only the overlapping loop (``run``) has a next batch in MongoDB while one is in Redis:
    at batch 1 it stops with all six events in MongoDB, three in Redis, nothing committed."""
    pipeline, source, mongo, redis = pipeline_with(CrashHook(MONGO_AHEAD.name, 1,
                                                             exit=raise_exited))
    with pytest.raises(Exited) as exited:
        await asyncio.wait_for(pipeline.run(3, 0), timeout=10)
    assert exited.value.status == CRASH_EXIT_STATUS
    assert (len(mongo.docs), redis.counters[SiteKeys("s").key(VIEWS, ALL_TIME)]) == (6, 3)
    assert source.committed == {}


async def test_no_failpoint_fires_unless_named() -> None:
    pipeline, source, _, redis = pipeline_with(CrashHook(exit=raise_exited))
    while records := await source.poll(3, 0):
        await pipeline.process(records)
    assert redis.counters[SiteKeys("s").key(VIEWS, ALL_TIME)] == 6
    assert AggregatorSettings.from_env({}).crash_at is None


def test_the_settings_name_a_failpoint_of_the_catalog_or_refuse_to_start() -> None:
    settings = AggregatorSettings.from_env({CRASH_AT_VARIABLE: "after_redis",
                                            CRASH_AT_BATCH_VARIABLE: "2"})
    assert (settings.crash_at, settings.crash_at_batch) == ("after_redis", 2)
    with pytest.raises(SettingsError, match=CRASH_AT_VARIABLE):
        AggregatorSettings.from_env({CRASH_AT_VARIABLE: "after_mongoo"})
