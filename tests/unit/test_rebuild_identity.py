"""The rebuild counts each (site, event id) once, as live counting does: the same event id
under two sites is two events, in the topic part and in the MongoDB part of a rebuild."""

from __future__ import annotations

from typing import cast

from aggregator.counting.redis_sink import RedisSink
from aggregator.counting.source import Record
from aggregator.recovery.rebuild import Builder
from contracts.aggregates import ALL_TIME, VIEWS
from contracts.event import PageView, encode_event
from contracts.keys import SiteKeys
from contracts.settings import Retention
from tests.unit.fakes import FakeAggregateStore

NOW = 1_795_860_000_000


def event(event_id: str, site: str) -> PageView:
    return PageView(event_id, site, "/p", "u", NOW, NOW)


def record(offset: int, e: PageView) -> Record:
    return Record(0, offset, e.kafka_key, encode_event(e))


def builder(store: FakeAggregateStore) -> Builder:
    return Builder(cast(RedisSink, store), "r1", None, Retention())


def views(store: FakeAggregateStore, site: str) -> int:
    return store.counters[SiteKeys(site, "r1").key(VIEWS, ALL_TIME)]


async def test_the_same_event_id_under_two_sites_counts_for_each_and_a_retry_counts_once(
        ) -> None:
    store = FakeAggregateStore()
    build = builder(store)
    await build.add([record(0, event("0", "one")), record(1, event("0", "two")),
                      record(2, event("0", "two"))])
    assert (views(store, "one"), views(store, "two"), build.counted) == (1, 1, 2)


async def test_stored_events_then_the_topic_count_each_sites_event_once() -> None:
    store = FakeAggregateStore()
    build = builder(store)
    await build.add_stored([event("7", "one")])
    await build.add([record(0, event("7", "two")), record(1, event("7", "one"))])
    assert (views(store, "one"), views(store, "two"), build.counted) == (1, 1, 2)
