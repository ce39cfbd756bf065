"""Answering from the Redis aggregates (``contracts.aggregates``) at a bounded cost a request.

- All time, or a range that is one bucket: the first rows of the page ranking are read as
  they are kept, sorted (the bucket's leaderboard), deeper ones ranked here from the page
  facts (``contracts.page_facts``); counters and HyperLogLogs directly.
- A range of several buckets (``query_api.tiling``): views are the sum of the buckets'
  counters, visitors one PFCOUNT over the union of their HyperLogLogs, and the ranking the
  sum of their rankings, merged in this process. The merged ranking and every count of a
  union are cached with the view counters they came from (``versioned_cache``): idle, a
  request reads only those counters; while events arrive, only the buckets that changed.
- Breakdowns: the same, per dimension, with each bucket's version read as
  ``redis_breakdowns`` says (for named events, not the views).

Every read goes through ``ReadScript``: one script call per batch, checked against the
site's generation pointer, each touching a bounded number of keys; a request takes one
round trip, two when something it needs changed. Raises redis errors when Redis is down
(``StatsService`` then asks MongoDB). Which ranges Redis can answer at all is decided by the
service, not here.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from contracts.aggregates import (
    ALL_TIME,
    DIMENSION_VISITORS,
    NAMED_PAGES,
    PAGE_VISITORS,
    TOP_PAGES,
    VIEWS,
    VISITORS,
    Aggregate,
    Dimension,
    Scope,
)
from contracts.keys import SiteKeys, intact_key
from contracts.markers import Markers
from contracts.page_facts import LEADERBOARD, views_of
from contracts.redis_client import RedisClient
from query_api import redis_breakdowns
from query_api.model import RangeTooCostly, Totals
from query_api.ranges import TimeRange
from query_api.redis_reads import (
    ENTRIES_PER_SLICE,
    MAX_HLL_WORK,
    SCRATCH_TTL_MS,
    Batch,
    Packer,
    PageSource,
    ReadScript,
    Source,
)
from query_api.tiling import tile
from query_api.versioned_cache import MergedRanking, VersionedCache

INTACT_CHECK_S = 1.0
MAX_MERGED_ENTRIES = 2_000_000  # (bucket, page) entries of merged rankings a process keeps
MAX_CACHED_COUNTS = 100_000  # cached PFCOUNTs of unions
TORN_RETRIES = 3
MAX_BASES = 2_000  # unions of settled buckets kept in Redis by one process (at most ~12 KB each)
BASE_REUSE_S = SCRATCH_TTL_MS / 1000 * 2 / 3  # used again only well before it expires
Query = tuple[list[Scope], str | None]  # scopes to add up, and a page (None: the site)
# Whose visitors a union counts: the site's (None), a page's, or a dimension's value's.
Subject = tuple[Aggregate, str | None]


def scopes_of_range(rng: TimeRange) -> list[Scope]:
    """All time, or the fewest buckets that tile a bounded range."""
    return tile(*rng.bounds()) if rng.bounded else [ALL_TIME]


@dataclass(slots=True)
class Recount:
    """A union to count again: its scopes and subject, its cache identity, and the
    versions of its scopes now (the site's views in each; for named events, their count)."""

    scopes: list[Scope]
    subject: Subject
    ident: Hashable
    version: tuple[int, ...]


@dataclass(slots=True)
class Base:
    """The union of a count's first ``settled`` scopes, kept in Redis under ``name``, and
    the views of those scopes it was made with."""

    name: str
    settled: int
    version: tuple[int, ...]
    used: float  # time.monotonic() of its last use


class TornRead(RedisError):
    """A ranking kept changing while it was read in slices, every time it was tried (the
    request is answered from MongoDB)."""


class RedisReader:
    source = "redis"

    def __init__(self, redis: RedisClient, max_ranking_entries: int = MAX_MERGED_ENTRIES
                 ) -> None:
        self._redis = redis
        self._max_ranking_entries = max_ranking_entries
        self._reads = ReadScript(redis)
        self._markers = Markers(redis)
        self._intact = False
        self._intact_checked = float("-inf")
        self._merged: OrderedDict[Hashable, MergedRanking] = OrderedDict()
        self._counts: VersionedCache[int] = VersionedCache(MAX_CACHED_COUNTS)
        self._bases: OrderedDict[Hashable, Base] = OrderedDict()
        self._unused_bases: list[str] = []

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def complete(self) -> bool:
        """Redis lost its state (flushed, restarted empty), or holds another layout, until a
        rebuild marks it intact. Asked at most once per ``INTACT_CHECK_S``: that is rare,
        and a request should not pay a round trip for it."""
        now = time.monotonic()
        if now - self._intact_checked >= INTACT_CHECK_S:
            self._intact = await self._markers.holds(intact_key())
            self._intact_checked = now
        return self._intact

    # -- views and visitors -------------------------------------------------------------

    async def totals(self, site_id: str, rng: TimeRange, page_id: str | None) -> Totals:
        return (await self._totals(site_id, [(scopes_of_range(rng), page_id)]))[0]

    async def series(self, site_id: str, slots: list[TimeRange], interval: str,
                     page_id: str | None) -> list[Totals]:
        del interval  # every slot is tiled on its own; the interval only shaped the slots
        return await self._totals(site_id, [(scopes_of_range(s), page_id) for s in slots])

    async def page_uniques(self, site_id: str, rng: TimeRange, pages: list[str]
                           ) -> dict[str, int]:
        scopes = scopes_of_range(rng)
        found = await self._totals(site_id, [(scopes, p) for p in pages], page_views=False)
        return {p: t.unique_visitors for p, t in zip(pages, found, strict=True)}

    async def scoped_totals(self, site_id: str, queries: list[Query]) -> list[Totals]:
        """Views and visitors of each (scopes, page) question (a hot site's unit's share)."""
        return await self._totals(site_id, queries)

    async def _totals(self, site_id: str, queries: list[Query], page_views: bool = True
                      ) -> list[Totals]:
        """Views and visitors of each query, in one round trip (two when visitors of a
        union must be counted again). The site's views in each scope are the version of
        every visitor count over those scopes: each event adds to its scopes' views and
        HyperLogLogs in one atomic step, so while those views are unchanged, so is any
        union of the site's HyperLogLogs over them, the site's or a page's."""
        every = list(dict.fromkeys(s for scopes, _ in queries for s in scopes))
        where = {s: i for i, s in enumerate(every)}
        # Per distinct list of scopes (the pages of one request share one): where its
        # views are among ``every``, and a cheap name for the range it tiles.
        shapes: dict[int, tuple[list[int], tuple[str, str, int]]] = {}
        for scopes, _ in queries:
            if id(scopes) not in shapes:
                shapes[id(scopes)] = ([where[s] for s in scopes],
                                      (scopes[0].token, scopes[-1].token, len(scopes)))
        plans: list[tuple[Batch, int, Batch, int]] = []  # per query: where views and count are
        made: list[Batch] = []

        def plan(keys: SiteKeys) -> list[Batch]:
            plans.clear()
            packer = Packer()
            packer.batch_for(len(every)).add("get", [keys.key(VIEWS, s) for s in every])
            for scopes, page in queries:
                counted = self._counts.known((keys, shapes[id(scopes)][1], page))
                views_in, at_views = packer.batch_for(0), -1
                if page is not None and page_views:
                    views_in = packer.batch_for(len(scopes))
                    at_views = views_in.add("views", [keys.facts_of(s, page)
                                                      for s in scopes], member=page)
                count_in, at_count = views_in, -1
                if not counted:
                    count_in, at_count = packer.add_union(keys, _hlls(keys, scopes,
                                                                      _visitors_of(page)))
                plans.append((views_in, at_views, count_in, at_count))
            made[:] = packer.batches
            return packer.batches

        keys, replies = await self._reads.run(site_id, plan)
        reply_of = {id(b): r for b, r in zip(made, replies, strict=True)}
        versions = [int(v) for v in replies[0][0]]
        version_of = {shape: tuple(versions[i] for i in at) for shape, (at, _) in shapes.items()}
        views: list[int] = []
        uniques: list[int | None] = []
        idents = [(keys, shapes[id(scopes)][1], page) for scopes, page in queries]
        for (scopes, page), ident, (views_in, at_views, count_in, at_count) in zip(
                queries, idents, plans, strict=True):
            version = version_of[id(scopes)]
            if page is None:
                views.append(sum(version))
            elif at_views >= 0:
                views.append(sum(int(v) for v in reply_of[id(views_in)][at_views]))
            else:
                views.append(0)  # not asked for
            if at_count >= 0:
                self._counts.put(ident, version, int(reply_of[id(count_in)][at_count]))
            uniques.append(self._counts.get(ident, version))
        stale = [i for i, u in enumerate(uniques) if u is None]
        if stale:  # views changed since these were counted: count them again
            recount = [Recount(queries[i][0], _visitors_of(queries[i][1]), idents[i],
                               version_of[id(queries[i][0])]) for i in stale]
            counted = await self._count(site_id, keys, recount)
            for i, item, n in zip(stale, recount, counted, strict=True):
                uniques[i] = n
                self._counts.put(item.ident, item.version, n)
        return [Totals(v, int(u or 0)) for v, u in zip(views, uniques, strict=True)]

    async def _count(self, site_id: str, keys: SiteKeys, items: list[Recount]) -> list[int]:
        """Count again unions whose views changed, each from a base when it has one: the
        union of its settled buckets (those that ended before now), kept in Redis while
        their views stay as they were, so a 30-day count costs one PFCOUNT of the base and
        today's bucket instead of merging 30 buckets (measured: /stats of 100 pages over
        30 days merged about 3,000 HyperLogLogs each time a new event came in). A base is
        made when a union is counted again (its first count is ``_totals``'s, without one): a
        one-off question leaves nothing behind."""
        counts: list[int | None] = [None] * len(items)
        now_ms = int(time.time() * 1000)
        todo = list(range(len(items)))
        while todo:  # again only for those whose base expired, from a new base
            todo = await self._count_round(site_id, keys, items, todo, counts, now_ms)
        await self._drop_bases()
        return [int(n or 0) for n in counts]

    async def _count_round(self, site_id: str, keys: SiteKeys, items: list[Recount],
                           todo: list[int], counts: list[int | None], now_ms: int
                           ) -> list[int]:
        """One round trip counting ``items[i]`` for each i in ``todo`` into ``counts``;
        returns those to count again."""
        spots: list[tuple[int, Batch, int, Base | None]] = []
        made: list[Batch] = []

        def plan(current: SiteKeys) -> list[Batch]:
            spots.clear()
            packer = Packer()
            for i in todo:
                spots.append((i, *self._plan_count(packer, current, items[i], now_ms)))
            made[:] = packer.batches
            return packer.batches

        _, replies = await self._reads.run(site_id, plan, expect=keys)
        reply_of = {id(b): r for b, r in zip(made, replies, strict=True)}
        again = []
        for i, batch, at, base in spots:
            n = int(reply_of[id(batch)][at])
            if n < 0:
                self._bases.pop(items[i].ident, None)
                again.append(i)
            else:
                counts[i] = n
                if base is not None:
                    self._keep_base(items[i].ident, base)
        return again

    def _plan_count(self, packer: Packer, keys: SiteKeys, item: Recount, now_ms: int
                    ) -> tuple[Batch, int, Base | None]:
        """Queue the count of one union: from its base when that is still valid, with a new
        base when the union is long enough to be worth one, else merged and dropped. Returns
        where the count will be, and the base made (None: none made)."""
        names = _hlls(keys, item.scopes, item.subject)
        settled = sum(1 for s in item.scopes if s.unit is not None and s.end_ms <= now_ms)
        if len(names) <= MAX_HLL_WORK or settled < 2 or len(names) - settled >= MAX_HLL_WORK \
                or not self._counts.known(item.ident):  # a first count: no base
            return (*packer.add_union(keys, names), None)
        base = self._bases.get(item.ident)
        if base is not None and base.settled == settled and \
                base.version == item.version[:settled] and \
                time.monotonic() - base.used < BASE_REUSE_S:
            base.used = time.monotonic()
            return (*packer.add_based(base.name, names[settled:]), None)
        name, batch, at = packer.add_new_base(keys, names[:settled], names[settled:])
        return batch, at, Base(name, settled, item.version[:settled], time.monotonic())

    def _keep_base(self, ident: Hashable, base: Base) -> None:
        old = self._bases.pop(ident, None)
        if old is not None:
            self._unused_bases.append(old.name)
        self._bases[ident] = base
        while len(self._bases) > MAX_BASES:
            self._unused_bases.append(self._bases.popitem(last=False)[1].name)

    async def _drop_bases(self) -> None:
        """Delete the bases this process stopped using (else they live until they expire):
        what the bases hold in Redis stays bounded by ``MAX_BASES``."""
        if not self._unused_bases:
            return
        names, self._unused_bases = self._unused_bases, []
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:  # one key a command: each site's keys are in its own slot
                pipe.execute_command("UNLINK", name)  # (a cluster pipeline's unlink() is not)
            await pipe.execute()

    # -- breakdowns (``redis_breakdowns``) ------------------------------------------------

    async def breakdown(self, site_id: str, rng: TimeRange, dimension: Dimension,
                        offset: int, limit: int) -> tuple[int, list[tuple[str, int, int]]]:
        """One read of the buckets' versions serves the ranking and the visitors: idle, a
        request is that one round trip."""
        scopes = scopes_of_range(rng)
        keys, replies = await self._reads.run(
            site_id, lambda keys: redis_breakdowns.plan_versions(keys, scopes, dimension))
        version = redis_breakdowns.versions_of(replies)
        ranked = (await self._merged_members(site_id, keys, scopes, version, dimension)).ranked()
        window = ranked[offset:offset + limit]
        uniques = await self._member_uniques(site_id, keys, scopes, version, dimension,
                                             [v for v, _ in window])
        return len(ranked), [(v, n, uniques[v]) for v, n in window]

    async def _member_uniques(self, site_id: str, keys: SiteKeys, scopes: list[Scope],
                              version: tuple[int, ...], dimension: Dimension, values: list[str]
                              ) -> dict[str, int]:
        """Each value's visitors: cached with the versions of the range's buckets, counted
        again (from a kept union of the settled buckets, as the pages' are) when those
        changed."""
        shape = (scopes[0].token, scopes[-1].token, len(scopes))
        per_value = DIMENSION_VISITORS[dimension]
        counts: dict[str, int] = {}
        stale: list[Recount] = []
        for value in values:
            ident = (keys, dimension.code, shape, value)
            found = self._counts.get(ident, version)
            if found is None:
                stale.append(Recount(scopes, (per_value, value), ident, version))
            else:
                counts[value] = found
        if stale:
            for item, n in zip(stale, await self._count(site_id, keys, stale), strict=True):
                counts[str(item.subject[1])] = n
                self._counts.put(item.ident, item.version, n)
        return counts

    async def filtered(self, site_id: str, rng: TimeRange) -> int:
        scopes = scopes_of_range(rng)
        _, replies = await self._reads.run(
            site_id, lambda keys: redis_breakdowns.plan_filtered(keys, scopes))
        return redis_breakdowns.total_of(replies)

    async def _merged_members(self, site_id: str, keys: SiteKeys, scopes: list[Scope],
                              versions: tuple[int, ...], dimension: Dimension) -> MergedRanking:
        """The range's ranking of the dimension's values, summed here from the buckets'
        rankings: only the buckets whose version changed since they were merged are read
        again (whole, with their version) and swapped in."""
        ident = (keys, dimension.code, tuple(scopes))
        merged = self._merged.pop(ident, None) or MergedRanking()
        changed = [s for s, v in zip(scopes, versions, strict=True)
                   if merged.buckets.get(s, (-1, {}))[0] != v]
        if changed:
            _, replies = await self._reads.run(
                site_id, lambda current: [redis_breakdowns.plan_bucket(current, s, dimension)
                                          for s in changed], expect=keys)
            for scope, reply in zip(changed, replies, strict=True):
                merged.swap(scope, *redis_breakdowns.bucket_of(reply))
        self._keep_merged(ident, merged)
        return merged

    # -- a hot site's units (``query_api.sharded_reader``) -------------------------------

    async def union_dumps(self, unit: str, unions: list[tuple[list[Scope], Subject]]
                          ) -> list[bytes]:
        """Each union of one unit's HyperLogLogs as the bytes of one HyperLogLog (empty:
        none), in one round trip: the units of a site are counted together elsewhere."""
        spots: list[tuple[Batch, int]] = []
        made: list[Batch] = []

        def plan(keys: SiteKeys) -> list[Batch]:
            packer = Packer()
            spots[:] = [packer.add_dump(keys, _hlls(keys, scopes, subject))
                        for scopes, subject in unions]
            made[:] = packer.batches
            return packer.batches

        _, replies = await self._reads.run(unit, plan)
        reply_of = {id(b): r for b, r in zip(made, replies, strict=True)}
        return [bytes(reply_of[id(batch)][at]) for batch, at in spots]

    async def page_views(self, unit: str, rng: TimeRange) -> dict[str, int]:
        """Every page's views in the range (one unit's share of a hot site)."""
        return (await self._merged_ranking(unit, scopes_of_range(rng))).counts

    async def value_views(self, unit: str, rng: TimeRange, dimension: Dimension
                          ) -> dict[str, int]:
        """Every value's views of a dimension in the range (one unit's share)."""
        scopes = scopes_of_range(rng)
        keys, replies = await self._reads.run(
            unit, lambda keys: redis_breakdowns.plan_versions(keys, scopes, dimension))
        version = redis_breakdowns.versions_of(replies)
        return (await self._merged_members(unit, keys, scopes, version, dimension)).counts

    # -- rankings -----------------------------------------------------------------------

    async def ranked_pages(self, site_id: str, rng: TimeRange, offset: int, limit: int
                           ) -> tuple[int, list[tuple[str, int]]]:
        scopes = scopes_of_range(rng)
        if len(scopes) == 1 and offset + limit <= LEADERBOARD:  # kept in order: read those
            return await self._read_top(site_id, scopes[0], offset, offset + limit)
        ranked = (await self._merged_ranking(site_id, scopes)).ranked()
        return len(ranked), ranked[offset:offset + limit]

    async def _merged_ranking(self, site_id: str, scopes: list[Scope]) -> MergedRanking:
        """The range's ranking, summed here: each bucket's views (its version) are read; a
        bucket whose version changed since it was merged is read again and swapped in."""
        def plan(keys: SiteKeys) -> list[Batch]:
            batch = Batch()
            batch.add("get", [keys.key(VIEWS, s) for s in scopes])
            batch.add("get", [keys.key(NAMED_PAGES, s) for s in scopes])
            return [batch]

        keys, replies = await self._reads.run(site_id, plan)
        versions = [int(v) for v in replies[0][0]]
        sizes = [int(n) for n in replies[0][1]]
        ident = (keys, tuple(scopes))
        merged = self._merged.pop(ident, None) or MergedRanking()
        to_read = sum(size for scope, version, size in zip(scopes, versions, sizes, strict=True)
                      if merged.buckets.get(scope, (-1, {}))[0] != version)
        if to_read > self._max_ranking_entries:
            if merged.buckets:
                self._merged[ident] = merged  # what was merged before stays cached
            raise RangeTooCostly(
                f"ranking this range reads {to_read:,} (time bucket, page) entries from "
                f"{len(scopes):,} buckets; one request reads at most "
                f"{self._max_ranking_entries:,}: ask for a shorter range")
        for scope, version, size in zip(scopes, versions, sizes, strict=True):
            if merged.buckets.get(scope, (-1, {}))[0] != version:
                pages: dict[str, int] = {}  # no page: nothing to read
                if size:
                    version, pages = await self._read_facts(site_id, keys, scope, size)
                merged.swap(scope, version, pages)
        self._keep_merged(ident, merged)
        return merged

    def _keep_merged(self, ident: Hashable, merged: MergedRanking) -> None:
        self._merged[ident] = merged
        while sum(m.size for m in self._merged.values()) > MAX_MERGED_ENTRIES and \
                len(self._merged) > 1:
            self._merged.popitem(last=False)

    async def _read_top(self, site_id: str, scope: Scope, start: int, stop: int
                        ) -> tuple[int, list[tuple[str, int]]]:
        """Rows ``start`` to ``stop`` of a bucket's page ranking, within its leaderboard
        (``LEADERBOARD``), as Redis keeps it, and its size (pages named): one call."""
        def plan(keys: SiteKeys) -> list[Batch]:
            batch = Batch()
            batch.add_range(keys.key(TOP_PAGES, scope), start, stop - 1)
            batch.add("get", [keys.key(NAMED_PAGES, scope)])
            return [batch]

        _, replies = await self._reads.run(site_id, plan)
        return int(replies[0][1][0]), _pairs(replies[0][0])

    async def _read_facts(self, site_id: str, keys: SiteKeys, scope: Scope, size: int
                          ) -> tuple[int, dict[str, int]]:
        """Every page's views in a bucket of about ``size`` pages, and the bucket's views
        they add up to. Read from the page facts about ``ENTRIES_PER_SLICE`` pages a call,
        with the bucket's views read in the first call and the last: when those agree, no
        event came in between and the slices fit together.

        The last attempt reads every hash in one call, which nothing can tear: while events
        arrive, the aggregator applies a busy site's counts every few milliseconds (measured
        on a 10,000-page ranking read in 20 slices: torn on every attempt, and the request
        fell back to MongoDB)."""
        for attempt in range(TORN_RETRIES):
            whole = attempt == TORN_RETRIES - 1

            def plan(current: SiteKeys, whole: bool = whole) -> list[Batch]:
                hashes = current.facts_hashes(scope)
                per_call = len(hashes) if whole else max(
                    1, len(hashes) * ENTRIES_PER_SLICE // max(size, 1))
                counter = current.key(VIEWS, scope)
                batches = []
                for at in range(0, len(hashes), per_call):
                    batch = Batch()
                    batch.add("facts", hashes[at:at + per_call])
                    batches.append(batch)
                batches[0].add("get", [counter])
                batches[-1].add("get", [counter])
                return batches

            _, replies = await self._reads.run(site_id, plan, expect=keys)
            before, after = int(replies[0][1][0]), int(replies[-1][-1][0])
            if before == after:
                return before, {flat[i].decode(): views_of(flat[i + 1].decode())
                                for reply in replies for flat in (reply[0],)
                                for i in range(0, len(flat), 2)}
        raise TornRead(scope.token)


def _pairs(flat: list[Any]) -> list[tuple[str, int]]:
    """ZRANGE WITHSCORES replies (member, negated views) as (page, views)."""
    return [(flat[i].decode(), -int(flat[i + 1])) for i in range(0, len(flat), 2)]


def _visitors_of(page: str | None) -> Subject:
    return (VISITORS, None) if page is None else (PAGE_VISITORS, page)


def _hlls(keys: SiteKeys, scopes: list[Scope], subject: Subject) -> list[Source]:
    """Where the subject's visitors are in each scope: a page's are in its facts."""
    aggregate, member = subject
    if aggregate is PAGE_VISITORS and member is not None:
        return [PageSource(member, keys.facts_of(s, member), keys.key(aggregate, s, member))
                for s in scopes]
    return [keys.key(aggregate, s, member) for s in scopes]
