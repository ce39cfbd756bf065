"""Answering for a hot site, whose aggregates are split over several units.

A site marked hot (``make sites ARGS="set shop --shards 4"``) is counted in units, each its
own Redis Cluster slot (``contracts.keys.unit_of``): every event whole in the unit of its
page. A unit is read exactly like a site (``RedisReader``); this adds the units up:

- views, rankings and bot counts are sums (a page's views are in one unit, unless the site's
  shard count grew since it was first seen: then in two, and the sum is still exact);
- visitors are a union: each unit's HyperLogLog of the question is read as bytes (its own
  union of buckets, inline page visitors included), written to scratch keys of one slot,
  and counted there with one PFCOUNT, which takes the register-wise maximum. That is what
  one HyperLogLog of all the site's visitors would count, exactly as for a normal site.

A site with one shard goes straight to ``RedisReader``, at no extra cost.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable

from contracts.aggregates import DIMENSION_VISITORS, PAGE_VISITORS, VISITORS, Dimension, Scope
from contracts.keys import PREFIX, units_of
from contracts.redis_client import RedisClient
from contracts.registry import RegistrySource
from query_api.model import Totals
from query_api.ranges import TimeRange
from query_api.redis_reader import RedisReader, Subject, scopes_of_range
from query_api.redis_reads import SCRATCH_TTL_MS

ShardsOf = Callable[[str], int]  # site -> its shard count now (the registry's)


def shards_of(registry: RegistrySource) -> ShardsOf:
    """A site's shard count in the registry's latest snapshot (1 when it is not there)."""
    def shards(site_id: str) -> int:
        site = registry.current().sites.get(site_id)
        return 1 if site is None else site.shards
    return shards


class ShardedReader:
    source = "redis"

    def __init__(self, redis: RedisClient, reader: RedisReader, shards_of: ShardsOf) -> None:
        self._redis = redis
        self._reader = reader
        self._shards_of = shards_of

    async def ping(self) -> bool:
        return await self._reader.ping()

    async def complete(self) -> bool:
        return await self._reader.complete()

    def _units(self, site_id: str) -> list[str]:
        return units_of(site_id, self._shards_of(site_id))

    # -- views and visitors -------------------------------------------------------------

    async def totals(self, site_id: str, rng: TimeRange, page_id: str | None) -> Totals:
        units = self._units(site_id)
        if len(units) == 1:
            return await self._reader.totals(site_id, rng, page_id)
        return (await self._totals(units, [(scopes_of_range(rng), page_id)]))[0]

    async def series(self, site_id: str, slots: list[TimeRange], interval: str,
                     page_id: str | None) -> list[Totals]:
        units = self._units(site_id)
        if len(units) == 1:
            return await self._reader.series(site_id, slots, interval, page_id)
        return await self._totals(units, [(scopes_of_range(s), page_id) for s in slots])

    async def page_uniques(self, site_id: str, rng: TimeRange, pages: list[str]
                           ) -> dict[str, int]:
        units = self._units(site_id)
        if len(units) == 1:
            return await self._reader.page_uniques(site_id, rng, pages)
        scopes = scopes_of_range(rng)
        counts = await self._count_unions(units, [(scopes, (PAGE_VISITORS, p)) for p in pages])
        return dict(zip(pages, counts, strict=True))

    async def _totals(self, units: list[str], queries: list[tuple[list[Scope], str | None]]
                      ) -> list[Totals]:
        per_unit = await asyncio.gather(*(self._views(unit, queries) for unit in units))
        views = [sum(column) for column in zip(*per_unit, strict=True)]
        uniques = await self._count_unions(units, [
            (scopes, (VISITORS, None) if page is None else (PAGE_VISITORS, page))
            for scopes, page in queries])
        return [Totals(v, u) for v, u in zip(views, uniques, strict=True)]

    async def _views(self, unit: str, queries: list[tuple[list[Scope], str | None]]
                     ) -> list[int]:
        """One unit's views of each query (its reader counts and caches its visitors too:
        cheap once cached, and the reader has no views-only path)."""
        found = await self._reader.scoped_totals(unit, queries)
        return [t.views for t in found]

    async def _count_unions(self, units: list[str], unions: list[tuple[list[Scope], Subject]]
                            ) -> list[int]:
        """Each union counted over every unit: the units' HyperLogLog bytes, written to
        scratch keys of one slot per union and counted by one PFCOUNT each."""
        if not unions:
            return []
        dumps = await asyncio.gather(*(self._reader.union_dumps(unit, unions)
                                       for unit in units))
        per_union = [[d[i] for d in dumps if d[i]] for i in range(len(unions))]
        names_of: list[list[str]] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for parts in per_union:
                tag = f"{PREFIX}:{{!union:{uuid.uuid4().hex}}}"
                names = [f"{tag}:{i}" for i in range(len(parts))]
                names_of.append(names)
                for name, data in zip(names, parts, strict=True):
                    pipe.execute_command("SET", name, data, "PX", SCRATCH_TTL_MS)
                if names:
                    pipe.execute_command("PFCOUNT", *names)
                    pipe.execute_command("DEL", *names)
            replies = await pipe.execute()
        counts: list[int] = []
        at = 0
        for names in names_of:
            at += len(names)
            if names:
                counts.append(int(replies[at]))
                at += 2
            else:
                counts.append(0)
        return counts

    # -- rankings and breakdowns --------------------------------------------------------

    async def ranked_pages(self, site_id: str, rng: TimeRange, offset: int, limit: int
                           ) -> tuple[int, list[tuple[str, int]]]:
        units = self._units(site_id)
        if len(units) == 1:
            return await self._reader.ranked_pages(site_id, rng, offset, limit)
        summed = _summed(await asyncio.gather(*(self._reader.page_views(u, rng)
                                                for u in units)))
        return len(summed), summed[offset:offset + limit]

    async def breakdown(self, site_id: str, rng: TimeRange, dimension: Dimension,
                        offset: int, limit: int) -> tuple[int, list[tuple[str, int, int]]]:
        units = self._units(site_id)
        if len(units) == 1:
            return await self._reader.breakdown(site_id, rng, dimension, offset, limit)
        summed = _summed(await asyncio.gather(*(self._reader.value_views(u, rng, dimension)
                                                for u in units)))
        window = summed[offset:offset + limit]
        scopes = scopes_of_range(rng)
        uniques = await self._count_unions(
            units, [(scopes, (DIMENSION_VISITORS[dimension], v)) for v, _ in window])
        return len(summed), [(v, n, u) for (v, n), u in zip(window, uniques, strict=True)]

    async def filtered(self, site_id: str, rng: TimeRange) -> int:
        units = self._units(site_id)
        return sum(await asyncio.gather(*(self._reader.filtered(u, rng) for u in units)))


def _summed(parts: list[dict[str, int]]) -> list[tuple[str, int]]:
    """Members' counts added over the units, by count descending then member ascending (as
    Python orders text: by code point, Redis's byte order)."""
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return sorted(((m, n) for m, n in total.items() if n), key=lambda mn: (-mn[1], mn[0]))
