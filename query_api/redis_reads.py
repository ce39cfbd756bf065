"""Reading one site's aggregates: a batch of reads in one script call per round trip, checked
against the site's generation pointer.

Why a script: the pointer check and the reads happen atomically, so an answer never mixes
two generations, and the pointer costs no round trip of its own. The reader remembers the
last generation each site had and sends it along; when the pointer names another (a rebuild
switched), the script reads nothing and says so, and the batch is sent again for the new
generation. Each call's work is bounded by the caller (``MAX_KEYS_PER_CALL``): no single
script may hold Redis for long.

Every key is the site's (one hash-tag slot, the pointer included), so this runs on Cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from redis.exceptions import NoScriptError, RedisError

from contracts.generations import decode_pointer
from contracts.keys import DEFAULT_GENERATION, SiteKeys
from contracts.page_facts import ELEMENT_CHARS
from contracts.redis_client import RedisClient

MAX_KEYS_PER_CALL = 256  # keys one script call may touch: well under a millisecond
# HyperLogLog work one call may do, in units of about 40 us on this machine (SLOWLOG, a dense
# per-page day HyperLogLog of the 10,000-page site, at rest): PFCOUNT over several keys
# costs one unit a key, PFMERGE about five a source. A union of up to MAX_HLL_WORK keys is one
# PFCOUNT; a larger one is merged into a scratch key a few sources per call, then counted.
MAX_HLL_WORK = 16
MERGE_COST = 5
ENTRIES_PER_SLICE = 500  # ranking entries (pages' facts) one call may return
SCRATCH_TTL_MS = 30_000  # a scratch union outlives a process that died holding it

# KEYS[1]: the site's pointer; the rest are read. ARGV[1]: the generation the keys belong
# to, ARGV[2]: the reads as JSON, each [op, arguments...] with keys as indexes into KEYS.
# A *source* of visitors is a HyperLogLog (a key's index) or one page's facts in one bucket
# ([page, facts hash, the page's promoted HyperLogLog], ``contracts.page_facts``): its
# inline visitor elements, or its HyperLogLog once promoted.
#   ["get", k...]          each counter (missing: 0)
#   ["views", page, k...]  each page facts hash's views of page (missing: 0)
#   ["pfcount", s...]      one count of the union of the sources
#   ["card", k...]         each ranking's number of members
#   ["total", k...]        each ranking's sum of counts (scores are counts negated); only
#                          for rankings a quota bounds (a breakdown's: a few hundred members)
#   ["range", k, start, stop]  members and scores, in ranking order
#   ["facts", k...]        every field and value of the page facts hashes, flat
#   ["merge", dest, s...]  add the sources into the scratch HyperLogLog dest
#   ["take", dest]         the count of scratch key dest, which is then deleted
#   ["dump", dest]         the bytes of scratch key dest (a HyperLogLog), which is then
#                          deleted: a hot site's units are added up elsewhere
#   ["based", base, s...]  the count of the union of scratch key base (kept, its expiry
#                          renewed) and the sources; -1 when base is gone (expired)
# Inline elements are counted by adding them to a HyperLogLog, so a union counts what one
# HyperLogLog of all its visitors would. Returns {"moved", pointer} when the pointer names
# another generation, else {"ok", ...} with one reply per read. Unknown reads fail loudly.
READ_SCRIPT = """
local current = redis.call('GET', KEYS[1]) or '0'
if current ~= ARGV[1] then return {'moved', current} end
local reads = cjson.decode(ARGV[2])
-- The HyperLogLogs and the inline elements of the sources r[from], r[from + 1], ...
local function gather(r, from)
  local names, elements = {}, {}
  for i = from, #r do
    local s = r[i]
    if type(s) == 'number' then
      names[#names + 1] = KEYS[s]
    else
      local value = redis.call('HGET', KEYS[s[2]], s[1])
      if value then
        local mark = string.find(value, '[:!]')
        if string.sub(value, mark, mark) == '!' then
          names[#names + 1] = KEYS[s[3]]
        else
          for k = mark + 1, #value, ELEMENT do
            elements[#elements + 1] = string.sub(value, k, k + ELEMENT - 1)
          end
        end
      end
    end
  end
  return names, elements
end
-- Count a union, inline elements through a scratch HyperLogLog of the site's slot.
local function count(names, elements)
  if #elements == 0 then
    if #names == 0 then return 0 end
    return redis.call('PFCOUNT', unpack(names))
  end
  local scratch = KEYS[1] .. ':count'
  redis.call('DEL', scratch)
  for k = 1, #elements, 500 do
    redis.call('PFADD', scratch, unpack(elements, k, math.min(k + 499, #elements)))
  end
  local n = redis.call('PFCOUNT', scratch, unpack(names))
  redis.call('DEL', scratch)
  return n
end
local out = {'ok'}
for _, r in ipairs(reads) do
  local op, reply = r[1], {}
  if op == 'get' then
    for i = 2, #r do reply[#reply + 1] = tonumber(redis.call('GET', KEYS[r[i]]) or '0') end
  elseif op == 'views' then
    for i = 3, #r do
      local value = redis.call('HGET', KEYS[r[i]], r[2])
      reply[#reply + 1] = value and tonumber(string.match(value, '^%d+')) or 0
    end
  elseif op == 'pfcount' then
    reply = count(gather(r, 2))
  elseif op == 'facts' then
    for i = 2, #r do
      local flat = redis.call('HGETALL', KEYS[r[i]])
      for j = 1, #flat do reply[#reply + 1] = flat[j] end
    end
  elseif op == 'card' then
    for i = 2, #r do reply[#reply + 1] = redis.call('ZCARD', KEYS[r[i]]) end
  elseif op == 'total' then
    for i = 2, #r do
      local flat, sum = redis.call('ZRANGE', KEYS[r[i]], 0, -1, 'WITHSCORES'), 0
      for j = 2, #flat, 2 do sum = sum - tonumber(flat[j]) end
      reply[#reply + 1] = sum
    end
  elseif op == 'range' then
    reply = redis.call('ZRANGE', KEYS[r[2]], r[3], r[4], 'WITHSCORES')
  elseif op == 'merge' then
    local names, elements = gather(r, 3)
    redis.call('PFMERGE', KEYS[r[2]], unpack(names))
    for k = 1, #elements, 500 do
      redis.call('PFADD', KEYS[r[2]], unpack(elements, k, math.min(k + 499, #elements)))
    end
    redis.call('PEXPIRE', KEYS[r[2]], ARGV[3])
    reply = 0
  elseif op == 'take' then
    reply = redis.call('PFCOUNT', KEYS[r[2]])
    redis.call('DEL', KEYS[r[2]])
  elseif op == 'dump' then
    reply = redis.call('GET', KEYS[r[2]]) or ''
    redis.call('DEL', KEYS[r[2]])
  elseif op == 'based' then
    if redis.call('PEXPIRE', KEYS[r[2]], ARGV[3]) == 0 then
      reply = -1
    else
      reply = count(gather(r, 2))
    end
  else
    return redis.error_reply('unknown read: ' .. tostring(op))
  end
  out[#out + 1] = reply
end
return out
""".replace("ELEMENT", str(ELEMENT_CHARS))


class PageSource(NamedTuple):
    """One page's visitors in one bucket: its facts, or its HyperLogLog once promoted."""

    page: str
    facts: str  # the page facts hash that holds the page
    promoted: str  # the page's HyperLogLog


Source = str | PageSource  # a HyperLogLog's name, or a page's facts (see READ_SCRIPT)


@dataclass(eq=False)  # hashed by identity: replies are looked up per batch
class Batch:
    """Reads of one site's keys, to run in one script call (``ReadScript.run``)."""

    keys: list[str] = field(default_factory=list)
    reads: list[list[object]] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def key(self, name: str) -> int:
        if name not in self._index:
            self.keys.append(name)
            self._index[name] = len(self.keys) + 1  # KEYS[1] is the pointer
        return self._index[name]

    def add(self, op: str, names: Sequence[Source], *, member: str | None = None) -> int:
        """Queue a read; returns the index of its reply."""
        head: list[object] = [op] if member is None else [op, member]
        self.reads.append([*head, *(self._source(n) for n in names)])
        return len(self.reads) - 1

    def _source(self, name: Source) -> object:
        if isinstance(name, str):
            return self.key(name)
        return [name.page, self.key(name.facts), self.key(name.promoted)]

    def add_range(self, name: str, start: int, stop: int) -> int:
        self.reads.append(["range", self.key(name), start, stop])
        return len(self.reads) - 1


class GenerationChanged(RedisError):
    """A rebuild switched the site's generation between two reads of one request (rare:
    the request is answered from MongoDB, as when Redis cannot answer)."""


class Packer:
    """Batches filled up to ``MAX_KEYS_PER_CALL`` keys and ``MAX_HLL_WORK`` units of
    HyperLogLog work each, so no call holds Redis long."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self._work: list[int] = []

    def batch_for(self, n_keys: int, hll_work: int = 0) -> Batch:
        """The batch the next ``n_keys`` keys (and ``hll_work`` units of HyperLogLog work)
        go to: a new one when they would not fit (more than fit go alone)."""
        if not self.batches or (self.batches[-1].keys and (
                len(self.batches[-1].keys) + n_keys > MAX_KEYS_PER_CALL
                or self._work[-1] + hll_work > MAX_HLL_WORK)):
            self.batches.append(Batch())
            self._work.append(0)
        self._work[-1] += hll_work
        return self.batches[-1]

    def add_union(self, keys: SiteKeys, names: Sequence[Source]) -> tuple[Batch, int]:
        """Count the union of HyperLogLogs: one PFCOUNT when it fits a call, else merged
        into a scratch key of the site's slot a few sources per call and counted (then
        deleted) by the last one. Returns the batch and index of the reply with the count."""
        if len(names) <= MAX_HLL_WORK:
            batch = self.batch_for(len(names), hll_work=len(names))
            return batch, batch.add("pfcount", names)
        scratch = self._merge(keys, names)
        batch = self.batch_for(1, hll_work=1)
        return batch, batch.add("take", [scratch])

    def add_dump(self, keys: SiteKeys, names: Sequence[Source]) -> tuple[Batch, int]:
        """The union of the sources as HyperLogLog bytes (merged into a scratch key, read,
        deleted). Returns the batch and index of the reply with the bytes."""
        scratch = self._merge(keys, names)
        batch = self.batch_for(1, hll_work=1)
        return batch, batch.add("dump", [scratch])

    def add_new_base(self, keys: SiteKeys, settled: Sequence[Source], rest: Sequence[Source]
                     ) -> tuple[str, Batch, int]:
        """Count the union of ``settled`` and ``rest`` HyperLogLogs, keeping the union of
        ``settled`` as a scratch key (the *base*) for ``add_based`` to reuse. Returns its
        name, and the batch and index of the reply with the count."""
        base = self._merge(keys, settled)
        return (base, *self.add_based(base, rest))

    def add_based(self, base: str, rest: Sequence[Source]) -> tuple[Batch, int]:
        """Count the union of a base kept by ``add_new_base`` and ``rest``: one PFCOUNT.
        The reply is -1 when the base expired."""
        batch = self.batch_for(len(rest) + 1, hll_work=len(rest) + 1)
        return batch, batch.add("based", [base, *rest])

    def _merge(self, keys: SiteKeys, names: Sequence[Source]) -> str:
        """PFMERGE ``names`` into a new scratch key of the site's slot, a few per call."""
        scratch = keys.named(f"scratch:{uuid.uuid4().hex}")
        per_call = MAX_HLL_WORK // MERGE_COST
        for start in range(0, len(names), per_call):
            chunk = names[start:start + per_call]
            self.batch_for(len(chunk) + 1, hll_work=len(chunk) * MERGE_COST).add(
                "merge", [scratch, *chunk])
        return scratch


Plan = Callable[[SiteKeys], list[Batch]]


class ReadScript:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._script = redis.register_script(READ_SCRIPT)
        self._generations: dict[str, str] = {}  # site -> the generation its pointer last named

    def site(self, site_id: str) -> SiteKeys:
        return SiteKeys(site_id, self._generations.get(site_id, DEFAULT_GENERATION))

    async def run(self, site_id: str, plan: Plan, expect: SiteKeys | None = None
                  ) -> tuple[SiteKeys, list[list[Any]]]:
        """Run the batches ``plan`` makes for the site's current generation, in one round
        trip; replies per batch, in order. Re-plans when a rebuild switched generations,
        unless the caller ``expect``s one generation (the second read of a request)."""
        while True:
            keys = self.site(site_id)
            if expect is not None and keys != expect:
                raise GenerationChanged(site_id)
            batches = plan(keys)
            if not batches:
                return keys, []
            async with self._redis.pipeline(transaction=False) as pipe:
                for batch in batches:  # by name: a cluster pipeline blocks evalsha()
                    pipe.execute_command("EVALSHA", self._script.sha, len(batch.keys) + 1,
                                         keys.generation_pointer(), *batch.keys,
                                         keys.generation, orjson.dumps(batch.reads),
                                         SCRATCH_TTL_MS)
                replies = await self._execute(pipe, batches, keys)
            moved = next((r for r in replies if r[0] == b"moved"), None)
            if moved is None:
                return keys, [r[1:] for r in replies]
            self._generations[site_id] = decode_pointer(site_id, moved[1]).generation

    async def _execute(self, pipe: Any, batches: list[Batch], keys: SiteKeys) -> list[Any]:
        try:
            return list(await pipe.execute())
        except NoScriptError:  # not loaded yet (a new or restarted Redis): load it, once
            pass
        replies = []
        for batch in batches:
            replies.append(await self._script(
                keys=[keys.generation_pointer(), *batch.keys],
                args=[keys.generation, orjson.dumps(batch.reads), SCRATCH_TTL_MS]))
        return replies
