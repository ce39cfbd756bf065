"""Reading the aggregates from Redis with pipelined round trips (no per-page round trips).

Called by the route handlers; raises redis errors when Redis is down (the handlers then
answer from MongoDB).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from contracts.keys import SiteKeys


@dataclass(frozen=True, slots=True)
class PageStat:
    page_id: str
    views: int
    unique_visitors: int


@dataclass(frozen=True, slots=True)
class SiteStats:
    total_views: int
    unique_visitors: int
    total_pages: int
    pages: list[PageStat]


class RedisReader:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def all_time(self, site_id: str, limit: int, offset: int) -> SiteStats:
        keys = SiteKeys(site_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.total_views())
            pipe.pfcount(keys.visitors())
            pipe.zcard(keys.page_views())
            pipe.zrevrange(keys.page_views(), offset, offset + limit - 1, withscores=True)
            total, uniques, total_pages, top = await pipe.execute()
        pages_views = [(p.decode(), int(score)) for p, score in top]
        async with self._redis.pipeline(transaction=False) as pipe:
            for page, _ in pages_views:
                pipe.pfcount(keys.page_visitors(page))
            page_uniques = await pipe.execute() if pages_views else []
        return SiteStats(
            total_views=int(total or 0), unique_visitors=int(uniques), total_pages=int(total_pages),
            pages=[PageStat(p, v, int(u)) for (p, v), u in zip(pages_views, page_uniques,
                                                                  strict=True)])
