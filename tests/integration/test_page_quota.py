"""The page quota on the real Redis with the real apply script: the script refuses what
would take a site past ``max_pages`` and applies nothing then; two aggregators applying one
site's partitions concurrently never name more pages than the quota; a crash between two
pieces of an over-quota batch still counts exactly; totals and ``(other)`` are exact, in
every aggregate (each checked against a straightforward recount of the events with the
pages Redis did not name counted as ``(other)``); and a rebuild follows the same rule."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid

import pytest
from redis.asyncio import Redis

from aggregator.counting.aggregate import aggregate, to_ops
from aggregator.counting.dead_letters import ListDeadLetters
from aggregator.counting.pipeline import Pipeline
from aggregator.counting.redis_sink import PagesDenied, RedisSink
from aggregator.counting.source import InMemorySource, Record
from aggregator.metrics import AggregatorMetrics
from aggregator.recovery.rebuild import Builder
from contracts.aggregates import ALL_TIME, OVERFLOW_PAGE
from contracts.event import PageView, decode_event, encode_event
from contracts.keys import SiteKeys
from contracts.page_facts import views_of as facts_views
from contracts.settings import Retention
from tests.expectations import assert_redis_matches, recount
from tests.unit.fakes import FakeEventCollection
from tests.unit.test_pipeline import RecordingStore

RETENTION = Retention()


def new_site() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


def views_of(site_id: str, pages: list[str], partitions: int = 2) -> list[Record]:
    """One record per page id, spread round-robin over ``partitions``, a few visitors."""
    now = int(time.time() * 1000)
    out = []
    for i, page in enumerate(pages):
        event = PageView(str(uuid.uuid4()), site_id, page, f"u{i % 7}", now - i * 1000, now)
        out.append(Record(i % partitions, i // partitions, event.kafka_key, encode_event(event)))
    return out


def pipeline_on(redis: Redis, records: list[Record], max_pages: int,
                mongo: FakeEventCollection | None = None) -> tuple[Pipeline, InMemorySource]:
    source = InMemorySource(records)
    pipeline = Pipeline(source=source, mongo=(mongo or FakeEventCollection()).sink(),
                        redis=RedisSink(redis), dead_letters=ListDeadLetters(),
                        metrics=AggregatorMetrics(), stopping=asyncio.Event(),
                        retention=RETENTION, backoff_max_s=0.01,
                        max_pages=lambda site: max_pages)
    return pipeline, source


async def named_pages(redis: Redis, site: SiteKeys) -> dict[str, int]:
    """Views of each page with all-time facts."""
    named = {}
    for facts_hash in site.facts_hashes(ALL_TIME):
        facts: dict[bytes, bytes] = await redis.hgetall(facts_hash)  # type: ignore[assignment]
        named.update({p.decode(): facts_views(v.decode()) for p, v in facts.items()})
    return named


async def assert_exact_under_quota(redis: Redis, site: SiteKeys, records: list[Record],
                                   max_pages: int) -> dict[str, int]:
    """The named pages are within the quota, and every aggregate is what a recount gives
    when each page Redis did not name is counted as (other): named pages exact, (other)
    the rest, totals exact."""
    ranking = await named_pages(redis, site)
    named = set(ranking) - {OVERFLOW_PAGE}
    assert len(named) <= max_pages
    events = [PageView(**{**dataclasses.asdict(e), "page_id": e.page_id if e.page_id in named
                          else OVERFLOW_PAGE})
              for e in (decode(r) for r in records)]
    await assert_redis_matches(redis, site.site_id, recount(events), RETENTION)
    return ranking


def decode(record: Record) -> PageView:
    return decode_event(record.value)



async def refused_then_folded(sink: RedisSink, site: SiteKeys, events: list[PageView],
                              max_pages: int, first: int, last: int) -> frozenset[str]:
    """Apply events of partition 0 with the quota: the pages it refuses (nothing applied),
    then the same events with those counted as the overflow page (applied)."""
    with pytest.raises(PagesDenied) as refused:
        await sink.apply(to_ops(site, aggregate(events), RETENTION, max_pages), 0, first, last)
    folded = to_ops(site, aggregate(events, refused.value.pages), RETENTION, max_pages)
    assert await sink.apply(folded, 0, first, last) is None
    return refused.value.pages

async def test_the_script_refuses_pages_past_the_quota_and_applies_nothing(
        redis: Redis) -> None:
    site = SiteKeys(new_site())
    sink = RedisSink(redis)
    pages = [decode(r) for r in views_of(site.site_id, ["/a", "/b", "/c", "/d", "/e", "/a"], 1)]
    with pytest.raises(PagesDenied) as refused:
        await sink.apply(to_ops(site, aggregate(pages), RETENTION, 3), 0, 0, 5)
    assert refused.value.pages == {"/d", "/e"}  # room for three: the first three, sorted
    # Nothing counted and no offset stored; only the admitted pages' names hold their room.
    assert await redis.exists(site.applied_offsets()) == 0
    assert await named_pages(redis, site) == {"/a": 0, "/b": 0, "/c": 0}

    ops = to_ops(site, aggregate(pages, refused.value.pages), RETENTION, 3)
    assert await sink.apply(ops, 0, 0, 5) is None
    assert await named_pages(redis, site) == {"/a": 2, "/b": 1, "/c": 1, OVERFLOW_PAGE: 2}
    # Full now: a named page and (other) pass, a new page does not.
    more = [decode(r) for r in views_of(site.site_id, ["/a", "/z"], 1)]
    assert await refused_then_folded(sink, site, more, 3, 6, 7) == {"/z"}
    assert await named_pages(redis, site) == {"/a": 3, "/b": 1, "/c": 1, OVERFLOW_PAGE: 3}
    # (other) takes no place in the quota: raised by one, it names exactly one more page.
    newer = [decode(r) for r in views_of(site.site_id, ["/y", "/w"], 1)]
    assert await refused_then_folded(sink, site, newer, 4, 8, 9) == {"/y"}
    assert set(await named_pages(redis, site)) == {"/a", "/b", "/c", "/w", OVERFLOW_PAGE}


async def test_a_page_refused_to_one_aggregator_is_refused_to_another_before_the_retry(
        redis: Redis) -> None:
    """The race the concurrent test below can hit: aggregator 1's step is refused, and
    before its retry aggregator 2 brings a page aggregator 1 was refused. The room aggregator
    1's step was refused for is taken by the pages it admitted, so the refusal is final: the
    page is never named and never split between itself and (other)."""
    site = SiteKeys(new_site())
    sink = RedisSink(redis)
    first = [decode(r) for r in views_of(site.site_id, ["/a", "/b", "/c"], 1)]
    with pytest.raises(PagesDenied) as refused:
        await sink.apply(to_ops(site, aggregate(first), RETENTION, 2), 0, 0, 2)
    assert refused.value.pages == {"/c"}

    other = [decode(r) for r in views_of(site.site_id, ["/c"], 1)]
    with pytest.raises(PagesDenied) as refused_too:
        await sink.apply(to_ops(site, aggregate(other), RETENTION, 2), 1, 0, 0)
    assert refused_too.value.pages == {"/c"}
    ops = to_ops(site, aggregate(other, refused_too.value.pages), RETENTION, 2)
    assert await sink.apply(ops, 1, 0, 0) is None

    ops = to_ops(site, aggregate(first, refused.value.pages), RETENTION, 2)
    assert await sink.apply(ops, 0, 0, 2) is None
    assert await named_pages(redis, site) == {"/a": 1, "/b": 1, OVERFLOW_PAGE: 2}


async def test_two_aggregators_applying_one_sites_partitions_concurrently_stay_in_quota(
        redis: Redis) -> None:
    site = SiteKeys(new_site())
    rng = random.Random(5)
    pages = [f"/p{rng.randrange(400)}" for _ in range(3000)]  # pages recur across partitions
    records = views_of(site.site_id, pages, partitions=2)
    mongo = FakeEventCollection()
    aggregators = [pipeline_on(redis, [r for r in records if r.partition == p], 50, mongo)
                   for p in (0, 1)]
    for pipeline, _ in aggregators:
        pipeline.max_script_cost = 300  # several pieces a batch

    async def drain(pipeline: Pipeline, source: InMemorySource) -> None:
        while batch := await source.poll(97, 0):
            await pipeline.process(batch)

    await asyncio.gather(*(drain(p, s) for p, s in aggregators))
    ranking = await assert_exact_under_quota(redis, site, records, 50)
    assert len(ranking) == 51  # the quota filled, and (other) holds the rest
    folded = sum(p.metrics.registry.get_sample_value(
        "aggregator_events_over_page_quota_total", {"site": site.site_id}) or 0
        for p, _ in aggregators)
    assert folded == ranking[OVERFLOW_PAGE]


async def test_a_crash_between_two_pieces_of_an_over_quota_batch_counts_exactly(
        redis: Redis) -> None:
    site = SiteKeys(new_site())
    records = views_of(site.site_id, [f"/p{i % 90}" for i in range(240)], partitions=2)
    mongo = FakeEventCollection()
    pipeline, source = pipeline_on(redis, records, 30, mongo)
    pipeline.max_script_cost = 300
    pipeline.redis = RecordingStore(RedisSink(redis), fail_on_call=3)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await pipeline.process(await source.poll(240, 0))
    assert not source.committed

    restarted, _ = pipeline_on(redis, records, 30, mongo)
    source.rewind()
    await restarted.process(await source.poll(240, 0))
    ranking = await assert_exact_under_quota(redis, site, records, 30)
    assert len(ranking) == 31


async def test_a_rebuild_applies_the_same_quota(redis: Redis) -> None:
    site_id = new_site()
    records = views_of(site_id, [f"/p{i % 120}" for i in range(600)], partitions=3)
    builder = Builder(RedisSink(redis), "r1", None, RETENTION, max_pages=lambda site: 40)
    for start in range(0, len(records), 100):
        await builder.add(records[start:start + 100])
    rebuilt = SiteKeys(site_id, "r1")
    ranking = await named_pages(redis, rebuilt)
    assert len(set(ranking) - {OVERFLOW_PAGE}) == 40
    assert sum(ranking.values()) == 600
    await redis.set(rebuilt.generation_pointer(), "r1")  # read it as the current generation
    await assert_exact_under_quota(redis, rebuilt, records, 40)
