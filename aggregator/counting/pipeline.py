"""The checkpoint: how one batch of Kafka records becomes exact counts.

Effectively-once, step by step (a crash between any two steps is safe):

1. Decode every record and build its MongoDB document; a record that fails either way is
   poison: it goes to the dead-letter topic with the reason (and counts as done), so one
   bad record can never stop its partition or crash every group member in turn.
2. Read the last offset applied to Redis for each (site, partition) in the batch: records at
   or below it were counted already (before a crash or a rebalance, or by a rebuild that
   read ahead of live counting and switched the site) and are settled.
3. Write every record to MongoDB (``_id`` = (site, event id)), settled ones too: live
   counting is the only writer of raw events, so a record a rebuild counted first must
   still be stored here. Of the rest, duplicates whose stored (partition, offset) is their
   own are our earlier write: they count. Others are client retries: they don't, but their
   offsets still advance the marker.
4. For each site, one atomic Redis script adds the counts and stores the last offset it
   covers in each of the batch's partitions (a few sites' scripts in flight at once). If a
   stored offset shows that part was already applied (another aggregator after a
   rebalance), re-filter and apply only the rest.
5. Commit the Kafka offsets. Nothing is committed before both stores hold the batch.

The page quota (``redis_sink``): when the script refuses pages of a piece, those pages count
as ``OVERFLOW_PAGE`` in Redis for the rest of the batch (MongoDB keeps the raw event), and
the piece and every later one are planned again. Nothing of a refused piece was applied, so
the pieces and their offsets stay exact through a crash at any point.

The stages overlap (``run``): steps 1-3 of batch N+1 run while batch N goes through steps 4-5.
What keeps it exact: MongoDB writes stay in batch order, so MongoDB has decided which copies
of batch N count before batch N+1 is written; batch N+1 goes to Redis only after batch N is
applied, so per (site, partition) Redis sees offsets in order; batches are committed in order,
each only after both stores hold it. A batch read with markers older than the batch before it
is harmless: the script's own offset check refuses what was applied meanwhile.

Store outages (connection errors; a Redis refusing writes with OOM over its ``maxmemory``
or BUSY running a script) pause the batch: back off, keep the group membership,
retry the same step, never commit; the state change is logged once (``health``). Anything
else raises and crashes the process, for the supervisor to restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from aiokafka.errors import KafkaError
from pymongo.errors import ConnectionFailure
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aggregator.counting.aggregate import RedisOps, aggregate, count_bots, to_ops
from aggregator.counting.dead_letters import DeadLetters, Poison
from aggregator.counting.dimensions import default_classifier, stored_dims, ua_of
from aggregator.counting.mongo_sink import Located
from aggregator.counting.redis_sink import (
    MAX_SCRIPT_COST,
    GenerationMoved,
    PagesDenied,
    Ranges,
    script_cost,
)
from aggregator.counting.source import Record, RecordSource
from aggregator.health import StoreHealth
from aggregator.metrics import AggregatorMetrics
from contracts.event import PageView, UndecodableRecord, decode_event
from contracts.failpoints import (
    AFTER_MONGO,
    AFTER_REDIS,
    CRASH_EXIT_STATUS,
    MONGO_AHEAD,
    Failpoint,
)
from contracts.keys import SiteKeys, site_of_unit, unit_of
from contracts.mongo import event_document
from contracts.settings import Retention
from contracts.tenancy import DEFAULT_MAX_PAGES

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors that mean "the store cannot take this now": back off and retry the same step. A
# Redis over ``maxmemory`` (policy noeviction) refuses writes with OOM until memory is freed
# or raised; the apply script is refused before its first write, so nothing is half-applied.
TRANSIENT: dict[str, tuple[type[BaseException], ...]] = {
    "mongo": (ConnectionFailure,),
    "redis": (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError,
              OutOfMemoryError),
    "kafka": (KafkaError,),
}
# Redis replies redis-py has no class for: BUSY (another script is running past
# busy-reply-threshold) is as transient as a restart.
TRANSIENT_REDIS_REPLIES = ("BUSY ",)
WRITES = "pipeline_writes"  # the health observer of the pipeline's Redis writes


def is_transient(store: str, error: BaseException) -> bool:
    if isinstance(error, TRANSIENT[store]):
        return True
    return (store == "redis" and isinstance(error, ResponseError)
            and str(error).startswith(TRANSIENT_REDIS_REPLIES))


class EventStore(Protocol):
    """Raw events, written once (``mongo_sink.MongoSink``)."""

    async def write(self, fresh: Sequence[Located], settled: Sequence[Located] = ()
                    ) -> list[Located]: ...


class AggregateStore(Protocol):
    """The aggregates and their applied offsets (``redis_sink.RedisSink``)."""

    async def current(self, site_ids: Iterable[str]) -> dict[str, SiteKeys]: ...

    async def applied_offsets(self, sites: Iterable[SiteKeys]) -> dict[tuple[str, int], int]: ...

    async def apply_ranges(self, ops: RedisOps, ranges: Ranges,
                           live: bool = True) -> dict[int, int] | None: ...

    async def remember_sites(self, site_ids: Iterable[str]) -> None: ...


# Sites' apply scripts one aggregator keeps in flight at once (``Pipeline.apply``).
APPLY_CONCURRENCY = 8
MaxPages = Callable[[str], int | None]  # site -> its page quota (None: no quota)


def default_max_pages(site_id: str) -> int:
    """The quota of a site the registry does not name (``DEFAULT_MAX_PAGES``)."""
    return DEFAULT_MAX_PAGES


class Stopping(Exception):
    """Shutdown was asked for while waiting out an outage; the batch is left uncommitted."""


@dataclass(frozen=True, slots=True)
class CrashHook:
    """Fires the aggregator's failpoints (each named and described in
    ``contracts/failpoints.py``): exits abruptly at that step of the given batch and every
    later one, to prove a crash there loses and doubles nothing. ``point`` is None (off)
    unless ``AGGREGATOR_CRASH_AT`` names one; ``exit`` is replaceable for unit tests."""

    point: str | None = None
    at_batch: int = 0
    exit: Callable[[int], None] = os._exit

    def armed(self, failpoint: Failpoint, batch_number: int) -> bool:
        return failpoint.name == self.point and batch_number >= self.at_batch

    def maybe_crash(self, failpoint: Failpoint, batch_number: int) -> None:
        if self.armed(failpoint, batch_number):
            logging.getLogger(__name__).error("crash_hook_fired", extra={"fields": {
                "point": failpoint.name, "batch": batch_number}})
            logging.shutdown()
            self.exit(CRASH_EXIT_STATUS)


@dataclass(slots=True)
class Stored:
    """A batch whose raw events MongoDB holds: what goes to Redis next, then the commit."""

    number: int
    records: int
    started: float
    sites: dict[str, SiteKeys]
    fresh: list[Located]  # above the applied offsets read before the MongoDB write
    counted: set[tuple[int, int]]  # (partition, offset) of the copies that count
    next_offsets: dict[int, int]


@dataclass
class Pipeline:
    source: RecordSource
    mongo: EventStore
    redis: AggregateStore
    dead_letters: DeadLetters
    metrics: AggregatorMetrics
    stopping: asyncio.Event
    retention: Retention
    backoff_max_s: float = 5.0
    max_script_cost: int = MAX_SCRIPT_COST
    crash: CrashHook = field(default_factory=CrashHook)
    health: StoreHealth = field(default_factory=StoreHealth)
    max_pages: MaxPages = default_max_pages  # read once per site and batch
    apply_concurrency: int = APPLY_CONCURRENCY
    batches: int = 0
    known_sites: set[str] = field(default_factory=set)  # already in ``sites_key()``
    in_flight: int = 0  # batches polled and not yet committed
    # The consumer is polled by the main loop and kept alive by whichever stage waits out an
    # outage: never both at once.
    _consumer: asyncio.Lock = field(default_factory=asyncio.Lock)
    _ahead: asyncio.Event = field(default_factory=asyncio.Event)  # the next batch is stored

    async def run(self, max_records: int, max_wait_ms: int) -> None:
        """Poll and process until ``stopping`` is set; the batches in hand are always
        finished. Batch N+1 is polled and written to MongoDB while a task takes batch N to
        Redis and then commits it, so a commit never waits for a poll: during a rebalance a
        poll blocks until the new assignment, and the revocation waits for the commits."""
        applying: asyncio.Task[None] | None = None
        try:
            while not self.stopping.is_set():
                if applying is not None and applying.done():
                    await applying  # raises what the task raised
                    applying = None
                records = await self._poll(max_records, max_wait_ms)
                if not records:
                    continue
                stored = await self.store(records)
                self._ahead.set()
                if applying is not None:
                    await applying
                self._ahead = asyncio.Event()
                applying = asyncio.create_task(self._apply_and_commit(stored, self._ahead))
            if applying is not None:  # stopping: finish the batch in hand
                await applying
        except Stopping:  # a store is down and shutdown was asked: what can finish, does
            if applying is not None:
                with contextlib.suppress(Stopping):
                    await applying
        except BaseException:
            if applying is not None:
                applying.cancel()
            raise

    async def _apply_and_commit(self, batch: Stored, ahead: asyncio.Event) -> None:
        await self.apply(batch)
        if self.crash.armed(MONGO_AHEAD, batch.number):
            await ahead.wait()  # the next batch is in MongoDB
            self.crash.maybe_crash(MONGO_AHEAD, batch.number)
        await self.commit(batch)

    async def process(self, records: list[Record]) -> None:
        """One batch through every step, with nothing overlapping."""
        self.in_flight += 1
        stored = await self.store(records)
        await self.apply(stored)
        await self.commit(stored)

    async def _poll(self, max_records: int, max_wait_ms: int) -> list[Record]:
        async with self._consumer:
            records = await self.source.poll(max_records, max_wait_ms)
        if records:
            self.in_flight += 1
        return records

    async def store(self, records: list[Record]) -> Stored:
        """Steps 1-3: dead letters, the applied offsets, the raw events in MongoDB."""
        started = time.perf_counter()
        self.batches += 1
        number = self.batches
        located, poison = decode_all(records)
        if poison:
            await self._retry("kafka", lambda: self.dead_letters.send(poison))
            self.metrics.dead_lettered.inc(len(poison))
            log.warning("dead_lettered", extra={"fields": {
                "records": len(poison), "first_reason": poison[0].reason}})

        site_ids = {unit_of_event(r.event) for r in located}
        sites = await self._retry("redis", lambda: self.redis.current(site_ids))
        applied = await self._retry("redis", lambda: self.redis.applied_offsets(sites.values()))
        fresh: list[Located] = []
        settled: list[Located] = []
        for one in located:
            applied_at = applied.get((unit_of_event(one.event), one.partition), -1)
            (fresh if one.offset > applied_at else settled).append(one)
        self.metrics.skipped.labels("already_applied").inc(len(settled))

        counting = await self._retry("mongo", lambda: self.mongo.write(fresh, settled))
        self.metrics.skipped.labels("client_retry").inc(len(fresh) - len(counting))
        self.crash.maybe_crash(AFTER_MONGO, number)

        next_offsets: dict[int, int] = {}
        for r in records:
            next_offsets[r.partition] = max(next_offsets.get(r.partition, 0), r.offset + 1)
        return Stored(number, len(records), started, sites, fresh,
                      {(r.partition, r.offset) for r in counting}, next_offsets)

    async def apply(self, batch: Stored) -> None:
        """Step 4: one script per site (per unit of a hot site: ``contracts.keys.unit_of``),
        covering all of its partitions."""
        new_sites = {r.event.site_id for r in batch.fresh} - self.known_sites
        if new_sites:
            await self._retry("redis", lambda: self.redis.remember_sites(new_sites), WRITES)
            self.known_sites |= new_sites
        turns = asyncio.Semaphore(self.apply_concurrency)

        async def apply_site(site_id: str, groups: dict[int, list[Located]]) -> None:
            async with turns:
                await self._apply_site(batch.sites, site_id, groups, batch.counted)

        # Sites are independent steps (each its own offsets and generation): their scripts
        # are in flight together, a few at a time, so a batch of many sites (or a hot
        # site's units, on several cluster masters) does not wait one round trip per site.
        await asyncio.gather(*(apply_site(site_id, groups)
                               for site_id, groups in group_by_site(batch.fresh).items()))
        self.crash.maybe_crash(AFTER_REDIS, batch.number)

    async def commit(self, batch: Stored) -> None:
        """Step 5, once both stores hold the batch."""
        await self._retry("kafka", lambda: self.source.commit(batch.next_offsets))
        self.metrics.batch_size.observe(batch.records)
        self.metrics.batch_seconds.observe(time.perf_counter() - batch.started)
        self.in_flight -= 1
        if not self.in_flight:
            self.source.settled()

    async def _apply_site(self, sites: dict[str, SiteKeys], site_id: str,
                          groups: dict[int, list[Located]], counted: set[tuple[int, int]]
                          ) -> None:
        """Apply one site's records of every partition, in pieces (``pieces``) so that no
        script holds Redis for long. Each piece is one atomic step with the offsets it
        covers: after a crash between two pieces the redelivery finds the first one's
        offsets and counts only the rest. ``overflow`` gathers the pages the quota refused;
        the later pieces are planned with it."""
        overflow: set[str] = set()
        limit = self.max_pages(site_id)
        for piece, ops in pieces(sites[site_id], groups, counted, self.retention,
                                 self.max_script_cost, overflow, limit):
            await self._apply_piece(sites, site_id, piece, counted, ops, overflow, limit)

    async def _apply_piece(self, sites: dict[str, SiteKeys], site_id: str,
                           groups: dict[int, list[Located]], counted: set[tuple[int, int]],
                           ops: RedisOps | None, overflow: set[str], limit: int | None
                           ) -> None:
        """Apply records to the site's current generation; when a rebuild switched
        generations meanwhile, re-read the pointer and apply what the new generation does
        not hold yet (its stored offsets say); when the quota refused pages, count them as
        the overflow page and apply again."""
        while groups:
            events = [r.event for group in groups.values() for r in group
                      if (r.partition, r.offset) in counted]
            piece_ops = ops or to_ops(sites[site_id], aggregate(events, overflow),
                                      self.retention, limit)
            ranges = {p: (group[0].offset, group[-1].offset) for p, group in groups.items()}
            try:
                stored = await self._retry(
                    "redis", lambda: self.redis.apply_ranges(piece_ops, ranges),  # noqa: B023
                    WRITES)
            except GenerationMoved:
                sites.update(await self._retry("redis", lambda: self.redis.current([site_id])))
                log.info("generation_switched", extra={"fields": {
                    "site": site_id, "generation": sites[site_id].generation}})
                overflow.clear()  # refusals were the old generation's
                ops = None
                continue
            except PagesDenied as denied:
                overflow |= denied.pages
                ops = None
                continue
            if stored is None:
                self.metrics.applied.inc(len(events))
                bots = count_bots(events)
                if bots:
                    self.metrics.filtered.labels(site_of_unit(site_id), "bot").inc(bots)
                classifier = default_classifier()
                self.metrics.ua_cache.labels("hit").set(classifier.hits)
                self.metrics.ua_cache.labels("miss").set(classifier.misses)
                if overflow:
                    folded = sum(1 for e in events if e.page_id in overflow)
                    if folded:
                        self.metrics.over_quota.labels(site_of_unit(site_id)).inc(folded)
                return
            for partition, offset in stored.items():
                group = groups[partition]
                rest = [r for r in group if r.offset > offset]
                self.metrics.skipped.labels("already_applied").inc(len(group) - len(rest))
                groups[partition] = rest
            groups = {p: group for p, group in groups.items() if group}
            ops = None

    async def _retry(self, store: str, step: Callable[[], Awaitable[T]],
                     observer: str = "pipeline") -> T:
        """Run ``step`` until it succeeds, backing off while the store is out. Writes report
        as their own observer: a Redis over maxmemory answers reads but refuses writes, and
        the next batch's successful read must not mark it healthy while a write is held."""
        delay = 0.05
        while True:
            try:
                result = await step()
            except Exception as exc:
                if not is_transient(store, exc):
                    raise
                self.health.report(store, observer, exc)
                if self.stopping.is_set():
                    raise Stopping from exc
                if self._consumer.locked():  # a poll or the other stage talks to Kafka
                    await asyncio.sleep(0)
                else:
                    async with self._consumer:
                        await self.source.keepalive()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            self.health.report(store, observer, None)
            return result


def decode_all(records: list[Record]) -> tuple[list[Located], list[Poison]]:
    """Split records into events ready to store and poison. Live counting and rebuilds both
    use this, so they agree on which records count."""
    located: list[Located] = []
    poison: list[Poison] = []
    for record in records:
        try:
            event = decode_event(record.value)
        except UndecodableRecord as exc:
            poison.append(Poison(record, str(exc)))
            continue
        try:
            document = event_document(event, record.partition, record.offset)
            dims = stored_dims(ua_of(event.user_agent, event.via), event.referrer,
                               event.host)
            if dims is not None:  # for the MongoDB fallback's breakdowns and bot filter
                document["dims"] = dims
        except (ValueError, OverflowError) as exc:  # a value no date can hold: the record's
            # fault (decode_event bounds times already; this is the last line). Any other
            # error is a bug of ours and must stop the aggregator, not dead-letter events.
            poison.append(Poison(record, f"cannot be stored: {type(exc).__name__}: {exc}"))
            continue
        located.append(Located(event, record.partition, record.offset, document))
    return located, poison


def pieces(site: SiteKeys, groups: dict[int, list[Located]], counted: set[tuple[int, int]],
           retention: Retention, max_cost: int = MAX_SCRIPT_COST,
           overflow: Collection[str] = (), max_pages: int | None = None
           ) -> Iterator[tuple[dict[int, list[Located]], RedisOps]]:
    """One site's records (partition -> records in offset order) and their operations, in
    pieces of consecutive offsets (``by_cost``): every piece covers one range of each
    partition it holds. Each piece is planned as it is taken, with the pages in
    ``overflow`` at that moment (the caller adds the quota's refusals to it)."""
    def ops_of(records: Sequence[Located]) -> RedisOps:
        events = [r.event for r in records if (r.partition, r.offset) in counted]
        return to_ops(site, aggregate(events, overflow), retention, max_pages)

    flat = [r for group in groups.values() for r in group]
    for chunk, ops in by_cost(flat, ops_of, max_cost):
        piece: dict[int, list[Located]] = defaultdict(list)
        for r in chunk:
            piece[r.partition].append(r)
        yield piece, ops


def by_cost(items: Sequence[T], ops_of: Callable[[Sequence[T]], RedisOps],
            max_cost: int = MAX_SCRIPT_COST) -> Iterator[tuple[Sequence[T], RedisOps]]:
    """``items`` with their operations, in as few consecutive slices as keep each slice's
    ``script_cost`` near ``max_cost`` at most. Most batches are one slice; a site with many
    pages is split by the cost its whole batch measured (smaller slices merge less, so a
    slice may go somewhat over)."""
    ops = ops_of(items)
    parts = -(-script_cost(ops) // max_cost)
    if parts <= 1:
        yield items, ops
        return
    size = -(-len(items) // parts)
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        yield chunk, ops_of(chunk)


def group_by_site(records: list[Located]) -> dict[str, dict[int, list[Located]]]:
    """site (a hot site's unit) -> partition -> its records in offset order."""
    groups: dict[str, dict[int, list[Located]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        groups[unit_of_event(r.event)][r.partition].append(r)
    return groups


def unit_of_event(event: PageView) -> str:
    """Where an event is counted: its site, or the unit of its page when the gateway
    stamped the site as hot (``contracts.keys.unit_of``)."""
    if event.shards == 1:
        return event.site_id
    return unit_of(event.site_id, event.page_id, event.shards)
