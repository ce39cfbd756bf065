"""Breakdowns from Redis: the ranking of a dimension's values, their visitors, and bots.

Why a module of its own, without the page readers' caches (``redis_reader``): a dimension
holds few values per bucket (its quota bounds it: at most ``Dimension.max_values`` plus
``(other)``), so each request reads its buckets' rankings whole and sums them here, and
counts each shown value's visitors over the range with one union each. The page readers
version their caches by the site's view counters, which named events and bots do not move,
so reusing those caches here would serve stale event counts.

Reads go through ``ReadScript`` (the generation check, bounded calls). Called by the Redis
reader; blocks on the network and raises redis errors when Redis is down.
"""

from __future__ import annotations

from collections import Counter

from contracts.aggregates import (
    DIMENSION_RANKINGS,
    DIMENSION_VISITORS,
    FILTERED,
    Dimension,
    Scope,
)
from contracts.keys import SiteKeys
from query_api.redis_reads import Batch, Packer, ReadScript


async def ranked_members(reads: ReadScript, site_id: str, scopes: list[Scope],
                         dimension: Dimension, offset: int, limit: int
                         ) -> tuple[int, list[tuple[str, int]]]:
    """How many values the dimension has in the range, and ``limit`` of them after
    ``offset`` as (value, views), views descending then value ascending."""
    ranking = DIMENSION_RANKINGS[dimension]

    def plan(keys: SiteKeys) -> list[Batch]:
        packer = Packer()
        for scope in scopes:
            packer.batch_for(1).add_range(keys.key(ranking, scope), 0, -1)
        return packer.batches

    _, replies = await reads.run(site_id, plan)
    summed: Counter[str] = Counter()
    for reply in replies:
        for flat in reply:
            for i in range(0, len(flat), 2):
                summed[flat[i].decode()] -= int(flat[i + 1])  # stored negated
    ranked = sorted(((v, n) for v, n in summed.items() if n > 0),
                    key=lambda vn: (-vn[1], vn[0]))
    return len(ranked), ranked[offset:offset + limit]


async def member_uniques(reads: ReadScript, site_id: str, scopes: list[Scope],
                         dimension: Dimension, values: list[str]) -> dict[str, int]:
    """Unique visitors of each value over the range: one union of its buckets each."""
    per_value = DIMENSION_VISITORS[dimension]
    where: list[tuple[Batch, int]] = []
    made: list[Batch] = []

    def plan(keys: SiteKeys) -> list[Batch]:
        where.clear()
        packer = Packer()
        for value in values:
            where.append(packer.add_union(keys, [keys.key(per_value, s, value)
                                                 for s in scopes]))
        made[:] = packer.batches
        return packer.batches

    _, replies = await reads.run(site_id, plan)
    reply_of = {id(b): r for b, r in zip(made, replies, strict=True)}
    return {value: int(reply_of[id(batch)][at])
            for value, (batch, at) in zip(values, where, strict=True)}


async def filtered(reads: ReadScript, site_id: str, scopes: list[Scope]) -> int:
    """Bot requests acknowledged but not counted, over the range."""

    def plan(keys: SiteKeys) -> list[Batch]:
        packer = Packer()
        for start in range(0, len(scopes), 200):
            chunk = scopes[start:start + 200]
            packer.batch_for(len(chunk)).add("get", [keys.key(FILTERED, s) for s in chunk])
        return packer.batches

    _, replies = await reads.run(site_id, plan)
    return sum(int(n) for reply in replies for counts in reply for n in counts)
