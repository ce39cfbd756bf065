"""Applying one site's batch to Redis atomically, together with the Kafka offsets it covers.

One Lua script per site and batch, covering every partition the batch holds of that site: it
refuses to apply when a stored offset shows that part of a range was already applied (a
redelivery, or another aggregator after a rebalance) and returns the stored offsets of those
partitions, so the caller re-filters and applies only the rest. Live counting also refuses
when the site's generation pointer no longer names the generation the keys were built for (a
rebuild switched it): the caller re-reads the pointer and applies to the new generation, whose
offsets then tell what it already holds. A rebuild writes its own generation with the same
script, without that check. Every key is passed in KEYS and carries the site's hash tag: one
slot, Cluster-ready.

A bucket's expiry is set once, when the script creates the key: an INCRBY whose result is its
own increment, a PFADD that reports a change (a new key always does) or a ZINCRBY, followed
by ``EXPIREAT ... NX`` (Redis 7), which leaves an expiry already set alone. The expiry is
absolute (``contracts.aggregates.expire_at``), so whoever creates the key sets the same one.

The page quota is decided here, in the same atomic step, because one site's events arrive on
every partition and several aggregators apply them concurrently: a page is named when it
has a field in the all-time page facts being written (``contracts.page_facts``), and their
count is kept beside them; the quota operation admits a page that is named already, or
while fewer than ``max_pages`` pages are named (``OVERFLOW_PAGE`` aside), and otherwise
refuses the whole step, naming the pages refused (``PagesDenied``). A refused step still
names the pages it admitted (0 views, the caller's retry counts them): the room
they take is gone before the script returns, so no other aggregator can name a refused page
in the meantime. The named set only grows within a generation, so a refusal is final there
and the caller's retry, with those pages counted as ``OVERFLOW_PAGE``, converges (a page
named by one aggregator and folded by another would split its views). When every page of
the step fits (the usual case), no membership is looked up at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import orjson

from aggregator.counting.aggregate import RedisOps
from contracts.aggregates import OPCODES, OVERFLOW_PAGE, Kind
from contracts.generations import GenerationStore
from contracts.keys import SiteKeys, sites_key
from contracts.page_facts import ELEMENT_CHARS, INLINE_MAX, LEADERBOARD
from contracts.redis_client import RedisClient

# KEYS[1]: offsets hash, KEYS[2]: the site's generation pointer. ARGV: partition, first
# offset, last offset, ops as JSON, the generation of KEYS, "live" or "build", then (partition,
# first offset, last offset) of every further partition covered (the first six are the
# one-partition layout of earlier versions, which ``bench/limits.py`` still sends). Each op
# is [opcode, key index, expire_at, arguments...] (``aggregate.RedisOps``). Every opcode is
# checked before anything is written: an unknown one fails the call loudly and changes
# nothing (a script is not rolled back halfway). Returns -2 (applied), -3 (generation moved),
# when nothing was applied because some range is already (partly) applied, a flat list of
# (partition, stored offset) for those partitions, or, when the quota operation refused
# pages, ``"quota"`` followed by those pages (nothing applied but the names of the pages the
# step admitted, score 0). A quota operation's
# third element is 0 for pages, or a dimension's tag (``contracts.aggregates.overflow_token``
# of an empty value) that prefixes each value it refuses.
APPLY_SCRIPT = """
if ARGV[6] == 'live' and (redis.call('GET', KEYS[2]) or '0') ~= ARGV[5] then
  return -3
end
local ranges = {{ARGV[1], ARGV[2], ARGV[3]}}
for i = 7, #ARGV, 3 do ranges[#ranges + 1] = {ARGV[i], ARGV[i + 1], ARGV[i + 2]} end
local partitions = {}
for j, range in ipairs(ranges) do partitions[j] = range[1] end
local stored = redis.call('HMGET', KEYS[1], unpack(partitions))
local overlap = {}
for j, range in ipairs(ranges) do
  local offset = tonumber(stored[j] or '-1')
  if offset >= tonumber(range[2]) then
    overlap[#overlap + 1] = tonumber(range[1])
    overlap[#overlap + 1] = offset
  end
end
if #overlap > 0 then
  return overlap
end
local ops = cjson.decode(ARGV[4])
local known = {['i'] = true, ['z'] = true, ['p'] = true, ['f'] = true, ['q'] = true,
               ['n'] = true}
for _, op in ipairs(ops) do
  if not known[op[1]] then
    return redis.error_reply('unknown aggregate operation: ' .. tostring(op[1]))
  end
end
local denied = {'quota'}
local admitted = {}
local admitted_pages = {}
for _, op in ipairs(ops) do
  if op[1] == 'n' then
    local named = tonumber(redis.call('GET', KEYS[op[2]]) or '0')
    if redis.call('HEXISTS', KEYS[op[3]], OVERFLOW) == 1 then named = named - 1 end
    local room = tonumber(op[4]) - named
    if (#op - 4) / 2 > room then
      for i = 5, #op, 2 do
        if redis.call('HEXISTS', KEYS[op[i + 1]], op[i]) == 0 then
          if room > 0 then
            room = room - 1
            admitted_pages[#admitted_pages + 1] = {KEYS[op[i + 1]], op[i], KEYS[op[2]]}
          else
            denied[#denied + 1] = op[i]
          end
        end
      end
    end
  elseif op[1] == 'q' then
    local key = KEYS[op[2]]
    local named = redis.call('ZCARD', key)
    if redis.call('ZSCORE', key, OVERFLOW) then named = named - 1 end
    local room = tonumber(op[4]) - named
    if #op - 4 > room then
      for i = 5, #op, 500 do
        local last = math.min(i + 499, #op)
        local scores = redis.call('ZMSCORE', key, unpack(op, i, last))
        for j = i, last do
          if not scores[j - i + 1] then
            if room > 0 then
              room = room - 1
              admitted[#admitted + 1] = {key, op[j]}
            elseif op[3] == 0 then
              denied[#denied + 1] = op[j]
            else
              denied[#denied + 1] = op[3] .. op[j]
            end
          end
        end
      end
    end
  end
end
if #denied > 1 then
  for _, named in ipairs(admitted) do
    redis.call('ZADD', named[1], 'NX', 0, named[2])
  end
  for _, named in ipairs(admitted_pages) do
    if redis.call('HSETNX', named[1], named[2], '0:') == 1 then redis.call('INCR', named[3]) end
  end
  return denied
end
-- byte order, as a sorted set orders equal scores (Lua's < follows the locale)
local function before(a, b)
  for k = 1, math.min(#a, #b) do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end
-- A bucket's leaderboard holds its best LEADERBOARD pages, exactly: views only grow, so a
-- page enters only by beating the last entry, which then leaves (removed first: a sorted
-- set that held one entry too many would stay in the large encoding for good). Each board's
-- size and last entry are read once a call and kept up to date here, so a page that is not
-- on a full board and does not beat its last entry (most pages of a big site) costs nothing.
local boards = {}
local function rank(board, page, views, at)
  local b, score = boards[board], -views
  if not b then
    b = {card = redis.call('ZCARD', board)}
    if b.card >= LEADERBOARD then b.last = redis.call('ZRANGE', board, -1, -1, 'WITHSCORES') end
    boards[board] = b
  end
  if b.card < LEADERBOARD then
    if redis.call('ZADD', board, score, page) == 1 then
      b.card = b.card + 1
      if b.card == 1 and at > 0 then redis.call('EXPIREAT', board, at) end
      if b.card == LEADERBOARD then
        b.last = redis.call('ZRANGE', board, -1, -1, 'WITHSCORES')
      end
    end
    return
  end
  local last_score = tonumber(b.last[2])
  if score > last_score or (score == last_score and not before(page, b.last[1])) then
    return  -- not on the board (its entries all rank before the last), and not entering
  end
  if redis.call('ZADD', board, 'XX', 'CH', score, page) == 0 then  -- not on it: enters
    redis.call('ZREM', board, b.last[1])
    redis.call('ZADD', board, score, page)
  elseif page ~= b.last[1] then
    return  -- moved up within the board: its last entry stays
  end
  b.last = redis.call('ZRANGE', board, -1, -1, 'WITHSCORES')
end
-- Adds one page's views and visitor elements to its field (contracts.page_facts); returns
-- its views now, and whether the field is new.
local function add_facts(hash, page, views, elements, promoted, at)
  local old = redis.call('HGET', hash, page)
  local total, inline, fresh = views, '', old == false
  if old then
    local mark = string.find(old, '[:!]')
    total = total + tonumber(string.sub(old, 1, mark - 1))
    if string.sub(old, mark, mark) == '!' then
      inline = false
    else
      inline = string.sub(old, mark + 1)
    end
  end
  if inline then
    local k = 1
    while k <= #elements and #inline <= INLINE_MAX * ELEMENT do
      local element, seen = string.sub(elements, k, k + ELEMENT - 1), false
      for j = 1, #inline, ELEMENT do
        if string.sub(inline, j, j + ELEMENT - 1) == element then seen = true; break end
      end
      if not seen then inline = inline .. element end
      k = k + ELEMENT
    end
    if #inline <= INLINE_MAX * ELEMENT then
      redis.call('HSET', hash, page, total .. ':' .. inline)
      return total, fresh
    end
    elements = inline .. string.sub(elements, k)  -- promoted: every visitor goes to the HLL
  end
  local hll, created = promoted .. page, 0
  for k = 1, #elements, 500 * ELEMENT do
    local members = {}
    for j = k, math.min(k + 500 * ELEMENT, #elements + 1) - 1, ELEMENT do
      members[#members + 1] = string.sub(elements, j, j + ELEMENT - 1)
    end
    created = created + redis.call('PFADD', hll, unpack(members))
  end
  if created > 0 and at > 0 then redis.call('EXPIREAT', hll, at, 'NX') end
  redis.call('HSET', hash, page, total .. '!')
  return total, fresh
end
for _, op in ipairs(ops) do
  local kind, key, at = op[1], KEYS[op[2]], op[3]
  if kind == 'q' or kind == 'n' then
  elseif kind == 'f' then
    local board, counter, promoted, fresh_pages = KEYS[op[4]], KEYS[op[5]], op[6], 0
    for i = 7, #op, 3 do
      local views, fresh = add_facts(key, op[i], op[i + 1], op[i + 2], promoted, at)
      if fresh then fresh_pages = fresh_pages + 1 end
      rank(board, op[i], views, at)
    end
    if at > 0 then redis.call('EXPIREAT', key, at, 'NX') end
    if fresh_pages > 0 and redis.call('INCRBY', counter, fresh_pages) == fresh_pages
        and at > 0 then
      redis.call('EXPIREAT', counter, at)
    end
  elseif kind == 'i' then
    if redis.call('INCRBY', key, op[4]) == op[4] and at > 0 then
      redis.call('EXPIREAT', key, at)
    end
  elseif kind == 'z' then
    for i = 4, #op, 2 do redis.call('ZINCRBY', key, op[i + 1], op[i]) end
    if at > 0 then redis.call('EXPIREAT', key, at, 'NX') end
  elseif redis.call('PFADD', key, unpack(op, 4)) == 1 and at > 0 then
    redis.call('EXPIREAT', key, at, 'NX')
  end
end
local marks = {}
for _, range in ipairs(ranges) do
  marks[#marks + 1] = range[1]
  marks[#marks + 1] = range[3]
end
redis.call('HSET', KEYS[1], unpack(marks))
return -2
""".replace("OVERFLOW", "'" + OVERFLOW_PAGE + "'").replace(
    "LEADERBOARD", str(LEADERBOARD)).replace("INLINE_MAX", str(INLINE_MAX)).replace(
    "ELEMENT", str(ELEMENT_CHARS))
FACTS = OPCODES[Kind.FACTS]
APPLIED = -2
GENERATION_MOVED = -3

Ranges = Mapping[int, tuple[int, int]]  # partition -> (first, last) offset of a batch

# How much one script call may do, in arguments of its operations (``script_cost``). A script
# holds Redis for every other client: measured on a 10,000-page site, 1.5-2 µs an argument,
# so this keeps one call near 3 ms and a query never waits longer behind counting. Batches
# above it are applied in several calls, each with the offsets it covers.
MAX_SCRIPT_COST = 2000


def script_cost(ops: RedisOps) -> int:
    """The arguments the script handles for ``ops``: increments, ranking pairs, HLL members;
    a page's facts count as its three arguments and each visitor element."""
    cost = 0
    for op in ops.ops:
        cost += len(op) - 3
        if op[0] == FACTS:
            cost += sum(len(str(e)) for e in op[8::3]) // ELEMENT_CHARS - 3
    return cost


class GenerationMoved(Exception):
    """The site's pointer names another generation now; nothing was applied."""


class PagesDenied(Exception):
    """The site's page quota refused ``pages`` (not named, and no room left); nothing was
    applied. Final for this generation: count them as ``OVERFLOW_PAGE`` and apply again."""

    def __init__(self, pages: frozenset[str]) -> None:
        super().__init__(f"{len(pages)} pages over the site's quota")
        self.pages = pages


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
        """``apply_ranges`` for one partition: None when applied, else its stored offset."""
        stored = await self.apply_ranges(ops, {partition: (first, last)}, live)
        return None if stored is None else stored[partition]

    async def apply_ranges(self, ops: RedisOps, ranges: Ranges,
                           live: bool = True) -> dict[int, int] | None:
        """Apply atomically. Returns None when applied, or partition -> stored offset for the
        partitions of which some of ``first..last`` was already applied (nothing was changed
        then). Live counting raises ``GenerationMoved`` when the site's current generation is
        no longer ``ops``'s; ``PagesDenied`` when the quota refused pages."""
        (partition, (first, last)), *more = ranges.items()
        args: list[bytes | str | int] = [partition, first, last, orjson.dumps(ops.ops),
                                         ops.generation, "live" if live else "build"]
        for partition, (first, last) in more:
            args += (partition, first, last)
        result = await self._apply(keys=ops.keys, args=args)
        if isinstance(result, list) and result and result[0] in (b"quota", "quota"):
            raise PagesDenied(frozenset(p.decode() if isinstance(p, bytes) else str(p)
                                        for p in result[1:]))
        if isinstance(result, list):
            return {int(p): int(o) for p, o in zip(result[::2], result[1::2], strict=True)}
        if int(result) == GENERATION_MOVED:
            raise GenerationMoved(ops.generation)
        return None

    async def remember_sites(self, site_ids: Iterable[str]) -> None:
        ids = list(site_ids)
        if ids:
            await self._redis.sadd(sites_key(), *ids)
