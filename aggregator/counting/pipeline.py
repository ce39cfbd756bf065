"""The checkpoint: how one batch of Kafka records becomes exact counts.

Effectively-once, step by step (a crash between any two steps is safe):

1. Decode every record and build its MongoDB document; a record that fails either way is
   poison: it goes to the dead-letter topic with the reason (and counts as done), so one
   bad record can never stop its partition or crash every group member in turn.
2. Read the last offset applied to Redis for each (site, partition) in the batch, and drop
   records at or below it: they were counted before a crash or a rebalance.
3. Write the rest to MongoDB (``_id`` = event id). Duplicates whose stored (partition,
   offset) is their own are our earlier write: they count. Others are client retries: they
   don't, but their offsets still advance the marker.
4. For each (site, partition), one atomic Redis script adds the counts and stores the last
   offset it covers. If the stored offset shows that part was already applied (another
   aggregator after a rebalance), re-filter and apply only the rest.
5. Commit the Kafka offsets. Nothing is committed before both stores hold the batch.

Store outages (connection errors) pause the batch: back off, keep the group membership,
retry the same step, never commit; the state change is logged once (``health``). Anything
else raises and crashes the process, for the supervisor to restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from aiokafka.errors import KafkaError
from pymongo.errors import ConnectionFailure
from redis.exceptions import BusyLoadingError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aggregator.counting.aggregate import RedisOps, aggregate, to_ops
from aggregator.counting.dead_letters import DeadLetters, Poison
from aggregator.counting.mongo_sink import Located
from aggregator.counting.redis_sink import GenerationMoved
from aggregator.counting.source import Record, RecordSource
from aggregator.health import StoreHealth
from aggregator.metrics import AggregatorMetrics
from contracts.event import UndecodableRecord, decode_event
from contracts.failpoints import AFTER_MONGO, AFTER_REDIS, CRASH_EXIT_STATUS, Failpoint
from contracts.keys import SiteKeys
from contracts.mongo import event_document
from contracts.settings import Retention

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT: dict[str, tuple[type[BaseException], ...]] = {
    "mongo": (ConnectionFailure,),
    "redis": (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError),
    "kafka": (KafkaError,),
}


class EventStore(Protocol):
    """Raw events, written once (``mongo_sink.MongoSink``)."""

    async def write(self, batch: Sequence[Located]) -> list[Located]: ...


class AggregateStore(Protocol):
    """The aggregates and their applied offsets (``redis_sink.RedisSink``)."""

    async def current(self, site_ids: Iterable[str]) -> dict[str, SiteKeys]: ...

    async def applied_offsets(self, sites: Iterable[SiteKeys]) -> dict[tuple[str, int], int]: ...

    async def apply(self, ops: RedisOps, partition: int, first: int, last: int,
                    live: bool = True) -> int | None: ...

    async def remember_sites(self, site_ids: Iterable[str]) -> None: ...


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

    def maybe_crash(self, failpoint: Failpoint, batch_number: int) -> None:
        if failpoint.name == self.point and batch_number >= self.at_batch:
            logging.getLogger(__name__).error("crash_hook_fired", extra={"fields": {
                "point": failpoint.name, "batch": batch_number}})
            logging.shutdown()
            self.exit(CRASH_EXIT_STATUS)


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
    crash: CrashHook = field(default_factory=CrashHook)
    health: StoreHealth = field(default_factory=StoreHealth)
    batches: int = 0
    known_sites: set[str] = field(default_factory=set)  # already in ``sites_key()``

    async def run(self, max_records: int, max_wait_ms: int) -> None:
        """Poll and process until ``stopping`` is set; the batch in hand is always finished."""
        while not self.stopping.is_set():
            records = await self.source.poll(max_records, max_wait_ms)
            if records:
                try:
                    await self.process(records)
                except Stopping:
                    return

    async def process(self, records: list[Record]) -> None:
        started = time.perf_counter()
        self.batches += 1
        located, poison = decode_all(records)
        if poison:
            await self._retry("kafka", lambda: self.dead_letters.send(poison))
            self.metrics.dead_lettered.inc(len(poison))
            log.warning("dead_lettered", extra={"fields": {
                "records": len(poison), "first_reason": poison[0].reason}})

        site_ids = {r.event.site_id for r in located}
        sites = await self._retry("redis", lambda: self.redis.current(site_ids))
        applied = await self._retry("redis", lambda: self.redis.applied_offsets(sites.values()))
        fresh = [r for r in located
                 if r.offset > applied.get((r.event.site_id, r.partition), -1)]
        self.metrics.skipped.labels("already_applied").inc(len(located) - len(fresh))

        counting = await self._retry("mongo", lambda: self.mongo.write(fresh))
        self.metrics.skipped.labels("client_retry").inc(len(fresh) - len(counting))
        self.crash.maybe_crash(AFTER_MONGO, self.batches)

        new_sites = site_ids - self.known_sites
        if new_sites:
            await self._retry("redis", lambda: self.redis.remember_sites(new_sites))
            self.known_sites |= new_sites
        counted = {(r.partition, r.offset) for r in counting}
        for (site_id, partition), group in group_by_site_partition(fresh).items():
            await self._apply(sites, site_id, partition, group, counted)
        self.crash.maybe_crash(AFTER_REDIS, self.batches)

        next_offsets: dict[int, int] = {}
        for r in records:
            next_offsets[r.partition] = max(next_offsets.get(r.partition, 0), r.offset + 1)
        await self._retry("kafka", lambda: self.source.commit(next_offsets))
        self.metrics.batch_size.observe(len(records))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _apply(self, sites: dict[str, SiteKeys], site_id: str, partition: int,
                     group: list[Located], counted: set[tuple[int, int]]) -> None:
        """Apply one site's records of one partition to its current generation; when a
        rebuild switched generations meanwhile, re-read the pointer and apply what the new
        generation does not hold yet (its stored offset says)."""
        while group:
            events = [r.event for r in group if (r.partition, r.offset) in counted]
            ops = to_ops(sites[site_id], aggregate(events), self.retention)
            first, last = group[0].offset, group[-1].offset
            try:
                stored = await self._retry(
                    "redis", lambda: self.redis.apply(ops, partition, first, last))  # noqa: B023
            except GenerationMoved:
                sites.update(await self._retry("redis", lambda: self.redis.current([site_id])))
                log.info("generation_switched", extra={"fields": {
                    "site": site_id, "generation": sites[site_id].generation}})
                continue
            if stored is None:
                self.metrics.applied.inc(len(events))
                return
            skipped = [r for r in group if r.offset <= stored]
            self.metrics.skipped.labels("already_applied").inc(len(skipped))
            group = [r for r in group if r.offset > stored]

    async def _retry(self, store: str, step: Callable[[], Awaitable[T]]) -> T:
        delay = 0.05
        while True:
            try:
                result = await step()
            except TRANSIENT[store] as exc:
                self.health.report(store, "pipeline", exc)
                if self.stopping.is_set():
                    raise Stopping from exc
                await self.source.keepalive()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            self.health.report(store, "pipeline", None)
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
        except (ValueError, OverflowError) as exc:  # a value no date can hold: the record's
            # fault (decode_event bounds times already; this is the last line). Any other
            # error is a bug of ours and must stop the aggregator, not dead-letter events.
            poison.append(Poison(record, f"cannot be stored: {type(exc).__name__}: {exc}"))
            continue
        located.append(Located(event, record.partition, record.offset, document))
    return located, poison


def group_by_site_partition(records: list[Located]) -> dict[tuple[str, int], list[Located]]:
    groups: dict[tuple[str, int], list[Located]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        groups[(r.event.site_id, r.partition)].append(r)
    return groups
