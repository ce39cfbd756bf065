"""The query API's Redis reader on the real Redis: its in-process caches (merged rankings,
counts of unions) are used only while the buckets' view counters are unchanged, so every
answer is exact right after more events land; its reads follow a generation switch; and
the read script refuses an unknown read loudly.

Events are applied with the aggregator's real writer and apply script (as the pipeline
does), and every answer is compared with a recount of what was applied, HyperLogLogs
through ``hll_estimates`` (the count a HyperLogLog of exactly that set reports).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from aggregator.counting.aggregate import aggregate, to_ops
from aggregator.counting.redis_sink import RedisSink
from contracts.aggregates import EVENT, UTM_SOURCE
from contracts.event import PageView
from contracts.keys import SiteKeys
from contracts.settings import Retention
from contracts.timebuckets import DAY_MS, HOUR_MS, MINUTE_MS
from query_api.ranges import TimeRange
from query_api.redis_reader import RedisReader
from query_api.redis_reads import READ_SCRIPT, Batch, Plan, ReadScript
from tests.expectations import hll_estimate, hll_estimates

pytestmark = pytest.mark.integration
RETENTION = Retention()
NOW = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
# Days, hours and minutes mixed: from a whole hour three days ago (minute buckets older than
# 48 h are gone: the service sends such ranges to MongoDB) to 13 minutes ago.
RANGE = TimeRange(NOW // HOUR_MS * HOUR_MS - 3 * DAY_MS, NOW - 13 * MINUTE_MS)


class Applied:
    """What was applied to one site, as the pipeline applies it: one partition, in order."""

    def __init__(self, redis: Redis, site_id: str, generation: str = "0") -> None:
        self.live = generation == "0"  # another generation is written as a rebuild does
        self.sink = RedisSink(redis)
        self.site = SiteKeys(site_id, generation)
        self.events: list[PageView] = []

    async def add(self, events: list[PageView]) -> None:
        first = len(self.events)
        self.events += events
        ops = to_ops(self.site, aggregate(events), RETENTION)
        assert await self.sink.apply(ops, 0, first, len(self.events) - 1,
                                     live=self.live) is None

    def in_range(self, page: str | None = None) -> list[PageView]:
        start, end = RANGE.bounds()
        return [e for e in self.events if start <= e.ts < end and page in (None, e.page_id)]


def make_events(site_id: str, n: int, rng: random.Random, start: int, end: int
                ) -> list[PageView]:
    return [PageView(str(uuid.uuid4()), site_id, f"/p{int(rng.paretovariate(1.2)) % 40}",
                     f"u{rng.randrange(500)}", rng.randrange(start, end), NOW)
            for _ in range(n)]


async def assert_exact(reader: RedisReader, redis: Redis, applied: Applied) -> None:
    site = applied.site.site_id
    chosen = applied.in_range()
    totals = await reader.totals(site, RANGE, None)
    assert totals.views == len(chosen)
    assert totals.unique_visitors == await hll_estimate(redis, site, {e.user_id for e in chosen})
    views: dict[str, int] = {}
    for e in chosen:
        views[e.page_id] = views.get(e.page_id, 0) + 1
    want = sorted(views.items(), key=lambda pv: (-pv[1], pv[0]))
    assert await reader.ranked_pages(site, RANGE, 0, 1000) == (len(want), want)
    assert await reader.ranked_pages(site, RANGE, 3, 5) == (len(want), want[3:8])
    pages = [p for p, _ in want[:6]]
    uniques = await reader.page_uniques(site, RANGE, pages)
    for page in pages:
        users = {e.user_id for e in applied.in_range(page)}
        assert uniques[page] == await hll_estimate(redis, site, users), page


@pytest.mark.smoke
async def test_cached_rankings_and_counts_follow_every_new_event_exactly(
        redis: Redis, site_id: str) -> None:
    rng = random.Random(13)
    reader = RedisReader(redis)
    applied = Applied(redis, site_id)
    start, end = RANGE.bounds()
    await applied.add(make_events(site_id, 3000, rng, start - HOUR_MS, end + 2 * MINUTE_MS))
    await assert_exact(reader, redis, applied)
    await assert_exact(reader, redis, applied)  # now from the caches: still exact

    # New events in one old day, one edge hour and one edge minute: each changes a bucket
    # the caches hold; then one new page, then one event only.
    for lo, hi in ((start + DAY_MS, start + DAY_MS + HOUR_MS), (start, start + 43 * MINUTE_MS),
                   (end - MINUTE_MS, end)):
        await applied.add(make_events(site_id, 40, rng, lo, hi))
        await assert_exact(reader, redis, applied)
    await applied.add([PageView(str(uuid.uuid4()), site_id, "/brand-new", "u-new",
                                end - DAY_MS, NOW)])
    await assert_exact(reader, redis, applied)


async def test_reads_follow_a_generation_switch(redis: Redis, site_id: str) -> None:
    rng = random.Random(5)
    reader = RedisReader(redis)
    start, end = RANGE.bounds()
    old = Applied(redis, site_id)
    await old.add(make_events(site_id, 500, rng, start, end))
    await assert_exact(reader, redis, old)
    new = Applied(redis, site_id, "r-test")
    await new.add(make_events(site_id, 700, rng, start, end))
    await redis.set(SiteKeys(site_id).generation_pointer(), "r-test")
    await assert_exact(reader, redis, new)


async def test_the_read_script_refuses_an_unknown_read(redis: Redis, site_id: str) -> None:
    keys = SiteKeys(site_id)
    with pytest.raises(ResponseError, match="unknown read"):
        await redis.eval(READ_SCRIPT, 2, keys.generation_pointer(), keys.named("views:t"),
                         "0", '[["hgetall", 2]]')


class Interleaved:
    """The reader's script runner, with a read of several calls split in two round trips
    and events applied between them: what a busy aggregator does to a long read."""

    def __init__(self, reads: object, between: Callable[[], Awaitable[None]]) -> None:
        self._reads, self._between = reads, between
        self.torn_reads = 0

    async def run(self, site_id: str, plan: Any, expect: SiteKeys | None = None
                  ) -> tuple[SiteKeys, list[list[Any]]]:
        made: list[Any] = []

        def first(keys: SiteKeys) -> list[Any]:
            made[:] = plan(keys)
            return made[:1]

        keys, head = await self._reads.run(site_id, first, expect)  # type: ignore[attr-defined]
        if len(made) <= 1:
            return keys, head
        self.torn_reads += 1
        await self._between()
        _, tail = await self._reads.run(  # type: ignore[attr-defined]
            site_id, lambda _: made[1:], expect=keys)
        return keys, head + tail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reads, name)


async def test_a_long_ranking_read_that_every_event_would_tear_is_still_answered_exactly(
        redis: Redis, site_id: str) -> None:
    """1,200 pages in one day: read in slices, each attempt is torn by a new event; the
    last attempt reads in one call and is exact, with the events that came in meanwhile."""
    rng = random.Random(17)
    reader = RedisReader(redis)
    applied = Applied(redis, site_id)
    day = RANGE.bounds()[0] + DAY_MS
    await applied.add([PageView(str(uuid.uuid4()), site_id, f"/many/{i}", f"u{i % 50}",
                                day + rng.randrange(HOUR_MS), NOW) for i in range(1200)])

    async def one_more() -> None:
        await applied.add(make_events(site_id, 1, rng, day, day + HOUR_MS))

    reader._reads = racing = Interleaved(reader._reads, one_more)  # type: ignore[assignment]
    size, rows = await reader.ranked_pages(site_id, RANGE, 0, 2000)
    assert racing.torn_reads >= 2  # the sliced attempts were torn
    views: dict[str, int] = {}
    for e in applied.in_range():  # every event applied, the racing ones included
        views[e.page_id] = views.get(e.page_id, 0) + 1
    assert (size, rows) == (len(views), sorted(views.items(), key=lambda pv: (-pv[1], pv[0])))


class Recorder:
    """The reader's script runner, passing every call through and keeping the reads sent."""

    def __init__(self, reads: ReadScript) -> None:
        self._reads = reads
        self.ops: list[str] = []

    async def run(self, site_id: str, plan: Plan, expect: SiteKeys | None = None
                  ) -> tuple[SiteKeys, list[list[Any]]]:
        def recorded(keys: SiteKeys) -> list[Batch]:
            batches = plan(keys)
            self.ops += [str(read[0]) for batch in batches for read in batch.reads]
            return batches

        return await self._reads.run(site_id, recorded, expect)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reads, name)


async def test_a_30_day_count_while_events_arrive_merges_the_settled_days_once(
        redis: Redis, site_id: str) -> None:
    """/stats over 30 days while today's bucket keeps changing: after the union of the 29
    settled days is kept, a new count is one PFCOUNT of it and today (no merge), and every
    answer is exact: after events today, after a late event in a settled day, and after the
    kept union expired."""
    rng = random.Random(23)
    reader = RedisReader(redis)
    reader._reads = spy = Recorder(reader._reads)  # type: ignore[assignment]
    applied = Applied(redis, site_id)
    today = NOW // DAY_MS * DAY_MS
    month = TimeRange(today + DAY_MS - 30 * DAY_MS, today + DAY_MS)
    await applied.add(make_events(site_id, 3000, rng, month.bounds()[0], NOW))
    pages = ["/p0", "/p1", "/p2"]

    async def assert_exact() -> None:
        start, end = month.bounds()
        chosen = [e for e in applied.events if start <= e.ts < end]
        totals = await reader.totals(site_id, month, None)
        assert totals.unique_visitors == await hll_estimate(
            redis, site_id, {e.user_id for e in chosen})
        uniques = await reader.page_uniques(site_id, month, pages)
        for page in pages:
            users = {e.user_id for e in chosen if e.page_id == page}
            assert uniques[page] == await hll_estimate(redis, site_id, users), page

    async def today_events() -> None:
        await applied.add([PageView(str(uuid.uuid4()), site_id, page, f"u-today-{rng.random()}",
                                    NOW - MINUTE_MS, NOW) for page in pages])

    await assert_exact()  # counted the first time: merged, and nothing is kept
    await today_events()
    await assert_exact()  # counted again: the settled days' union is kept
    assert "merge" in spy.ops
    for _ in range(3):
        spy.ops.clear()
        await today_events()
        await assert_exact()
        assert "merge" not in spy.ops and "based" in spy.ops

    # A late event in a settled day changes that day's views: its union is made again.
    await applied.add([PageView(str(uuid.uuid4()), site_id, "/p1", "u-late", today - 9 * DAY_MS,
                                NOW)])
    spy.ops.clear()
    await assert_exact()
    assert "merge" in spy.ops

    # The kept unions expire (a quiet minute): the count notices and makes them again.
    kept = [k async for k in redis.scan_iter(match=f"*{{{site_id}}}*scratch:*")]
    assert 0 < len(kept) <= len(pages) + 1
    await redis.delete(*kept)
    await today_events()
    await assert_exact()


CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")


def tracker_events(site_id: str, n: int, rng: random.Random, start: int, end: int,
                   kind: str = "mixed") -> list[PageView]:
    """Plausible-shaped page views tagged utm_source, named events, and our own /track views
    (in no breakdown, yet they move the site's views): ``kind`` picks one, or a mix."""
    out = []
    for _ in range(n):
        pick = kind if kind != "mixed" else rng.choice(("view", "named", "own"))
        value, user = f"v{int(rng.paretovariate(1.1)) % 30}", f"u{rng.randrange(400)}"
        ts = rng.randrange(start, end)
        if pick == "own":
            out.append(PageView(str(uuid.uuid4()), site_id, "/own", user, ts, NOW))
            continue
        out.append(PageView(str(uuid.uuid4()), site_id, "/t", user, ts, NOW,
                            name=f"n-{value}" if pick == "named" else None, user_agent=CHROME,
                            utm_source=value if pick == "view" else None, via="plausible"))
    return out


async def assert_breakdowns_exact(reader: RedisReader, redis: Redis, applied: Applied) -> None:
    site = applied.site.site_id
    chosen = applied.in_range()
    for dimension, field in ((UTM_SOURCE, "utm_source"), (EVENT, "name")):
        counted: dict[str, int] = {}
        for e in chosen:
            if getattr(e, field) is not None:
                counted[getattr(e, field)] = counted.get(getattr(e, field), 0) + 1
        want = sorted(counted.items(), key=lambda vn: (-vn[1], vn[0]))
        visitors = await hll_estimates(redis, site, [
            {e.user_id for e in chosen if getattr(e, field) == value} for value, _ in want])
        rows = [(v, n, u) for (v, n), u in zip(want, visitors, strict=True)]
        assert await reader.breakdown(site, RANGE, dimension, 0, 100) == (len(rows), rows)
        assert await reader.breakdown(site, RANGE, dimension, 2, 4) == (len(rows), rows[2:6])


@pytest.mark.smoke
async def test_cached_breakdowns_follow_every_new_event_exactly(
        redis: Redis, site_id: str) -> None:
    """The breakdown caches are versioned by the site's views (page-view dimensions) and by
    the event ranking's total (named events, which move no view): after new page views, new
    named events alone, and views of /track alone, every answer is still exact; asked again
    with nothing new, the rankings and visitors come from the caches."""
    rng = random.Random(29)
    reader = RedisReader(redis)
    reader._reads = spy = Recorder(reader._reads)  # type: ignore[assignment]
    applied = Applied(redis, site_id)
    start, end = RANGE.bounds()
    await applied.add(tracker_events(site_id, 3000, rng, start - HOUR_MS, end + 2 * MINUTE_MS))
    await assert_breakdowns_exact(reader, redis, applied)
    spy.ops.clear()
    await assert_breakdowns_exact(reader, redis, applied)
    assert {"range", "pfcount", "merge", "based", "take"}.isdisjoint(spy.ops), spy.ops

    for kind in ("view", "named", "own"):  # in one old day, one edge hour, one edge minute
        for lo, hi in ((start + DAY_MS, start + DAY_MS + HOUR_MS),
                       (start, start + 43 * MINUTE_MS), (end - MINUTE_MS, end)):
            await applied.add(tracker_events(site_id, 30, rng, lo, hi, kind))
            await assert_breakdowns_exact(reader, redis, applied)
