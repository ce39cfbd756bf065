"""Generations of a site's aggregates: the atomic switch, deleting a generation, and reading
one for comparison.

A rebuild fills a new generation while live counting keeps writing the current one. The
switch is one script per site, so live counting (whose apply script checks the pointer) sees
either the old generation or the new one, never half of each. It first raises the new
generation's applied offsets to the rebuild's read positions (the rebuild has applied every
record below them, whichever site they belong to), then switches only when, on every
partition, the new generation has applied at least as far as the current one (partition -1
counts events a rebuild took from MongoDB, not a partition: it is ignored): live counting
then skips what the new generation holds and adds only the rest. Otherwise it reports the
partitions that lag, and the rebuild reads further and tries again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from contracts.aggregates import Kind, parse_suffix
from contracts.generations import GenerationStore
from contracts.keys import SiteKeys
from contracts.page_facts import unpack
from contracts.redis_client import RedisClient

log = logging.getLogger(__name__)

# KEYS: pointer, new offsets, current offsets. ARGV: expected current generation, new
# generation, {partition: read position} as JSON, "switch" or "check".
# A page's facts as a snapshot compares them: its views, and its inline visitor elements as
# a set (their order in the field is the order they came in), None once promoted.
Facts = tuple[int, frozenset[str] | None]


def _facts(value: str) -> Facts:
    views, inline = unpack(value)
    return views, None if inline is None else frozenset(inline)


SWITCH_SCRIPT = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return {'moved'} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'lost'} end
for partition, position in pairs(cjson.decode(ARGV[3])) do
  local held = tonumber(redis.call('HGET', KEYS[2], partition) or '-1')
  if held < position - 1 then redis.call('HSET', KEYS[2], partition, position - 1) end
end
local lagging = {'lagging'}
local current = redis.call('HGETALL', KEYS[3])
for i = 1, #current, 2 do
  if tonumber(current[i]) >= 0
     and tonumber(redis.call('HGET', KEYS[2], current[i]) or '-1') < tonumber(current[i + 1]) then
    lagging[#lagging + 1] = current[i]
  end
end
if #lagging > 1 then return lagging end
if ARGV[4] == 'switch' then redis.call('SET', KEYS[1], ARGV[2]) end
return {'ok'}
"""


@dataclass(frozen=True)
class SwitchOutcome:
    switched: bool
    lagging: tuple[int, ...] = ()  # partitions to read further before trying again
    moved: bool = False  # someone else switched this site meanwhile
    lost: bool = False  # the new generation is gone: Redis was flushed or restarted empty


class Generations:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._switch = redis.register_script(SWITCH_SCRIPT)
        self._store = GenerationStore(redis)

    async def current(self, site_id: str) -> SiteKeys:
        return await self._store.current_one(site_id)

    async def switch(self, current: SiteKeys, new: SiteKeys, positions: dict[int, int],
                     really: bool = True) -> SwitchOutcome:
        """Make ``new`` current if it holds everything ``current`` does (``really=False``
        only raises its offsets and checks)."""
        reply = await self._switch(
            keys=[current.generation_pointer(), new.applied_offsets(), current.applied_offsets()],
            args=[current.generation, new.generation, orjson.dumps(
                {str(p): pos for p, pos in positions.items()}), "switch" if really else "check"])
        status = reply[0].decode()
        if status == "moved":
            return SwitchOutcome(False, moved=True)
        if status == "lost":
            return SwitchOutcome(False, lost=True)
        if status == "lagging":
            return SwitchOutcome(False, lagging=tuple(int(p) for p in reply[1:]))
        return SwitchOutcome(True)

    async def keys_of(self, site: SiteKeys) -> list[str]:
        return [k.decode() async for k in self._redis.scan_iter(
            match=site.generation_match(), count=1000)]

    async def delete(self, site: SiteKeys) -> int:
        """Remove every key of one generation (not the pointer); returns how many."""
        names = await self.keys_of(site)
        for start in range(0, len(names), 500):
            await self._redis.unlink(*names[start:start + 500])
        return len(names)

    async def snapshot(self, site: SiteKeys, suffixes: list[str]) -> dict[str, Any]:
        """The value of each named aggregate of one generation, read atomically (one
        MULTI/EXEC): counters as ints, rankings as {page: views}, HyperLogLogs as their
        count, page facts as {page: (views, its inline visitors, None once promoted)}. The
        applied offsets come back under ``"offsets"``."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(site.applied_offsets())
            for name in suffixes:
                key = site.named(name)
                kind = parse_suffix(name).aggregate.kind
                if kind is Kind.RANKING:
                    pipe.zrange(key, 0, -1, withscores=True)
                elif kind is Kind.FACTS:
                    pipe.hgetall(key)
                elif kind is Kind.UNIQUES:  # (a cluster's pipelines block pfcount())
                    pipe.execute_command("PFCOUNT", key)
                else:
                    pipe.get(key)
            replies = await pipe.execute()
        values: dict[str, Any] = {"offsets": {int(p): int(o) for p, o in replies[0].items()}}
        for name, reply in zip(suffixes, replies[1:], strict=True):
            kind = parse_suffix(name).aggregate.kind
            if kind is Kind.RANKING:
                values[name] = {m.decode(): -int(s) for m, s in reply}
            elif kind is Kind.FACTS:
                values[name] = {page.decode(): _facts(value.decode())
                                for page, value in reply.items()}
            else:
                values[name] = int(reply or 0)
        return values
