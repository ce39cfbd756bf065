"""Recomputing the aggregates from the topic into a new generation, then switching to it
(rebuild) or comparing it with the live one (verify).

Why it is exact while live counting goes on:

- Every event identity (site, event id) counts once, at its first occurrence in the topic
  (a client retry carries the same key, so it sits later in the same partition): the rule
  live counting follows through MongoDB's first write. The same event id under two sites
  is two events, in the rebuild as in MongoDB.
- The new generation is written with the live apply script, so it carries applied offsets
  per site and partition like the live one. The switch (``generations.SWITCH_SCRIPT``)
  happens only once the rebuild has read at least as far as live counting on every
  partition, atomically with live counting; from then on live counting writes the new
  generation and skips what the rebuild already put there. Sites are switched one by one;
  nothing more is applied by the rebuild to a site once it is switched.
- A rebuild that dies leaves the pointer alone: the current generation is untouched, and a
  new rebuild starts over in a fresh generation. A marker key per run detects a Redis that
  lost the half-built generation (flushed or restarted) before anything switches to it;
  the run then deletes what it wrote after the loss, which no pointer would ever name.

The page quota applies as in live counting (the same script, each site's ``max_pages``).
Which pages end up named may differ from the live generation's (it depends on how the
partitions interleaved), so ``--verify`` compares what must hold whatever the interleaving
(``diff``): every aggregate that is not per page exactly, a page named on both sides
exactly, and each ranking's total.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from aggregator.counting.aggregate import RedisOps, aggregate, to_ops
from aggregator.counting.pipeline import (
    MaxPages,
    by_cost,
    decode_all,
    default_max_pages,
    group_by_site,
    pieces,
    unit_of_event,
)
from aggregator.counting.redis_sink import PagesDenied, Ranges, RedisSink
from aggregator.counting.source import Record
from aggregator.recovery.generations import Facts, Generations
from aggregator.recovery.history import stored_events
from aggregator.recovery.topic_reader import TopicReader
from contracts.aggregates import (
    ALL_TIME,
    NAMED_PAGES,
    OVERFLOW_PAGE,
    PAGE_FACTS,
    TOP_PAGES,
    Kind,
    parse_suffix,
)
from contracts.event import PageView
from contracts.keys import SiteKeys, build_marker_key, site_of_unit, sites_key
from contracts.markers import Markers
from contracts.redis_client import RedisClient
from contracts.settings import Retention

log = logging.getLogger(__name__)
READ_BATCH = 5000
STORED_PARTITION = -1
SETTLE_TIMEOUT_S = 30.0


class RebuildLost(RuntimeError):
    """Redis lost the generation being built (flushed or restarted empty) midway."""


@dataclass(frozen=True)
class Difference:
    site_id: str
    aggregate: str  # the key without its generation, e.g. ``views:h490000``
    field: str  # page id for per-page aggregates, "" otherwise
    live: int
    rebuilt: int


@dataclass
class Outcome:
    generation: str
    stored: int = 0  # events read from MongoDB (``--source mongo``)
    records: int = 0
    counted: int = 0
    seconds: float = 0.0
    switched: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    unsettled: list[str] = field(default_factory=list)  # busy sites verify could not compare


Progress = Callable[[int, int], None]  # (records read, records to read)


@dataclass
class MongoHistory:
    """Start from the raw events in MongoDB below the group's committed offsets, then read
    the topic from those offsets (``aggregator.recovery.history``)."""

    events: AsyncCollection[dict[str, Any]]
    committed: dict[int, int]


class Builder:
    """Applies records to the new generation of every site they belong to."""

    def __init__(self, sink: RedisSink, generation: str, site: str | None,
                 retention: Retention, max_pages: MaxPages = default_max_pages) -> None:
        self._sink = sink
        self._retention = retention
        self._max_pages = max_pages
        self.generation = generation
        self._only_site = site
        self._seen: set[tuple[str, str]] = set()  # (site, event id) already counted
        self.sites: dict[str, SiteKeys] = {}
        self.switched: set[str] = set()
        self.last_seen: dict[str, dict[int, int]] = defaultdict(dict)  # site -> partition
        self.counted = 0
        self._stored_batches = 0

    async def add_stored(self, events: list[PageView]) -> None:
        """Stored events are each a first occurrence; they are applied under partition -1
        (a counter no live partition uses), as their offsets come in no particular order."""
        by_site: dict[str, list[PageView]] = defaultdict(list)  # by unit, for a hot site
        for e in events:
            if self._only_site is None or e.site_id == self._only_site:
                self._seen.add((e.site_id, e.event_id))
                by_site[unit_of_event(e)].append(e)
        for site_id, group in by_site.items():
            site = self.sites.setdefault(site_id, SiteKeys(site_id, self.generation))
            self.counted += len(group)
            overflow: set[str] = set()
            limit = self._max_pages(site_id)

            def plan(chunk: Sequence[PageView]) -> RedisOps:
                return to_ops(site, aggregate(chunk, overflow), self._retention,  # noqa: B023
                              limit)  # noqa: B023
            for chunk, ops in by_cost(group, plan):
                self._stored_batches += 1
                n = self._stored_batches
                await self._apply(ops, lambda: plan(chunk),  # noqa: B023
                                  {STORED_PARTITION: (n, n)}, overflow)

    async def add(self, records: list[Record]) -> None:
        located, _undecodable = decode_all(records)  # live counting dead-lettered those
        if self._only_site is not None:
            located = [r for r in located if r.event.site_id == self._only_site]
        for site_id, groups in group_by_site(located).items():
            if site_id in self.switched:
                continue  # live counting owns it now
            site = self.sites.setdefault(site_id, SiteKeys(site_id, self.generation))
            counted: set[tuple[int, int]] = set()  # first occurrences of their event ids
            for partition, group in groups.items():
                for r in group:
                    identity = (r.event.site_id, r.event.event_id)  # not the unit's
                    if identity not in self._seen:
                        self._seen.add(identity)
                        counted.add((r.partition, r.offset))
                self.last_seen[site_id][partition] = group[-1].offset
            self.counted += len(counted)
            overflow: set[str] = set()
            limit = self._max_pages(site_id)
            for piece, ops in pieces(site, groups, counted, self._retention,
                                     overflow=overflow, max_pages=limit):
                def plan() -> RedisOps:
                    events = [r.event for group in piece.values() for r in group  # noqa: B023
                              if (r.partition, r.offset) in counted]  # noqa: B023
                    return to_ops(site, aggregate(events, overflow),  # noqa: B023
                                  self._retention, limit)  # noqa: B023
                await self._apply(ops, plan, {p: (group[0].offset, group[-1].offset)
                                              for p, group in piece.items()}, overflow)

    async def _apply(self, ops: RedisOps, plan: Callable[[], RedisOps], ranges: Ranges,
                     overflow: set[str]) -> None:
        """Apply one piece to the new generation; pages the quota refuses join ``overflow``
        and the piece is planned again (``plan`` reads it)."""
        while True:
            try:
                await self._sink.apply_ranges(ops, ranges, live=False)
                return
            except PagesDenied as denied:
                overflow |= denied.pages
                ops = plan()


class Rebuild:
    """One run: ``run()`` reads, then switches (or verifies) every site it found."""

    def __init__(self, redis: RedisClient, reader: TopicReader, *, retention: Retention,
                 site: str | None = None, verify: bool = False,
                 progress: Progress | None = None,
                 max_pages: MaxPages = default_max_pages) -> None:
        self._redis = redis
        self._reader = reader
        self._gens = Generations(redis)
        self._verify = verify
        self._site = site
        generation = f"{'v' if verify else 'r'}{int(time.time() * 1000)}"
        self._builder = Builder(RedisSink(redis), generation, site, retention, max_pages)
        self._progress = progress or (lambda done, total: None)
        self.outcome = Outcome(generation)

    async def run(self, since_ms: int | None = None, history: MongoHistory | None = None
                  ) -> Outcome:
        started = time.perf_counter()
        marker = build_marker_key(self.outcome.generation)
        markers = Markers(self._redis)  # on a cluster, a copy on every master
        await markers.set(marker, "1")
        try:
            if history is not None:
                await self._read_history(history)
            await self._reader.start(since_ms, history.committed if history else None)
            await self._read_to_end()
            if not await markers.holds(marker):
                raise RebuildLost(self.outcome.generation)
            for site_id in sorted(self._builder.sites):
                if self._verify:
                    await self._compare(site_id)
                else:
                    await self._switch(site_id)
            if self._builder.sites and not self._verify:
                await self._redis.sadd(sites_key(), *{site_of_unit(unit)
                                                      for unit in self._builder.sites})
        except RebuildLost:
            await self._discard_unswitched()
            raise
        finally:
            await self._reader.stop()
            if self._verify:
                for site in self._builder.sites.values():
                    await self._gens.delete(site)
            await markers.delete(marker)
        self.outcome.records = sum(self._reader.positions[p] - self._reader.started_at[p]
                                   for p in self._reader.positions)
        self.outcome.counted = self._builder.counted
        self.outcome.seconds = time.perf_counter() - started
        return self.outcome

    async def _discard_unswitched(self) -> None:
        """Redis lost part of the new generation: delete the rest of it (what was applied
        after the loss), for every site not switched to it. No pointer names those keys,
        and nothing else would ever delete them."""
        for site_id, site in self._builder.sites.items():
            if site_id not in self._builder.switched:
                await self._gens.delete(site)

    async def _read_history(self, history: MongoHistory) -> None:
        done = 0
        async for batch in stored_events(history.events, history.committed, self._site):
            await self._builder.add_stored(batch)
            done += len(batch)
            self._progress(done, -1)
        self.outcome.stored = done

    async def _read_to_end(self) -> None:
        """Read up to the topic's end as it is now (new records keep arriving)."""
        targets = await self._reader.end_offsets()
        total = sum(targets[p] - self._reader.started_at.get(p, 0) for p in targets)
        while not self._reader.reached(targets):
            records = await self._reader.read(READ_BATCH, targets)
            await self._builder.add(records)
            done = sum(self._reader.positions[p] - self._reader.started_at[p]
                       for p in self._reader.positions)
            self._progress(done, total)

    async def _switch(self, site_id: str) -> None:
        new = self._builder.sites[site_id]
        while True:
            current = await self._gens.current(site_id)
            outcome = await self._gens.switch(current, new, self._reader.positions)
            if outcome.switched:
                self._builder.switched.add(site_id)
                deleted = await self._gens.delete(current)
                self.outcome.switched.append(site_id)
                log.info("generation_switched", extra={"fields": {
                    "site": site_id, "from": current.generation, "to": new.generation,
                    "old_keys_deleted": deleted}})
                return
            if outcome.lost:
                raise RebuildLost(new.generation)
            if outcome.lagging:
                await self._read_to_end()  # live counting is ahead on some partition

    async def _compare(self, site_id: str) -> None:
        """Compare once live counting has applied exactly the records the rebuild read for
        this site: on each partition, its offset must lie between the last record of the
        site the rebuild saw and the rebuild's read position."""
        scratch = self._builder.sites[site_id]
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            live = await self._gens.current(site_id)
            names = ({live.suffix_of(k) for k in await self._gens.keys_of(live)}
                     | {scratch.suffix_of(k) for k in await self._gens.keys_of(scratch)})
            suffixes = sorted(n for n in names if _in_catalog(n))
            now = await self._gens.snapshot(live, suffixes)
            seen = self._builder.last_seen[site_id]
            applied = {p: o for p, o in now["offsets"].items() if p != STORED_PARTITION}
            if any(applied.get(p, -1) >= self._reader.positions.get(p, 0) for p in applied):
                await self._read_to_end()  # live counting read further: so must we
                continue
            if any(applied.get(p, -1) < offset for p, offset in seen.items()):
                await asyncio.sleep(0.2)  # live counting has not caught up yet
                continue
            rebuilt = await self._gens.snapshot(scratch, suffixes)
            self.outcome.differences += diff(site_id, now, rebuilt, suffixes)
            return
        self.outcome.unsettled.append(site_id)


def _in_catalog(name: str) -> bool:
    """Whether a key name is an aggregate of this layout (not the offsets, nor a key an
    older layout left in a generation not rebuilt since)."""
    try:
        parse_suffix(name)
    except ValueError:
        return False
    return True


def diff(site_id: str, live: dict[str, Any], rebuilt: dict[str, Any], suffixes: list[str]
         ) -> list[Difference]:
    """Every difference between the live and the rebuilt aggregates of one site. When the
    page quota named other pages on each side (``named_pages``), a page named on one side
    only, and the overflow page, have no counterpart: those are not compared, nor what
    depends on which pages are named (the leaderboards and the count of named pages); the
    site's views and visitors still cover them."""
    live_named, rebuilt_named = named_pages(live), named_pages(rebuilt)
    comparable = None if live_named == rebuilt_named else live_named & rebuilt_named
    out: list[Difference] = []
    for name in suffixes:
        a, b = live[name], rebuilt[name]
        parsed = parse_suffix(name)
        if parsed.aggregate is PAGE_FACTS:
            out += _facts_differences(site_id, name, a, b, comparable)
            continue
        if comparable is not None and (
                parsed.aggregate in (TOP_PAGES, NAMED_PAGES) or (
                    parsed.aggregate.dimension is None and parsed.page is not None
                    and parsed.page not in comparable)):
            continue
        if parsed.aggregate.kind is Kind.RANKING:
            for member in sorted(set(a) | set(b)):
                if a.get(member, 0) != b.get(member, 0):
                    out.append(Difference(site_id, name, member, a.get(member, 0),
                                          b.get(member, 0)))
        elif a != b:
            out.append(Difference(site_id, name, "", a, b))
    return out


def _facts_differences(site_id: str, name: str, a: dict[str, Facts], b: dict[str, Facts],
                       comparable: set[str] | None) -> list[Difference]:
    """Pages whose views differ (their views), or whose inline visitors differ (``page
    visitors``: how many each side holds inline, -1 once promoted)."""
    out = []
    for page in sorted(set(a) | set(b)):
        if comparable is not None and page not in comparable:
            continue
        (views_a, inline_a), (views_b, inline_b) = a.get(page, _NO_FACTS), b.get(page, _NO_FACTS)
        if views_a != views_b:
            out.append(Difference(site_id, name, page, views_a, views_b))
        if inline_a != inline_b:
            out.append(Difference(site_id, name, f"{page} visitors",
                                  -1 if inline_a is None else len(inline_a),
                                  -1 if inline_b is None else len(inline_b)))
    return out


_NO_FACTS: Facts = (0, frozenset())


def named_pages(snapshot: dict[str, Any]) -> set[str]:
    """The pages one generation names: the fields of its all-time page facts, the overflow
    page aside."""
    return {page for name, facts in snapshot.items() if name.startswith(_ALL_TIME_FACTS)
            for page in facts} - {OVERFLOW_PAGE}


_ALL_TIME_FACTS = f"{PAGE_FACTS.name}:{ALL_TIME.token}:"
