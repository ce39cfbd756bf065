"""Redis as the code before layout 2 (commit 8dd8595) left it, for the upgrade test.

Layout 1 named aggregates ``views``, ``pages`` (a sorted set of views, positive), ``uv``,
``uv:p:<page>``, and per bucket ``views:<unit>:<n>``, ``pages:<unit>:<n>`` (a hash page ->
views), ``uv:<unit>:<n>`` and ``uv:<unit>:<n>:p:<page>``; its intact marker was
``pv:{!meta}:intact``. Frozen here on purpose: the test must write what the old code wrote,
not what today's catalog would.
"""

from __future__ import annotations

from collections.abc import Iterable

from contracts.event import PageView
from contracts.keys import SiteKeys, intact_key
from contracts.redis_client import RedisClient
from contracts.settings import Retention

UNITS_V1 = (("m", 60_000), ("h", 3_600_000), ("d", 86_400_000))


async def write_layout_v1(redis: RedisClient, site: SiteKeys, events: Iterable[PageView],
                          retention: Retention) -> None:
    """Count distinct events into ``site``'s generation in layout 1 and mark Redis intact
    in layout 1 only."""
    seen: set[str] = set()
    async with redis.pipeline(transaction=False) as pipe:
        for e in events:
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
            pipe.incrby(site.named("views"), 1)
            pipe.zincrby(site.named("pages"), 1, e.page_id)
            pipe.pfadd(site.named("uv"), e.user_id)
            pipe.pfadd(site.named(f"uv:p:{e.page_id}"), e.user_id)
            for unit, size in UNITS_V1:
                bucket = e.ts // size
                ttl = retention.ttl_of(unit)
                names = [f"views:{unit}:{bucket}", f"pages:{unit}:{bucket}",
                         f"uv:{unit}:{bucket}", f"uv:{unit}:{bucket}:p:{e.page_id}"]
                pipe.incrby(site.named(names[0]), 1)
                pipe.hincrby(site.named(names[1]), e.page_id, 1)
                pipe.pfadd(site.named(names[2]), e.user_id)
                pipe.pfadd(site.named(names[3]), e.user_id)
                if ttl is not None:
                    for name in names:
                        pipe.expireat(site.named(name), (bucket + 1) * size // 1000 + ttl)
        pipe.set(intact_key(1), "1")
        pipe.delete(intact_key())
        await pipe.execute()
