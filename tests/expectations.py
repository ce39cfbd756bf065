"""What the aggregates must be, recounted straightforwardly from the events a test sent, and
a reader that compares them with what Redis holds."""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from redis.asyncio import Redis

from aggregator.aggregate import expire_at
from contracts.event import PageView
from contracts.keys import SiteKeys
from contracts.timebuckets import buckets_of

# For answers that merge HyperLogLogs in ways a test cannot replay: the standard error is
# 0.81%; allow well over 3 sigma. Small sets are not exact either: two visitors whose hashes
# land in the same register count once (seen: 48 for 50).
HLL_TOLERANCE = 0.03
HLL_SMALL_SET_SLACK = 3


@dataclass
class Expected:
    total: int = 0
    pages: Counter[str] = field(default_factory=Counter)
    buckets: Counter[tuple[str, int]] = field(default_factory=Counter)
    page_buckets: dict[tuple[str, int], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    visitors: set[str] = field(default_factory=set)
    page_visitors: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    day_visitors: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))


def recount(events: Iterable[PageView]) -> Expected:
    """Each distinct event id counted once: exactly what the pipeline promises."""
    seen: set[str] = set()
    out = Expected()
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        b = buckets_of(e.ts)
        out.total += 1
        out.pages[e.page_id] += 1
        out.visitors.add(e.user_id)
        out.page_visitors[e.page_id].add(e.user_id)
        out.day_visitors[b.day].add(e.user_id)
        for unit, bucket in (("m", b.minute), ("h", b.hour), ("d", b.day)):
            out.buckets[(unit, bucket)] += 1
            out.page_buckets[(unit, bucket)][e.page_id] += 1
    return out


async def current_keys(redis: Redis, site_id: str) -> SiteKeys:
    """The site's keys in the generation its pointer names (a replay moves it)."""
    pointer = await redis.get(SiteKeys(site_id).generation_pointer())
    if pointer is None:
        return SiteKeys(site_id)
    return SiteKeys(site_id, pointer.decode() if isinstance(pointer, bytes) else pointer)


async def total_views(redis: Redis, site_id: str) -> int:
    return int(await redis.get((await current_keys(redis, site_id)).total_views()) or 0)


def close_to(estimate: int, exact: int) -> bool:
    return abs(estimate - exact) <= max(HLL_SMALL_SET_SLACK, HLL_TOLERANCE * exact)


async def hll_estimate(redis: Redis, site_id: str, members: Iterable[str]) -> int:
    """What a HyperLogLog holding exactly these members reports.

    A HyperLogLog's registers depend only on the set added, not on order or repeats, so the
    pipeline's counter must report this number exactly; comparing against it catches a
    missing or extra visitor that a tolerance would hide. The scratch key shares the site's
    hash tag (a scratch generation) so it lives in the same cluster slot."""
    scratch = SiteKeys(site_id, generation=f"test{uuid.uuid4().hex}").visitors()
    try:
        batch = list(members)
        for i in range(0, len(batch), 5000):
            await redis.pfadd(scratch, *batch[i:i + 5000])
        return int(await redis.pfcount(scratch))
    finally:
        await redis.delete(scratch)


async def assert_redis_matches(redis: Redis, site_id: str, expected: Expected) -> None:
    keys = await current_keys(redis, site_id)
    assert await total_views(redis, site_id) == expected.total
    ranked = cast(list[tuple[bytes, float]],
                  await redis.zrange(keys.page_views(), 0, -1, withscores=True))
    pages = {p.decode(): int(s) for p, s in ranked}
    assert pages == dict(expected.pages)
    bucket_list = sorted(expected.buckets)
    async with redis.pipeline(transaction=False) as pipe:
        for unit, bucket in bucket_list:
            pipe.get(keys.bucket_views(unit, bucket))
            pipe.hgetall(keys.bucket_page_views(unit, bucket))
        results = await pipe.execute()
    now_s = time.time()
    for i, (unit, bucket) in enumerate(bucket_list):
        expires = expire_at(unit, bucket)
        if expires and expires < now_s + 5:
            continue  # past its retention (e.g. minutes older than 48 h): Redis drops it
        assert int(results[2 * i] or 0) == expected.buckets[(unit, bucket)], (unit, bucket)
        got = {k.decode(): int(v) for k, v in results[2 * i + 1].items()}
        assert got == dict(expected.page_buckets[(unit, bucket)]), (unit, bucket)
    assert await redis.pfcount(keys.visitors()) == await hll_estimate(
        redis, site_id, expected.visitors)
    for page, users in expected.page_visitors.items():
        assert await redis.pfcount(keys.page_visitors(page)) == await hll_estimate(
            redis, site_id, users), page
    for day, users in expected.day_visitors.items():
        assert await redis.pfcount(keys.bucket_visitors("d", day)) == await hll_estimate(
            redis, site_id, users), day
