"""Applying one site's batch to Redis atomically, together with the Kafka offset it covers.

One Lua script per site and partition: it refuses to apply when the stored offset shows
that part of the range was already applied (a redelivery, or another aggregator after a
rebalance) and returns that offset, so the caller re-filters and applies only the rest.
Live counting also refuses when the site's generation pointer no longer names the
generation the keys were built for (a rebuild switched it): the caller re-reads the pointer
and applies to the new generation, whose offsets then tell what it already holds. A rebuild
writes its own generation with the same script, without that check. Every key is passed in
KEYS and carries the site's hash tag: one slot, Cluster-ready.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from aggregator.counting.aggregate import RedisOps
from contracts.generations import GenerationStore
from contracts.keys import SiteKeys, sites_key
from contracts.redis_client import RedisClient

# KEYS[1]: offsets hash, KEYS[2]: the site's generation pointer. ARGV: partition, first
# offset, last offset, ops as JSON, the generation of KEYS, "live" or "build". Each op is
# [opcode, key index, expire_at, arguments...] (``aggregate.RedisOps``). Every opcode is
# checked before anything is written: an unknown one fails the call loudly and changes
# nothing (a script is not rolled back halfway).
APPLY_SCRIPT = """
if ARGV[6] == 'live' and (redis.call('GET', KEYS[2]) or '0') ~= ARGV[5] then
  return -3
end
local stored = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if stored >= tonumber(ARGV[2]) then
  return stored
end
local ops = cjson.decode(ARGV[4])
for _, op in ipairs(ops) do
  if op[1] ~= 'i' and op[1] ~= 'z' and op[1] ~= 'p' then
    return redis.error_reply('unknown aggregate operation: ' .. tostring(op[1]))
  end
end
for _, op in ipairs(ops) do
  local kind, key = op[1], KEYS[op[2]]
  if kind == 'i' then
    redis.call('INCRBY', key, op[4])
  elseif kind == 'z' then
    for i = 4, #op, 2 do redis.call('ZINCRBY', key, op[i + 1], op[i]) end
  else
    redis.call('PFADD', key, unpack(op, 4))
  end
  if op[3] > 0 then redis.call('EXPIREAT', key, op[3]) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return -2
"""
APPLIED = -2
GENERATION_MOVED = -3


class GenerationMoved(Exception):
    """The site's pointer names another generation now; nothing was applied."""


class RedisSink:
    """Called by the pipeline; every method may block on the network and raises redis
    errors on outages (the pipeline backs off and retries)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._apply = redis.register_script(APPLY_SCRIPT)
        self._generations = GenerationStore(redis)

    async def current(self, site_ids: Iterable[str]) -> dict[str, SiteKeys]:
        """Each site's keys in its current generation, in one round trip."""
        return await self._generations.current(site_ids)

    async def applied_offsets(self, sites: Iterable[SiteKeys]) -> dict[tuple[str, int], int]:
        """(site, partition) -> last offset applied, for every given site, in one round trip."""
        site_list = list(sites)
        async with self._redis.pipeline(transaction=False) as pipe:
            for site in site_list:
                pipe.hgetall(site.applied_offsets())
            results = await pipe.execute()
        applied: dict[tuple[str, int], int] = {}
        for site, offsets in zip(site_list, results, strict=True):
            for partition, offset in offsets.items():
                applied[(site.site_id, int(partition))] = int(offset)
        return applied

    async def apply(self, ops: RedisOps, partition: int, first: int, last: int,
                    live: bool = True) -> int | None:
        """Apply atomically. Returns None when applied, or the stored offset when some of
        ``first..last`` was already applied (nothing was changed then). Live counting raises
        ``GenerationMoved`` when the site's current generation is no longer ``ops``'s."""
        result = int(await self._apply(keys=ops.keys, args=[
            partition, first, last, orjson.dumps(ops.ops), ops.generation,
            "live" if live else "build"]))
        if result == GENERATION_MOVED:
            raise GenerationMoved(ops.generation)
        return None if result == APPLIED else result

    async def remember_sites(self, site_ids: Iterable[str]) -> None:
        ids = list(site_ids)
        if ids:
            await self._redis.sadd(sites_key(), *ids)
