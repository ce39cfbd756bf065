"""Which generation of each site's aggregates is current: the one reader of the pointers.

Why shared: the aggregator (to count into the current generation), the rebuild (to switch
away from it) and the query API (to answer from it) must decode the pointer alike; a site
without a pointer is in the default generation.
"""

from __future__ import annotations

from collections.abc import Iterable

from contracts.keys import SiteKeys
from contracts.redis_client import RedisClient


def decode_pointer(site_id: str, raw: bytes | str | None) -> SiteKeys:
    """The site's keys in the generation a pointer's value names."""
    if raw is None:
        return SiteKeys(site_id)
    return SiteKeys(site_id, raw.decode() if isinstance(raw, bytes) else raw)


class GenerationStore:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def current(self, site_ids: Iterable[str]) -> dict[str, SiteKeys]:
        """Each site's keys in its current generation, in one round trip."""
        ids = list(site_ids)
        if not ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for site_id in ids:
                pipe.get(SiteKeys(site_id).generation_pointer())
            pointers = await pipe.execute()
        return {site_id: decode_pointer(site_id, raw)
                for site_id, raw in zip(ids, pointers, strict=True)}

    async def current_one(self, site_id: str) -> SiteKeys:
        return decode_pointer(site_id,
                              await self._redis.get(SiteKeys(site_id).generation_pointer()))
