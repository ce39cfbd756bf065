"""Answering from the Redis aggregates with pipelined reads: no per-page round trips.

A bounded range is tiled into day, hour and minute buckets (``query_api.tiling``); views are
the sum of the buckets' counters (or of one field of their per-page hashes), visitors one
PFCOUNT over the union of the buckets' HyperLogLogs. Pages ranked by views come from
merging the buckets' hashes inside Redis (one script call; only the requested rows come
back), and per-page visitors are one pipelined round trip of PFCOUNTs. All time uses the
site's running totals. Keys are those of the site's current generation (its pointer), so
a rebuild can switch over atomically. Every key is the site's (one hash-tag slot), so
multi-key commands and the script work on Cluster.

Called by ``StatsService``; raises redis errors when Redis is down (the service then asks
MongoDB). Which ranges Redis can answer at all is decided by the service, not here.
"""

from __future__ import annotations

import time
from typing import Any

from contracts.keys import SiteKeys, intact_key
from contracts.redis_client import RedisClient
from query_api.model import Totals
from query_api.ranges import TimeRange
from query_api.tiling import Bucket, tile

INTACT_CHECK_S = 1.0
PIPELINE_CHUNK = 2000  # commands per round trip when asking about many pages

# Ranks pages by views inside Redis, so only the page of results crosses the network:
# a site with 10,000 pages sends back ``limit`` rows, not 10,000 per bucket (parsing those
# in Python costs far more than Redis merging them). KEYS: the range's per-bucket page
# hashes (mode "h") or the all-time pages sorted set (mode "z"), all in the site's slot.
# ARGV: mode, offset, limit. Returns the number of pages, then page, views pairs, sorted by
# views descending and page id ascending (byte order, as Python sorts UTF-8 text).
RANK_SCRIPT = """
local counts = {}
for _, key in ipairs(KEYS) do
  local flat
  if ARGV[1] == 'z' then
    flat = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  else
    flat = redis.call('HGETALL', key)
  end
  for i = 1, #flat, 2 do
    counts[flat[i]] = (counts[flat[i]] or 0) + tonumber(flat[i + 1])
  end
end
local rows = {}
for page, n in pairs(counts) do
  if n > 0 then rows[#rows + 1] = {page, n} end
end
table.sort(rows, function(a, b)
  if a[2] ~= b[2] then return a[2] > b[2] end
  return a[1] < b[1]
end)
local out = {#rows}
local last = math.min(#rows, tonumber(ARGV[2]) + tonumber(ARGV[3]))
for i = tonumber(ARGV[2]) + 1, last do
  out[#out + 1] = rows[i][1]
  out[#out + 1] = rows[i][2]
end
return out
"""


# One PFCOUNT per page over that page's bucket HyperLogLogs (ARGV[1] keys each, in order),
# inside Redis: a page of 100 rows costs one command to send and one reply to parse, not 100
# (redis-py's per-command cost dominated /stats).
COUNT_EACH_SCRIPT = """
local per, out = tonumber(ARGV[1]), {}
for i = 1, #KEYS, per do
  out[#out + 1] = redis.call('PFCOUNT', unpack(KEYS, i, i + per - 1))
end
return out
"""


def buckets_of_range(rng: TimeRange) -> list[Bucket]:
    start, end = rng.bounds()
    return tile(start, end)


class RedisReader:
    source = "redis"

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._rank = redis.register_script(RANK_SCRIPT)
        self._count_each = redis.register_script(COUNT_EACH_SCRIPT)
        self._intact = False
        self._intact_checked = float("-inf")

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def complete(self) -> bool:
        """Redis lost its state (flushed, restarted empty) until a rebuild marks it intact
        again. Asked at most once per ``INTACT_CHECK_S``: losing state is rare, and a
        request should not pay a round trip for it."""
        now = time.monotonic()
        if now - self._intact_checked >= INTACT_CHECK_S:
            self._intact = bool(await self._redis.exists(intact_key()))
            self._intact_checked = now
        return self._intact

    async def _site_keys(self, site_id: str) -> SiteKeys:
        """The keys of the site's current generation (a rebuild fills a new generation and
        then moves the pointer; without a pointer it is the default one)."""
        current = await self._redis.get(SiteKeys(site_id).generation_pointer())
        if current is None:
            return SiteKeys(site_id)
        return SiteKeys(site_id, current.decode() if isinstance(current, bytes) else current)

    async def _run(self, commands: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Run commands in pipelines of ``PIPELINE_CHUNK`` (one round trip each)."""
        results: list[Any] = []
        for start in range(0, len(commands), PIPELINE_CHUNK):
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, args in commands[start:start + PIPELINE_CHUNK]:
                    pipe.execute_command(name, *args)
                results.extend(await pipe.execute())
        return results

    async def totals(self, site_id: str, rng: TimeRange, page_id: str | None) -> Totals:
        keys = await self._site_keys(site_id)
        if not rng.bounded:
            if page_id is None:
                views, uniques = await self._run([("GET", (keys.total_views(),)),
                                                  ("PFCOUNT", (keys.visitors(),))])
            else:
                views, uniques = await self._run([
                    ("ZSCORE", (keys.page_views(), page_id)),
                    ("PFCOUNT", (keys.page_visitors(page_id),))])
            return Totals(int(float(views or 0)), int(uniques))
        return (await self.series(site_id, [rng], "", page_id))[0]

    async def series(self, site_id: str, slots: list[TimeRange], interval: str,
                     page_id: str | None) -> list[Totals]:
        del interval  # every slot is tiled on its own; the interval only shaped the slots
        keys = await self._site_keys(site_id)
        commands: list[tuple[str, tuple[Any, ...]]] = []
        sizes: list[int] = []
        for slot in slots:
            buckets = buckets_of_range(slot)
            sizes.append(len(buckets))
            for b in buckets:
                if page_id is None:
                    commands.append(("GET", (keys.bucket_views(b.unit, b.number),)))
                else:
                    commands.append(("HGET", (keys.bucket_page_views(b.unit, b.number),
                                              page_id)))
            hlls = [keys.bucket_visitors(b.unit, b.number) if page_id is None
                    else keys.bucket_page_visitors(b.unit, b.number, page_id)
                    for b in buckets]
            commands.append(("PFCOUNT", tuple(hlls)))
        results = await self._run(commands)
        out: list[Totals] = []
        cursor = 0
        for size in sizes:
            views = sum(int(v or 0) for v in results[cursor:cursor + size])
            out.append(Totals(views, int(results[cursor + size])))
            cursor += size + 1
        return out

    async def ranked_pages(self, site_id: str, rng: TimeRange, offset: int, limit: int
                           ) -> tuple[int, list[tuple[str, int]]]:
        keys = await self._site_keys(site_id)
        if rng.bounded:
            names = [keys.bucket_page_views(b.unit, b.number) for b in buckets_of_range(rng)]
            mode = "h"
        else:
            names, mode = [keys.page_views()], "z"
        reply = await self._rank(keys=names, args=[mode, offset, limit])
        pages = [(reply[i].decode(), int(reply[i + 1])) for i in range(1, len(reply), 2)]
        return int(reply[0]), pages

    async def page_uniques(self, site_id: str, rng: TimeRange, pages: list[str]
                           ) -> dict[str, int]:
        if not pages:
            return {}
        keys = await self._site_keys(site_id)
        if not rng.bounded:
            names = [keys.page_visitors(p) for p in pages]
        else:
            buckets = buckets_of_range(rng)
            names = [keys.bucket_page_visitors(b.unit, b.number, p)
                     for p in pages for b in buckets]
        if not names:  # a range of no buckets
            return dict.fromkeys(pages, 0)
        counts = await self._count_each(keys=names, args=[len(names) // len(pages)])
        return {page: int(n) for page, n in zip(pages, counts, strict=True)}
